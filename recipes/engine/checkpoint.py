"""Per-epoch checkpoints a run can resume from, written atomically.

After every epoch the run directory gets ``checkpoints/epoch-NNN.keras`` (the whole model with its
optimizer state, so the schedule resumes at the right step), then ``state.json`` (epochs done, history
rows, best validation accuracy, seconds trained), ``history.csv`` and the plots. Each file is replaced
atomically; the two newest checkpoints are kept so that a damaged newest one falls back to the previous.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from pathlib import Path

import keras

from callbacks.optimizer_utils import optimizer_steps
from recipes.engine.atomic import atomic_path, write_json, write_text
from recipes.engine.plots import plot_history
from recipes.engine.run_dir import RunError

__all__ = ["RunCheckpoint", "RunError", "load_checkpoint", "load_state", "save_inference_model", "save_model"]

KEEP_CHECKPOINTS = 2


def history_csv(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def save_model(model: keras.Model, path: str | Path) -> None:
    """``model.save`` opens its target in place; save to a temp file and rename it instead."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def inference_model(model: keras.Model) -> keras.Model:
    """The same layers and weights without the training state (optimizer, schedule, loss), so that the
    saved file loads with ``keras.saving.load_model`` and nothing of ours beyond the layers it uses.
    A model that is not functional (subclassed) is returned as it is."""
    try:
        return keras.Model(model.input, model.output, name=model.name)
    except (AttributeError, ValueError, TypeError):
        return model


def save_inference_model(model: keras.Model, path: str | Path) -> None:
    """A run's deliverable ``model.keras``: :func:`inference_model`, saved atomically. The checkpoints
    keep the optimizer state for resuming."""
    save_model(inference_model(model), path)


class RunCheckpoint(keras.callbacks.Callback):
    """Write checkpoint, state, history and plots at every epoch end (put it after the loggers)."""

    def __init__(
        self,
        out_dir: Path,
        rows: list[dict],
        best_val_accuracy: float | None,
        train_seconds: float,
        plots: bool = True,
    ):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.rows = rows
        self.best_val_accuracy = best_val_accuracy
        self.train_seconds = train_seconds
        self.plots = plots
        self.session_seconds = 0.0
        self.session_steps = 0  # steps this session trained (a budget's last epoch may end partway)
        self._epoch_start = 0.0
        self._first_step = 0

    def on_train_begin(self, logs=None):
        self._first_step = optimizer_steps(self.model.optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self._epoch_start
        logs["epoch_seconds"] = seconds
        self.train_seconds += seconds
        self.session_seconds += seconds
        self.session_steps = optimizer_steps(self.model.optimizer) - self._first_step
        row = {"epoch": epoch + 1}
        row.update({k: float(v) for k, v in logs.items()})
        self.rows.append(row)
        val = row.get("val_accuracy")
        if val is not None and math.isfinite(val):
            self.best_val_accuracy = max(val, self.best_val_accuracy or 0.0)
        if getattr(self.model, "stop_training", False) and _diverged(row):
            return  # never checkpoint weights a NaN guard is about to replace
        ckpt_dir = self.out_dir / "checkpoints"
        name = f"epoch-{epoch + 1:03d}.keras"
        save_model(self.model, ckpt_dir / name)
        write_json(
            self.out_dir / "state.json",
            {
                "epochs_completed": epoch + 1,
                "checkpoint": name,
                "history": self.rows,
                "best_val_accuracy": self.best_val_accuracy,
                "train_seconds": self.train_seconds,
            },
        )
        ours = sorted(
            (e, c) for c in ckpt_dir.glob("epoch-*.keras") if (e := checkpoint_epoch(c)) is not None
        )
        for _, old in ours[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        write_text(self.out_dir / "history.csv", history_csv(self.rows))
        if self.plots:
            plot_history(self.rows, self.out_dir)


def _diverged(row: dict) -> bool:
    return not math.isfinite(row.get("loss", 0.0))


def load_state(out_dir: Path) -> dict | None:
    """The saved state of an interrupted run, or None for a fresh directory; a state that is not one
    :class:`RunCheckpoint` wrote (damaged, or edited by hand) is refused with one line."""
    path = out_dir / "state.json"
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{path} is damaged ({e}); {_START_AFRESH}") from None
    problem = _state_problem(state)
    if problem:
        raise RunError(f"{path} is not a run state this version wrote ({problem}); {_START_AFRESH}")
    return state


_START_AFRESH = "delete the run directory or choose another trainer.out_dir to start afresh"
_STATE_FIELDS = {
    "epochs_completed": int,
    "checkpoint": str,
    "history": list,
    "train_seconds": (int, float),
    "best_val_accuracy": (int, float, type(None)),
}


def _state_problem(state) -> str | None:
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, not an object"
    for key, kind in _STATE_FIELDS.items():
        if key not in state:
            return f"no '{key}'"
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"'{key}' is {value!r}"
    if state["epochs_completed"] < 0 or len(state["history"]) < state["epochs_completed"]:
        return f"{state['epochs_completed']} epochs completed but {len(state['history'])} history rows"
    if not all(isinstance(row, dict) for row in state["history"]):
        return "history rows that are not objects"
    return None


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch in a checkpoint's name (``epoch-007.keras`` -> 7), or None for any other name."""
    prefix, _, number = path.stem.partition("-")
    return int(number) if prefix == "epoch" and number.isdigit() else None


def numbered_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the checkpoints in ``ckpt_dir``, oldest first; other files are ignored."""
    found = ((checkpoint_epoch(path), path) for path in ckpt_dir.glob("epoch-*.keras"))
    return sorted((epoch, path) for epoch, path in found if epoch is not None)


def load_checkpoint(out_dir: Path, state: dict) -> tuple[keras.Model, dict]:
    """The newest checkpoint that loads; the state is trimmed to its epoch when falling back, and names
    the checkpoint it was loaded from."""
    ckpt_dir = out_dir / "checkpoints"
    numbered = [(checkpoint_epoch(c), c) for c in ckpt_dir.glob("epoch-*.keras")]
    candidates = sorted(
        ((e, c) for e, c in numbered if e is not None and e <= state["epochs_completed"]), reverse=True
    )
    failures = []
    for epoch, path in candidates:
        try:
            model = keras.saving.load_model(path, compile=True)
        except Exception as e:  # a truncated zip raises several kinds of errors, some misleading
            failures.append(f"{path.name}: {type(e).__name__}")
            warnings.warn(
                f"checkpoint {path} is damaged ({type(e).__name__}: {str(e)[:100]}); trying the previous one",
                stacklevel=2,
            )
            continue
        if epoch < state["epochs_completed"]:
            state = dict(state, epochs_completed=epoch, history=state["history"][:epoch])
            vals = [r["val_accuracy"] for r in state["history"] if "val_accuracy" in r]
            state["best_val_accuracy"] = max(vals) if vals else None
        return model, dict(state, checkpoint=path.name)
    raise RunError(
        f"no usable checkpoint in {ckpt_dir} ({'; '.join(failures) or 'none found'}); {_START_AFRESH}"
    )

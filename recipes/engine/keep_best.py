"""Keep a run's K best epochs by validation accuracy as inference models: ensemble members at no cost.

With ``trainer.keep_checkpoints=K`` a run writes ``best/epoch-NNN.keras`` (the model without its optimizer,
like ``model.keras``) for each epoch that is among the K best so far, and ``metrics.json`` lists the kept
ones under ``kept_checkpoints``; ``python cli.py ensemble DIR checkpoints=K`` averages them.

Why files are deleted one epoch late: an epoch's file is written before ``state.json`` records the epoch
(:class:`KeepBest` comes before :class:`~recipes.engine.checkpoint.RunCheckpoint`), and the files it pushes
out of the K best are deleted only at the next epoch's start or at the end, once the state covers it. A
kill at any moment therefore leaves at least the K best of the epochs the state records; on resume
:func:`settle` deletes the files of epochs the state does not record (they train again) and the surplus.
An epoch the NaN guard stopped, or whose loss or validation accuracy is not finite, never enters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import keras

from recipes.engine.atomic import sweep_temporaries
from recipes.engine.checkpoint import numbered_checkpoints, save_inference_model

KEPT_DIR = "best"


def kept_path(out_dir: Path, epoch: int) -> Path:
    """Where epoch ``epoch`` (1-based) is kept: ``out_dir/best/epoch-NNN.keras``."""
    return Path(out_dir) / KEPT_DIR / f"epoch-{epoch:03d}.keras"


def epoch_scores(rows: Iterable[dict]) -> dict[int, float]:
    """``{epoch: val_accuracy}`` of the history rows whose loss and validation accuracy are finite."""
    scores = {}
    for row in rows:
        val, loss = row.get("val_accuracy"), row.get("loss", 0.0)
        if val is not None and math.isfinite(val) and math.isfinite(loss):
            scores[int(row["epoch"])] = float(val)
    return scores


def best_epochs(scores: dict[int, float], k: int) -> list[int]:
    """The ``k`` epochs of highest score, best first; of two equal scores the earlier epoch."""
    return sorted(scores, key=lambda epoch: (-scores[epoch], epoch))[:k]


def settle(out_dir: Path, k: int, scores: dict[int, float]) -> list[dict]:
    """Prune ``best/`` to the ``k`` best of the scored epochs whose file is there (any other file goes);
    returns the kept ones, best first, as ``metrics.json`` records them."""
    folder = Path(out_dir) / KEPT_DIR
    if not folder.is_dir():
        return []
    sweep_temporaries(folder)
    on_disk = dict(numbered_checkpoints(folder))
    keep = best_epochs({e: s for e, s in scores.items() if e in on_disk}, k)
    for epoch, path in on_disk.items():
        if epoch not in keep:
            path.unlink(missing_ok=True)
    return [{"epoch": e, "val_accuracy": scores[e], "path": f"{KEPT_DIR}/{on_disk[e].name}"} for e in keep]


class KeepBest(keras.callbacks.Callback):
    """Keep the ``k`` best epochs by ``val_accuracy`` as inference models in ``out_dir/best/``.

    Put it after the NaN guard and before the run's checkpoint (see the module's docstring for why).

    Args:
        out_dir: the run directory.
        k: how many epochs to keep.
        history: the rows of the epochs already trained (a resumed run's), which rank its kept files.
        guard: the run's NaN guard, if any: an epoch it stopped never enters.

    Attributes:
        kept: ``[{"epoch", "val_accuracy", "path"}]`` of the kept epochs, best first, as of the last
            pruning (the start of each epoch and the end of training).
    """

    def __init__(self, out_dir: str | Path, k: int, history: Iterable[dict] = (), guard=None):
        super().__init__()
        if k < 1:
            raise ValueError(f"`k` must be >= 1. Received: k={k}")
        self.out_dir = Path(out_dir)
        self.k = k
        self.guard = guard
        self.scores = epoch_scores(history)
        self.kept: list[dict] = []

    def _settle(self) -> None:
        self.kept = settle(self.out_dir, self.k, self.scores)
        self.scores = {entry["epoch"]: entry["val_accuracy"] for entry in self.kept}

    def on_train_begin(self, logs=None):
        self._settle()  # a resumed run: drops the epochs its state does not record

    def on_epoch_begin(self, epoch, logs=None):
        self._settle()  # the state now records the previous epoch: its surplus can go

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.guard is not None and self.guard.stopped:
            return
        score = epoch_scores([{**logs, "epoch": epoch + 1}]).get(epoch + 1)
        if score is None or epoch + 1 not in best_epochs({**self.scores, epoch + 1: score}, self.k):
            return
        save_inference_model(self.model, kept_path(self.out_dir, epoch + 1))
        self.scores[epoch + 1] = score

    def on_train_end(self, logs=None):
        self._settle()


def keep_best_callbacks(cfg, out_dir: Path, history: list[dict], guard=None) -> list[KeepBest]:
    """``[KeepBest]`` when ``trainer.keep_checkpoints`` is on, else ``[]`` (for the run's callbacks)."""
    k = getattr(cfg.trainer, "keep_checkpoints", 0)
    return [KeepBest(out_dir, k, history, guard)] if k else []


def kept_report(cfg, out_dir: Path, rows: list[dict]) -> dict:
    """``{"kept_checkpoints": [...]}`` for ``metrics.json`` when ``trainer.keep_checkpoints`` is on (also
    prunes: a resumed run whose epochs were all done trains nothing, so no callback pruned)."""
    k = getattr(cfg.trainer, "keep_checkpoints", 0)
    return {"kept_checkpoints": settle(out_dir, k, epoch_scores(rows))} if k else {}

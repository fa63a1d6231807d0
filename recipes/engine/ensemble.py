"""Ensembles of trained models: average their softmax outputs on the test set (the lecture notes' last
stage: "train several independent models and average their predictions at test time").

:func:`ensemble_predict` is the arithmetic, for any Keras models; :func:`run_ensemble` is
``python cli.py ensemble DIR DIR ...``: it loads the ``model.keras`` of finished run directories (with
``checkpoints=K``, each run's K best kept epochs: :mod:`recipes.engine.keep_best`; with ``top=K``, a search
directory's K best trials: :mod:`tuners.search_dir`), refuses members trained on different data, classes
or image sizes (one line naming the member), evaluates each member and the ensemble on the test set of the
members' data, and writes ``ensemble.json``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import yaml

from recipes.config import MAX_EPOCHS, DataConfig, apply_overrides, from_dict, spec
from recipes.data import load_data
from recipes.engine.atomic import write_json
from recipes.engine.evaluate import predict_tta
from recipes.engine.run_dir import RunError, open_run_dir

# What must agree between members for their predictions to be averaged: the test set they were tested on
# (members may train on different subsets: data.train_limit, data.val_size and augmentation may differ).
SAME_DATA_KEYS = ("name", "path", "image_size")
MAX_MEMBERS = 100_000  # top=K: as many trials as a search may run


def ensemble_predict(
    models: Sequence[keras.Model],
    x: np.ndarray,
    *,
    batch_size: int = 256,
    tta: bool = False,
    translate: int = 0,
) -> np.ndarray:
    """The mean over ``models`` of each one's class probabilities on ``x`` (logits are soft-maxed; with
    ``tta``, each model's probabilities are first averaged over the flip and shift views)."""
    if not models:
        raise ValueError("ensemble_predict needs at least one model")
    return np.mean([predict_tta(m, x, batch_size, tta, translate) for m in models], axis=0)


@dataclass
class Member:
    """A finished run directory taking part in an ensemble."""

    out_dir: Path
    recipe: str
    data: dict  # the run's data config section
    data_source: str
    model: keras.Model
    seed: int = 0

    @property
    def signature(self) -> tuple:
        """What must be equal across members: the test set, the classes, the image shape. A folder
        without train/ and test/ is split by the seed, so there the seed must agree too."""
        data = tuple(self.data.get(k) for k in SAME_DATA_KEYS)
        if self.data_source.startswith("folder:"):
            data += (self.seed,)
        return data, self.data_source, tuple(self.model.input_shape[1:]), int(self.model.output_shape[-1])


def read_run(out_dir: Path) -> tuple[dict, dict, dict]:
    """A finished run directory's ``metrics.json``, ``config.yaml`` and ``run_info.json``; one line when it
    is not one."""
    try:
        metrics = json.loads((out_dir / "metrics.json").read_text())
        config = yaml.safe_load((out_dir / "config.yaml").read_text())
        info = json.loads((out_dir / "run_info.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        raise RunError(
            f"ensemble member {out_dir} is not a finished run directory (metrics.json, config.yaml and "
            "run_info.json are needed); give the folders that python cli.py run wrote"
        ) from None
    if metrics.get("status") != "completed":
        raise RunError(f"ensemble member {out_dir} did not complete (status {metrics.get('status')!r})")
    return metrics, config, info


def load_inference_model(path: Path, what: str) -> keras.Model:
    """``keras.saving.load_model`` with our objects registered; one line naming ``what`` when it fails."""
    import recipes  # noqa: F401  (registers our layers, for the models that use them)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # a damaged zip raises several kinds of error
        raise RunError(f"ensemble member {what}: {path.name} does not load ({type(e).__name__})") from None


def _run_member(path: Path, config: dict, info: dict, model: keras.Model) -> Member:
    seed = (config.get("trainer") or {}).get("seed", 0)  # a folder without train/ and test/ is split by it
    return Member(
        path, info.get("recipe", "?"), config.get("data", {}), info.get("data_source", "?"), model, seed
    )


def load_member(out_dir: str | Path) -> Member:
    """A finished run directory's ``model.keras`` and what it was trained on; one line when it is not one."""
    out_dir = Path(out_dir)
    _, config, info = read_run(out_dir)
    return _run_member(out_dir, config, info, load_inference_model(out_dir / "model.keras", str(out_dir)))


def kept_members(out_dir: str | Path, k: int) -> list[Member]:
    """The ``k`` best epochs a run kept (``trainer.keep_checkpoints``), best first; one line when the run
    kept none or fewer than ``k``."""
    out_dir = Path(out_dir)
    metrics, config, info = read_run(out_dir)
    kept = sorted(metrics.get("kept_checkpoints") or [], key=lambda e: (-e["val_accuracy"], e["epoch"]))
    if not kept:
        raise RunError(
            f"run {out_dir} kept no checkpoints: train it again with trainer.keep_checkpoints={k} (in a new "
            f"trainer.out_dir) to keep its {k} best epochs, or leave out checkpoints={k}"
        )
    if k > len(kept):
        raise RunError(
            f"run {out_dir} keeps {len(kept)} checkpoint{'s' * (len(kept) != 1)}, fewer than "
            f"checkpoints={k}; use checkpoints={len(kept)} or fewer"
        )
    paths = [out_dir / entry["path"] for entry in kept[:k]]
    return [_run_member(p, config, info, load_inference_model(p, str(out_dir))) for p in paths]


def collect_members(dirs: Sequence[str | Path], checkpoints: int = 0, top: int = 0) -> list[Member]:
    """The members the directories give: a search directory its ``top`` best trials, a run directory its
    ``checkpoints`` best kept epochs (or else its ``model.keras``)."""
    from tuners.search_dir import is_search_dir, trial_members  # lazily: tuners builds on recipes

    dirs = [Path(d) for d in dirs]
    searches = [is_search_dir(d) for d in dirs]
    if top and dirs and not any(searches):
        raise RunError(
            f"top={top} takes a search directory (the trainer.out_dir of python cli.py tune); {dirs[0]} is "
            "not one: it has no search.json"
        )
    if checkpoints and dirs and all(searches):
        raise RunError(f"checkpoints={checkpoints} takes run directories; for a search directory use top=K")
    members = []
    for d, search in zip(dirs, searches):
        if search and not top:
            raise RunError(f"{d} is a search directory: add top=K to average its K best trials")
        if search:
            members += trial_members(d, top)
        else:
            members += kept_members(d, checkpoints) if checkpoints else [load_member(d)]
    return members


def check_members(members: Sequence[Member]) -> None:
    """Refuse members that differ from the first in data, classes or image size, naming the member."""
    if len(members) < 2:
        raise RunError(
            f"an ensemble needs two or more members, got {len(members)}: give two or more run directories, "
            "or checkpoints=K / top=K with K of 2 or more"
        )
    first = members[0]
    for member in members[1:]:
        what = _difference(member, first)
        if what:
            raise RunError(
                f"ensemble member {member.out_dir} differs from {first.out_dir}: {what}; "
                "average only runs trained and tested on the same data"
            )


def _difference(member: Member, first: Member) -> str | None:
    data, source, shape, classes = member.signature
    data0, source0, shape0, classes0 = first.signature
    if classes != classes0:
        return f"{classes} classes against {classes0}"
    if shape != shape0:
        return f"images of shape {shape} against {shape0}"
    if source != source0 or data != data0:
        return f"data {source} against {source0} (or other data.* settings)"
    return None


def default_ensemble_dir() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"ensemble-{stamp}"


@dataclass
class EnsembleTrainer:
    out_dir: str | None = spec(None, "where ensemble.json goes (default runs/ensemble-<timestamp>)")
    tta: bool = spec(False, "average each member over flips (and shifts) before the ensemble average")
    tta_translate: int = spec(0, "with tta: also views shifted by this many pixels", min=0, max=8)


@dataclass
class EnsembleConfig:
    """The keys ``python cli.py ensemble`` takes besides the run directories."""

    trainer: EnsembleTrainer = field(default_factory=EnsembleTrainer)
    checkpoints: int = spec(
        0,
        "average each run's K best kept epochs (trained with trainer.keep_checkpoints) instead of its "
        "model.keras (0 = off)",
        min=0,
        max=MAX_EPOCHS,
    )
    top: int = spec(
        0, "average the K best trials of a search directory (python cli.py tune)", min=0, max=MAX_MEMBERS
    )


@dataclass
class EnsembleResult:
    out_dir: Path
    report: dict


def run_ensemble(run_dirs: Sequence[str | Path], overrides: Sequence[str] = ()) -> EnsembleResult:
    """Evaluate each member and their average on the members' test set; write ``ensemble.json``."""
    options = apply_overrides(EnsembleConfig(), overrides)
    cfg = options.trainer
    members = collect_members(run_dirs, options.checkpoints, options.top)
    check_members(members)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_ensemble_dir()
    with open_run_dir(out_dir, markers=("ensemble.json",)):
        data = load_data(from_dict(DataConfig, members[0].data), seed=members[0].seed)  # a folder's split
        x, y = data.x_test.astype(np.float32), data.y_test
        probs = [predict_tta(m.model, x, 256, cfg.tta, cfg.tta_translate) for m in members]
        mean = np.mean(probs, axis=0)
        report = {
            "members": [
                {"run_dir": str(m.out_dir), "recipe": m.recipe, "test_accuracy": _accuracy(p, y)}
                for m, p in zip(members, probs)
            ],
            "ensemble_test_accuracy": _accuracy(mean, y),
            "ensemble_test_loss": float(-np.mean(np.log(np.clip(mean[np.arange(len(y)), y], 1e-12, 1.0)))),
            "test_examples": len(y),
            "tta": cfg.tta,
            "tta_translate": cfg.tta_translate if cfg.tta else 0,
            "checkpoints": options.checkpoints,
            "top": options.top,
            "data_source": data.source,
        }
        write_json(out_dir / "ensemble.json", report)
    return EnsembleResult(out_dir, report)


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(-1) == labels))


def format_table(report: dict) -> str:
    """Each member's test accuracy and the ensemble's, as ``cli.py ensemble`` prints them."""
    width = max(len(m["run_dir"]) for m in report["members"])
    lines = [f"{'member':{width}s}  test accuracy"]
    lines += [f"{m['run_dir']:{width}s}  {m['test_accuracy']:.4f}" for m in report["members"]]
    lines.append(f"{'ensemble':{width}s}  {report['ensemble_test_accuracy']:.4f}")
    return "\n".join(lines)

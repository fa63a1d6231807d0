"""A search directory as ``python cli.py tune`` leaves it, read back for an ensemble of its best trials.

Layout (the search's ``trainer.out_dir``):

- ``search.json``: what was searched (recipe, fixed overrides, tuner, objective and its direction, the data
  section, data source and seed, classes and image shape), written before the first trial;
- ``trials.csv``: one row per trial (``trial_id``, ``stage``, ``status``, the hyperparameters, the
  objective, ...), written when the search ends;
- ``tuner/<project>/trial_<id>/``: keras-tuner's ``trial.json`` (the trial's hyperparameters) and
  ``checkpoint.weights.h5``, the weights of the trial's best epoch by the objective, which keras-tuner's
  ``Tuner.run_trial`` saves through its ``SaveBestEpoch`` callback. The project is the tuner's name, or
  ``coarse_to_fine_stage1`` / ``coarse_to_fine_stage2``.

A trial's model is rebuilt from its hyperparameters by :class:`tuners.hypermodel.RecipeHyperModel` (so the
normalisation layer exists, unfitted) and then given the saved weights, normalisation statistics included.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import keras_tuner as kt
import pandas as pd
from keras_tuner.src.engine.objective import create_objective

from recipes.config import to_dict
from recipes.engine.atomic import write_json
from recipes.engine.checkpoint import inference_model
from recipes.engine.ensemble import Member
from recipes.engine.run_dir import RunError
from tuners.hypermodel import RecipeHyperModel

SEARCH_RECORD = "search.json"
TRIALS_TABLE = "trials.csv"
TRIAL_WEIGHTS = "checkpoint.weights.h5"  # keras-tuner's name under Keras 3 (Tuner._get_checkpoint_fname)


def record_search(out_dir: Path, recipe: str, overrides: list[str], options, cfg, data) -> None:
    """Write ``search.json``: what a later ``ensemble DIR top=K`` needs to rebuild and check the trials."""
    write_json(
        Path(out_dir) / SEARCH_RECORD,
        {
            "recipe": recipe,
            "overrides": list(overrides),
            "tuner": options.tuner,
            "objective": options.objective,
            "direction": create_objective(options.objective).direction,
            "data": to_dict(cfg.data),
            "data_source": data.source,
            "seed": cfg.trainer.seed,
            "num_classes": data.num_classes,
            "input_shape": list(data.x_train.shape[1:]),
        },
    )


def is_search_dir(path: str | Path) -> bool:
    """Whether ``path`` is (or looks like) the output folder of ``python cli.py tune``."""
    path = Path(path)
    return (path / SEARCH_RECORD).is_file() or (path / "tuner").is_dir()


def read_record(search_dir: Path) -> dict:
    """``search.json``; one line when it is missing (an older search) or damaged."""
    try:
        record = json.loads((search_dir / SEARCH_RECORD).read_text())
        if not isinstance(record, dict) or not {"recipe", "objective", "tuner", "data"} <= record.keys():
            raise ValueError("not a search record")
    except (OSError, ValueError):
        raise RunError(
            f"search {search_dir} has no readable {SEARCH_RECORD} (an older version of tune did not write "
            "one, or it is damaged); run the search again in a new trainer.out_dir to average its trials"
        ) from None
    return record


def best_trials(search_dir: Path, record: dict, k: int) -> pd.DataFrame:
    """The ``k`` completed trials of best objective, in the objective's direction, best first."""
    try:
        frame = pd.read_csv(search_dir / TRIALS_TABLE, dtype={"trial_id": str})
    except (OSError, ValueError):
        raise RunError(
            f"search {search_dir} has no readable {TRIALS_TABLE}: it has not finished; run the same tune "
            "command again to finish it"
        ) from None
    objective = record["objective"]
    if not {"trial_id", "status", objective} <= set(frame.columns):
        raise RunError(f"{search_dir / TRIALS_TABLE} has no trial_id, status or {objective} column")
    done = frame[(frame["status"] == "COMPLETED") & frame[objective].notna()]
    if k > len(done):
        raise RunError(
            f"search {search_dir} has {len(done)} completed trial{'s' * (len(done) != 1)}, fewer than "
            f"top={k}; use top={len(done)} or fewer"
        )
    ascending = record.get("direction", "max") == "min"
    return done.sort_values(objective, ascending=ascending, kind="stable").head(k)


def trial_dir(search_dir: Path, record: dict, row: pd.Series) -> Path:
    """keras-tuner's folder of the trial in ``row`` of ``trials.csv``."""
    project = record["tuner"]
    if project == "coarse_to_fine":
        project = f"coarse_to_fine_stage{int(row['stage'])}"
    return search_dir / "tuner" / project / f"trial_{row['trial_id']}"


def load_trial_model(folder: Path, hypermodel: RecipeHyperModel) -> keras.Model:
    """A trial's model rebuilt from its hyperparameters, with the weights of its best epoch."""
    weights = folder / TRIAL_WEIGHTS
    if not weights.is_file():
        raise RunError(
            f"trial {folder} has no saved weights ({TRIAL_WEIGHTS}); run the search again in a new "
            "trainer.out_dir"
        )
    try:
        trial = kt.engine.trial.Trial.load(str(folder / "trial.json"))
    except (OSError, ValueError, KeyError, TypeError):
        raise RunError(f"trial {folder}: trial.json is missing or damaged") from None
    model = inference_model(hypermodel.build(trial.hyperparameters))
    try:
        model.load_weights(weights)
    except Exception as e:  # a damaged or mismatched HDF5 file raises several kinds of error
        raise RunError(f"trial {folder}: {TRIAL_WEIGHTS} does not load ({type(e).__name__})") from None
    return model


def trial_members(search_dir: str | Path, k: int) -> list[Member]:
    """The ``k`` best trials of a search as ensemble members, best first; one line for a folder that is no
    finished search, ``k`` above its completed trials, or a trial without saved weights."""
    search_dir = Path(search_dir)
    record = read_record(search_dir)
    rows = best_trials(search_dir, record, k)
    hypermodel = RecipeHyperModel(
        record["recipe"],
        record.get("overrides", []),
        num_classes=int(record["num_classes"]),
        input_shape=tuple(record["input_shape"]),
    )
    members = []
    for _, row in rows.iterrows():
        folder = trial_dir(search_dir, record, row)
        model = load_trial_model(folder, hypermodel)
        members.append(
            Member(
                folder, record["recipe"], record["data"], record["data_source"], model, record.get("seed", 0)
            )
        )
    return members

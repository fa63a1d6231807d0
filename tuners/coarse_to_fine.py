"""Coarse-to-fine random search: wide ranges and few epochs first, then narrowed ranges and more epochs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras_tuner as kt
import pandas as pd

from tuners.results import trials_frame
from tuners.resume import reconcile


def keras_tuner_seed(seed: int, offset: int = 1) -> int:
    """``seed + offset`` folded into 1..2**32-1, the seeds keras-tuner keeps: it replaces 0 with a random
    seed, and BayesianOptimization hands its seed to NumPy, which takes at most 2**32-1. Seeds of
    ``trainer.seed`` (0..2**32-1) map one to one except the last, which wraps."""
    return 1 + (seed + offset - 1) % (2**32 - 1)


@dataclass
class CoarseToFineResult:
    coarse: kt.Tuner
    fine: kt.Tuner
    frame: pd.DataFrame  # both stages, with a ``stage`` column (1 or 2)
    narrowed: kt.HyperParameters  # the stage-2 space


def narrow_space(space: list, best_values: list[dict], margin: float = 0.25) -> kt.HyperParameters:
    """Stage-2 hyperparameters: each numeric range shrinks to the span of the best trials' values, widened by
    ``margin`` of that span on each side (in log space where sampling is log) and clipped to the original
    range; a choice keeps only the values the best trials used."""
    hp = kt.HyperParameters()
    for param in space:
        values = [v[param.name] for v in best_values if param.name in v]
        if not values:
            continue
        if isinstance(param, kt.engine.hyperparameters.Choice):
            kept = [v for v in param.values if v in values]
            default = values[0]
            hp.Choice(param.name, kept, default=default)
        elif isinstance(param, (kt.engine.hyperparameters.Float, kt.engine.hyperparameters.Int)):
            log = getattr(param, "sampling", None) == "log"
            f = math.log if log else (lambda v: v)
            inv = math.exp if log else (lambda v: v)
            lo, hi = f(min(values)), f(max(values))
            span = (hi - lo) or (f(param.max_value) - f(param.min_value)) * 0.1
            new_lo = max(f(param.min_value), lo - margin * span)
            new_hi = min(f(param.max_value), hi + margin * span)
            # exp(log(v)) can overshoot a bound by an ulp: clip back into the original range
            low = max(param.min_value, inv(new_lo))
            high = min(param.max_value, inv(new_hi))
            if isinstance(param, kt.engine.hyperparameters.Int):
                low, high = math.floor(low), math.ceil(high)
                hp.Int(param.name, low, max(high, low + 1), sampling=param.sampling)
            else:
                hp.Float(param.name, low, high, sampling=param.sampling)
        elif isinstance(param, kt.engine.hyperparameters.Boolean):
            hp.Fixed(param.name, values[0])
    return hp


def coarse_to_fine(
    hypermodel,
    x,
    y,
    validation_data,
    *,
    directory: str,
    project_name: str = "coarse_to_fine",
    coarse_trials: int = 10,
    coarse_epochs: int = 2,
    fine_trials: int = 5,
    fine_epochs: int = 5,
    top_k: int = 3,
    objective: str = "val_accuracy",
    seed: int = 0,
    overwrite: bool = False,
    max_consecutive_failed_trials: int = 3,
    hyperparameters: kt.HyperParameters | None = None,
    made: list | None = None,
    distribution_strategy=None,
    **search_kwargs,
) -> CoarseToFineResult:
    """Stage 1: random search over the full space for ``coarse_epochs``. Stage 2: random search over the
    ranges narrowed around the ``top_k`` stage-1 trials (see :func:`narrow_space`) for ``fine_epochs``.

    Both stages live under ``directory`` (``<project_name>_stage1``, ``_stage2``); run again with the same
    directory, a finished stage is reloaded and only the remaining trials run. ``hyperparameters``
    pre-declares stage-1 ranges (user bounds); the rest of the space comes from the hypermodel. ``made``,
    a list, receives each stage's tuner as it is built (to report the trials of a search that stops).
    ``distribution_strategy`` goes to keras-tuner: each trial trains data parallel under it.
    """

    def tuner(stage: int, max_trials: int, **kwargs) -> kt.Tuner:
        made_now = kt.RandomSearch(
            hypermodel,
            objective=objective,
            max_trials=max_trials,
            seed=keras_tuner_seed(seed, stage),
            directory=directory,
            project_name=f"{project_name}_stage{stage}",
            overwrite=overwrite,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
            distribution_strategy=distribution_strategy,
            **kwargs,
        )
        reconcile(made_now.oracle)
        if made is not None:
            made.append(made_now)
        return made_now

    coarse = tuner(1, coarse_trials, hyperparameters=hyperparameters, tune_new_entries=True)
    coarse.search(x, y, validation_data=validation_data, epochs=coarse_epochs, **search_kwargs)
    best = coarse.oracle.get_best_trials(top_k)
    if not best:
        raise RuntimeError("coarse_to_fine: every stage-1 trial failed; see the trials' messages")
    narrowed = narrow_space(coarse.oracle.get_space().space, [t.hyperparameters.values for t in best])
    fine = tuner(2, fine_trials, hyperparameters=narrowed, tune_new_entries=True)
    fine.search(x, y, validation_data=validation_data, epochs=fine_epochs, **search_kwargs)
    frame = pd.concat([trials_frame(coarse, stage=1), trials_frame(fine, stage=2)], ignore_index=True)
    return CoarseToFineResult(coarse, fine, frame, narrowed)

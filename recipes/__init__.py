"""Ready-made CIFAR-10 recipes and the engine that trains any recipe the same way.

Public API::

    from recipes import run, register_recipe, get_recipe, list_recipes, load_model, ensemble_predict

``import recipes`` registers every layer, initializer, optimizer and schedule of ours with Keras, so a
run's ``model.keras`` (and a checkpoint) loads with ``keras.saving.load_model`` afterwards;
:func:`load_model` is that import plus the call.

Packages: :mod:`recipes.zoo` (the recipe definitions, one file each), :mod:`recipes.data` (sources,
splits, input pipeline), :mod:`recipes.engine` (build, fit, evaluate, checkpoint and resume, budget,
compute, progress) and :mod:`recipes.diagnostics` (the checks); :mod:`recipes.config` parses overrides
and :mod:`recipes.registry` names the recipes.
"""

from __future__ import annotations

import os

import callbacks  # noqa: F401  (registers our schedules: Warmup, Replannable)
import layers  # noqa: F401  (registers our layers)
from recipes.engine import optimizers as _optimizers  # noqa: F401  (registers LookaheadSGD)
from recipes.engine.ensemble import ensemble_predict
from recipes.engine.run import RunResult, run
from recipes.registry import Recipe, get_recipe, list_recipes, register_recipe

list_recipes()  # imports recipes.zoo: registers the recipes and their initializers (PartialIdentity)


def load_model(path: str | os.PathLike, **kwargs):
    """``keras.saving.load_model(path, **kwargs)`` with every object of ours registered: a run's
    ``model.keras``, or a checkpoint (which also holds the optimizer)."""
    import keras

    return keras.saving.load_model(path, **kwargs)


__all__ = [
    "Recipe",
    "RunResult",
    "ensemble_predict",
    "get_recipe",
    "list_recipes",
    "load_model",
    "register_recipe",
    "run",
]

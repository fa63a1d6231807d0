"""Recipes by name: a config dataclass, a model builder and a one-line description."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recipes.config import ConfigError, apply_overrides, nearest


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config_class: type
    build_model: Callable  # (cfg, data_stats) -> keras.Model, uncompiled
    search_space: Callable | None = None  # (keras_tuner.HyperParameters) -> {config key: value}
    # (cfg, epoch_scale) -> callbacks the recipe's training needs; epoch_scale stretches epoch counts
    # when a time budget plans a different number of epochs than trainer.epochs
    train_callbacks: Callable | None = None

    def config(self, overrides: list[str] | tuple[str, ...] = ()) -> object:
        """The recipe's default config with ``key=value`` overrides applied and validated."""
        cfg = apply_overrides(self.config_class(), overrides)
        check = getattr(cfg, "validate", None)
        if check:
            check()
        return cfg


_RECIPES: dict[str, Recipe] = {}


def register_recipe(
    name: str,
    description: str,
    config_class: type,
    search_space: Callable | None = None,
    train_callbacks: Callable | None = None,
) -> Callable:
    """Decorator for a recipe's ``build_model(cfg, stats)``; refuses a name that is already taken.

    ``search_space(hp)`` declares the recipe's keras-tuner hyperparameters, each named after the config
    key it sets, and returns ``{key: sampled value}``. ``train_callbacks(cfg, epoch_scale)`` returns
    callbacks the recipe's training needs (a layer frozen after some epochs, say).
    """

    def decorate(build_model: Callable) -> Callable:
        if name in _RECIPES:
            raise ValueError(f"a recipe named '{name}' is already registered")
        _RECIPES[name] = Recipe(name, description, config_class, build_model, search_space, train_callbacks)
        return build_model

    return decorate


def get_recipe(name: str) -> Recipe:
    _load_builtin()
    if name not in _RECIPES:
        raise ConfigError(
            f"unknown recipe '{name}'{nearest(name, _RECIPES)}; available: {', '.join(sorted(_RECIPES))}"
        )
    return _RECIPES[name]


def list_recipes() -> list[Recipe]:
    _load_builtin()
    return [_RECIPES[name] for name in sorted(_RECIPES)]


def _load_builtin() -> None:
    """Import every module of :mod:`recipes.zoo`: importing a recipe's file registers it."""
    import importlib
    import pkgutil

    from recipes import zoo

    for module in pkgutil.iter_modules(zoo.__path__):
        importlib.import_module(f"recipes.zoo.{module.name}")

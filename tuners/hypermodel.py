"""A ``keras_tuner.HyperModel`` for any recipe, searching over the recipe's own config keys."""

from __future__ import annotations

import time

import keras
import keras_tuner as kt
import numpy as np

from layers import adapt_whitening
from recipes import pipeline
from recipes.data import validate
from recipes.registry import get_recipe
from recipes.train import compile_model


class TrialTimer(keras.callbacks.Callback):
    """Adds ``trial_seconds`` (wall time since the trial's training began) to the epoch logs, so keras-tuner
    records it with the trial's metrics."""

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["trial_seconds"] = time.perf_counter() - self._start


class RecipeHyperModel(kt.HyperModel):
    """Builds and trains a recipe's model with hyperparameters drawn from its declared search space.

    Each hyperparameter is named after the config key it sets (``optimizer.lr``), so a trial's values are
    recipe overrides as they stand. ``fit`` takes raw 0-255 images exactly as keras-tuner documents
    (``tuner.search(x, y, validation_data=(x_val, y_val), epochs=E)``): it fits the model's normalisation
    layer on ``x``, schedules the learning rate over ``epochs``, trains with the recipe's augmentation and
    NaN guard, and reports a diverged trial as failed (no retries) with the guard's advice.
    """

    def __init__(
        self,
        recipe_name: str,
        overrides: list[str] | tuple[str, ...] = (),
        *,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (32, 32, 3),
    ):
        super().__init__(name=recipe_name, tunable=True)
        self.recipe = get_recipe(recipe_name)
        if self.recipe.search_space is None:
            raise ValueError(f"recipe '{recipe_name}' declares no search space")
        self.overrides = list(overrides)
        self.recipe.config(self.overrides)  # fail now on a bad override, not inside the first trial
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)

    def trial_overrides(self, hp: kt.HyperParameters) -> list[str]:
        """The fixed overrides followed by this trial's sampled values, as ``key=value``."""
        values = self.recipe.search_space(hp)
        return [*self.overrides, *(f"{key}={value}" for key, value in values.items())]

    def config(self, hp: kt.HyperParameters, extra: list[str] | tuple[str, ...] = ()):
        return self.recipe.config([*self.trial_overrides(hp), *extra])

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        cfg = self.config(hp)
        stats = {
            "mean": None,
            "variance": None,
            "num_classes": self.num_classes,
            "input_shape": self.input_shape,
        }
        model = self.recipe.build_model(cfg, stats)  # normalisation is fitted on the data in fit()
        compile_model(model, cfg, steps_per_epoch=1)
        return model

    def fit(
        self,
        hp,
        model,
        x,
        y=None,
        validation_data=None,
        epochs: int | None = None,
        callbacks=None,
        verbose="auto",
        **kwargs,
    ):
        from callbacks import NaNGuard

        x, y = np.asarray(x), np.asarray(y).reshape(-1).astype(np.int32)
        validate(x, y, self.num_classes, "tuner training data")
        cfg = self.config(hp, [f"trainer.epochs={epochs}"] if epochs else [])
        epochs = cfg.trainer.epochs
        model.get_layer("normalize").adapt(x[:10000].astype(np.float32))
        adapt_whitening(model, x)  # patch-whitening layers see the normalised images
        batch = min(cfg.trainer.batch_size, len(x))
        spe = pipeline.steps_per_epoch(len(x), batch)
        compile_model(model, cfg, spe)  # the schedule spans this trial's epochs
        train = pipeline.recipe_train_dataset(cfg, x, y, num_classes=self.num_classes, batch_size=batch)
        val = None
        if validation_data is not None:
            vx, vy = validation_data[0], np.asarray(validation_data[1]).reshape(-1).astype(np.int32)
            val = pipeline.eval_dataset(
                np.asarray(vx), vy, num_classes=self.num_classes, batch_size=max(batch, 256)
            )
        guard = NaNGuard(explosion_factor=cfg.callbacks.explosion_factor)
        recipe_callbacks = self.recipe.train_callbacks(cfg, 1.0) if self.recipe.train_callbacks else []
        history = model.fit(
            train,
            validation_data=val,
            epochs=epochs,
            steps_per_epoch=spe,
            shuffle=False,
            callbacks=[TrialTimer(), *recipe_callbacks, guard, *(callbacks or [])],
            verbose=verbose,
        )
        if guard.stopped:
            raise kt.errors.FailedTrialError(f"diverged: {guard.stop_info['advice']}")
        return history


def hypermodel(recipe_name: str, overrides: list[str] | tuple[str, ...] = (), **kwargs) -> RecipeHyperModel:
    """A ``keras_tuner.HyperModel`` for a recipe.

    Fixed overrides come as ``key=value`` strings or as keyword arguments, with ``__`` for the dot
    (``hypermodel("mlp", model__width=64)`` is ``model.width=64``).

    Example:
        >>> tuner = keras_tuner.RandomSearch(hypermodel("resnet_small", trainer__batch_size=256),
        ...                                  objective="val_accuracy", max_trials=10)
        >>> tuner.search(x, y, validation_data=(x_val, y_val), epochs=5)
    """
    extra = [f"{key.replace('__', '.')}={value}" for key, value in kwargs.items()]
    return RecipeHyperModel(recipe_name, [*overrides, *extra])

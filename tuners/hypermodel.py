"""A ``keras_tuner.HyperModel`` for any recipe, searching over the recipe's own config keys."""

from __future__ import annotations

import time

import keras
import keras_tuner as kt
import numpy as np

from layers import adapt_whitening
from recipes import get_recipe
from recipes.config import merge_overrides
from recipes.data import ImageData, validate
from recipes.engine.training import build_training


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
    layer on ``x``, fits the final run's learning-rate schedule to ``epochs`` (:meth:`trial_config`),
    trains with the recipe's augmentation and NaN guard, and reports a diverged trial as failed (no
    retries) with the guard's advice.
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
        self._names = [str(i) for i in range(num_classes)]

    def trial_overrides(self, hp: kt.HyperParameters) -> list[str]:
        """The fixed overrides and this trial's sampled values, as ``key=value`` with each key once (a
        sampled value replaces a fixed one of the same key)."""
        values = self.recipe.search_space(hp)
        return merge_overrides(self.overrides, [f"{key}={value}" for key, value in values.items()])

    def config(self, hp: kt.HyperParameters, extra: list[str] | tuple[str, ...] = ()):
        """The trial's config; ``extra`` (the trial's epochs) replaces the same keys of the others."""
        return self.recipe.config(merge_overrides(self.trial_overrides(hp), extra))

    def trial_config(self, hp: kt.HyperParameters, epochs: int | None = None):
        """The config a trial of ``epochs`` epochs trains: the final run's (``trainer.epochs``) schedule
        fitted to ``epochs``. The decay spans the trial's epochs and the warmup keeps its fraction of the
        training, so that a 2-epoch coarse trial of a 30-epoch recipe with 2 warmup epochs warms up for
        0.13 epochs instead of its whole length; ``schedule.warmup_epochs`` keeps meaning the final run's."""
        final = self.config(hp)
        if not epochs or epochs == final.trainer.epochs:
            return final
        extra = [f"trainer.epochs={epochs}"]
        schedule = getattr(final, "schedule", None)
        if schedule is not None and schedule.warmup_epochs:
            extra.append(f"schedule.warmup_epochs={schedule.warmup_epochs * epochs / final.trainer.epochs!r}")
        return self.config(hp, extra)

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """The trial's model, compiled; its normalisation (and patch whitening) is fitted in :meth:`fit`,
        and its schedule set to the trial's epochs there."""
        cfg = self.config(hp)
        stats = {
            "mean": None,
            "variance": None,
            "num_classes": self.num_classes,
            "input_shape": self.input_shape,
        }
        image, label = np.zeros((1, *self.input_shape), np.uint8), np.zeros(1, np.int32)
        placeholder = ImageData(
            image, label, image[:0], label[:0], image[:0], label[:0], self._names, "keras-tuner"
        )
        return build_training(
            self.recipe, cfg, placeholder, stats=stats, monitors=False, datasets=False
        ).model

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
        """Train a trial as ``run`` does (the same set-up, without the monitors), on raw images."""
        data = self._data(x, y, validation_data)
        cfg = self.trial_config(hp, epochs)
        normalize = next((layer for layer in model.layers if layer.name == "normalize"), None)
        if normalize is not None:  # built without statistics: fitted to this search's images
            normalize.adapt(data.x_train[:10000].astype(np.float32))
        adapt_whitening(model, data.x_train)  # patch-whitening layers see the normalised images
        training = build_training(self.recipe, cfg, data, model=model, monitors=False, recompile=True)
        history = model.fit(
            training.train_ds,
            validation_data=training.val_ds,
            epochs=training.epochs,
            steps_per_epoch=training.steps_per_epoch,
            shuffle=False,
            callbacks=[TrialTimer(), *training.callbacks, *(callbacks or [])],
            verbose=verbose,
        )
        if training.guard is not None and training.guard.stopped:
            raise kt.errors.FailedTrialError(f"diverged: {training.guard.stop_info['advice']}")
        return history

    def _data(self, x, y, validation_data) -> ImageData:
        """keras-tuner's arguments as the engine's data: validated images and integer labels."""
        x, y = np.asarray(x), np.asarray(y).reshape(-1).astype(np.int32)
        validate(x, y, self.num_classes, "tuner training data")
        vx = np.zeros((0, *x.shape[1:]), x.dtype)
        vy = np.zeros(0, np.int32)
        if validation_data is not None:
            vx, vy = (
                np.asarray(validation_data[0]),
                np.asarray(validation_data[1]).reshape(-1).astype(np.int32),
            )
        return ImageData(x, y, vx, vy, vx[:0], vy[:0], self._names, "keras-tuner")


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

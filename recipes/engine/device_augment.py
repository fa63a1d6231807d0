"""``data.augment_on``: the training images cropped, flipped and cut out on the device that trains.

On a GPU the ``tf.data`` pipeline runs on the host's cores, which a fast accelerator can outrun; then the
pixel work of the augmentation is better done in the train step, on the GPU. With ``augment_on=device``
the pipeline only draws each image's augmentation (a few integers: crop offset, flip, cutout corner;
:func:`recipes.data.pipeline.draw_augmentation`) and yields the images as stored (uint8: a quarter of the
bytes float32 would copy to the device); the model's ``train_step`` is wrapped to apply the draws first
(:class:`AugmentingTrainStep`). The draws are the pipeline's, from the same seeds, so a run trains on the
very same batches either way, and under any ``tf.distribute`` strategy: the draws are per image and split
over the replicas with their images. Validation, evaluation and the monitors see un-augmented images and
are unchanged; a saved model holds no trace of the wrapper.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from recipes.config import ConfigError
from recipes.data.pipeline import apply_augmentation


def augments_on_device(cfg) -> bool:
    """Whether ``cfg`` trains with the augmentation in the train step: ``data.augment_on=device``, or
    ``auto`` when a GPU is visible (on a CPU both places measured the same speed for ``fast``, within
    2%, and the pipeline's is the long-tested one); never without ``data.augment``."""
    d = cfg.data
    if not d.augment or not (d.crop_padding > 0 or d.flip or d.cutout > 0):
        return False  # nothing to apply
    if d.augment_on == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return d.augment_on == "device"


class AugmentingTrainStep:
    """A model's ``train_step`` that first applies the batch's drawn augmentation: it takes
    ``((images, params), labels)`` from a :func:`recipes.data.pipeline.train_dataset` made with
    ``on_device=True`` and hands ``(augmented float32 images, labels)`` to the wrapped step. Any other
    batch (a user's ``fit(x, y)`` or ``train_on_batch`` on the trained model, the ``check`` probes)
    goes to the wrapped step as it is."""

    def __init__(self, train_step, *, padding: int, cutout: int, pad_mode: str):
        self.wrapped = train_step
        self.padding, self.cutout, self.pad_mode = padding, cutout, pad_mode

    def __call__(self, data):
        if not _packed(data):
            return self.wrapped(data)
        (images, params), *rest = data
        x = apply_augmentation(
            tf.cast(images, tf.float32),
            params,
            padding=self.padding,
            cutout=self.cutout,
            pad_mode=self.pad_mode,
        )
        return self.wrapped((x, *rest))


def _packed(data) -> bool:
    """Whether ``data`` is ``((images, params dict), labels...)``: the batch structure, known when traced."""
    x = data[0] if isinstance(data, (tuple, list)) and data else None
    return isinstance(x, (tuple, list)) and len(x) == 2 and isinstance(x[1], dict)


def set_train_augmentation(model: keras.Model, cfg, on_device: bool) -> None:
    """Wrap ``model.train_step`` in an :class:`AugmentingTrainStep` for ``cfg.data``'s augmentation
    (``on_device``), or take a wrapper off (not ``on_device``); calling it again re-wraps the original
    step, never a wrapper. Call it in the strategy's scope, with the model compiled: it builds the
    model's metrics and optimizer as ``fit`` would from a batch of images, since ``fit`` under a
    strategy would try to from the first batch, which holds the draws beside the images."""
    step = model.train_step
    original = step.wrapped if isinstance(step, AugmentingTrainStep) else step
    if not on_device:
        if original is not step:
            del model.train_step  # the class's own step again
            model.train_function = None  # Keras keeps the step it traced until told to trace again
        return
    if not hasattr(model, "input_shape"):
        raise ConfigError(
            f"data.augment_on=device needs a model whose input shape is known ({type(model).__name__} "
            "has none: build it from keras.Input); set data.augment_on=host"
        )
    d = cfg.data
    model.train_step = AugmentingTrainStep(
        original, padding=d.crop_padding, cutout=d.cutout, pad_mode=d.pad_mode
    )
    model.train_function = None
    if model.compiled:
        images = keras.KerasTensor((1, *model.input_shape[1:]), "float32")
        labels = keras.KerasTensor((1, *model.output_shape[1:]), "float32")
        model._symbolic_build(data_batch=(images, labels))  # private: what fit does (keras trainer)

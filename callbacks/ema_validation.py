"""The optimizer's moving average of the weights (Keras's ``use_ema=True``): evaluate it, put it in the model.

A Keras optimizer built with ``use_ema=True, ema_momentum=d`` keeps an average beside each trainable
variable, updated after every step: ``avg = w`` at the first step, then ``avg = d * avg + (1 - d) * w``
(no bias correction; it forgets the initial weights after about ``1 / (1 - d)`` steps). The model trains
on its raw weights; ``model.fit`` copies the averages into it when it returns
(``optimizer.finalize_variable_values``).

The average covers trainable variables only. Batch normalisation's moving mean and variance are not
trainable: they still describe the activations of the raw weights, which the averaged weights do not
produce. :func:`recompute_batch_norm` measures them again for the weights in the model, as SWA does
(Izmailov et al. 2018, ``torch.optim.swa_utils.update_bn``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np

from callbacks.optimizer_utils import unwrap_optimizer


def ema_pairs(optimizer: keras.optimizers.Optimizer | None) -> list[tuple[keras.Variable, keras.Variable]]:
    """``(variable, average)`` for each variable the optimizer averages; empty without ``use_ema``, and
    before the optimizer is built (at its first step)."""
    optimizer = unwrap_optimizer(optimizer)
    if not getattr(optimizer, "use_ema", False) or not optimizer.built:
        return []
    averages = getattr(optimizer, "_model_variables_moving_average", None) or []
    return [(v, a) for v, a in zip(optimizer._trainable_variables, averages) if a is not None]


def use_averaged_weights(model: keras.Model) -> bool:
    """Copy the optimizer's averages into the model, as ``fit`` does when it returns (again: no change).
    False when the optimizer keeps no average."""
    pairs = ema_pairs(getattr(model, "optimizer", None))
    for variable, average in pairs:
        variable.assign(average)
    return bool(pairs)


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The batch-normalisation layers of ``model`` (nested ones included) that update their statistics
    in training mode (a frozen one keeps them)."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


@contextlib.contextmanager
def variables_kept(model: keras.Model) -> Iterator[None]:
    """Every variable of ``model`` (weights, batch-norm statistics, random-generator state) put back as it
    was on leaving, also after an error: for measuring on the model without changing it."""
    variables = model.variables
    saved = [keras.ops.convert_to_numpy(v) for v in variables]
    try:
        yield
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


def recompute_batch_norm(model: keras.Model, images: np.ndarray, batch_size: int) -> int:
    """Set every batch-norm layer's moving mean and variance to their mean over the batches of ``images``
    run through ``model`` in training mode; returns how many layers were set (0: none, or no images).

    Keras updates ``moving = momentum * moving + (1 - momentum) * batch`` in training mode: with the
    momentum at 0 each forward pass leaves that batch's own statistics, which are averaged here (weighted
    by batch length). Eager calls, so that the momentum is read anew; only the statistics change (a
    dropout layer's random state advances).
    """
    layers = batch_norm_layers(model)
    if not layers or not len(images):
        return 0
    momenta = [layer.momentum for layer in layers]
    sums = [[0.0, 0.0] for _ in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start : start + batch_size], dtype="float32")
            model(batch, training=True)
            for total, layer in zip(sums, layers):
                total[0] = total[0] + len(batch) * keras.ops.convert_to_numpy(layer.moving_mean)
                total[1] = total[1] + len(batch) * keras.ops.convert_to_numpy(layer.moving_variance)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    for (mean, variance), layer in zip(sums, layers):
        layer.moving_mean.assign(mean / len(images))
        layer.moving_variance.assign(variance / len(images))
    return len(layers)


class EMAValidation(keras.callbacks.Callback):
    """Log ``val_accuracy_ema``: the validation accuracy of the optimizer's averaged weights, each epoch.

    At each epoch end the averages go into the model, the batch-norm statistics are measured for them
    on ``bn_images`` (:func:`recompute_batch_norm`), the validation images are predicted, and every
    variable of the model (weights, statistics, random state) is put back, so training goes on exactly as
    without this callback. Nothing is logged while the optimizer keeps no average. List it before the
    callbacks that write the logs (``CSVLogger``).

    Args:
        x_val: validation images, as the model takes them.
        y_val: their integer labels.
        bn_images: training images for the batch-norm statistics (empty: keep the raw weights' ones).
        batch_size: batch of the batch-norm passes (the training batch, whose statistics the moving ones
            average during training).
        eval_batch_size: batch of the validation predictions.

    Example:
        >>> model.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.999), ...)
        >>> model.fit(x, y, validation_data=(xv, yv), callbacks=[EMAValidation(xv, yv, x[:2000], 128)])
    """

    def __init__(
        self,
        x_val: np.ndarray,
        y_val: np.ndarray,
        bn_images: np.ndarray,
        batch_size: int,
        eval_batch_size: int = 256,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                "`batch_size` and `eval_batch_size` must be >= 1. "
                f"Received: batch_size={batch_size}, eval_batch_size={eval_batch_size}"
            )
        self.x_val = np.asarray(x_val, dtype="float32")
        self.y_val = np.asarray(y_val).reshape(-1)
        self.bn_images = bn_images
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not len(self.x_val) or not ema_pairs(self.model.optimizer):
            return
        with variables_kept(self.model):
            use_averaged_weights(self.model)
            recompute_batch_norm(self.model, self.bn_images, self.batch_size)
            logits = self.model.predict(self.x_val, batch_size=self.eval_batch_size, verbose=0)
        predicted = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)
        logs["val_accuracy_ema"] = float(np.mean(predicted == self.y_val))

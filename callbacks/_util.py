"""Small helpers shared by the callbacks."""

from __future__ import annotations

import keras
import numpy as np


def unwrap_optimizer(optimizer):
    """The optimizer that owns the learning rate (inside a ``LossScaleOptimizer`` when mixed precision)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def current_learning_rate(optimizer, *, last_step: bool = True) -> float:
    """Learning rate of the step just taken (``last_step``) or of the next one.

    ``optimizer.learning_rate`` evaluates a schedule at ``iterations``, which is the *next* step; the rate
    that produced the latest update is the schedule at ``iterations - 1``.
    """
    optimizer = unwrap_optimizer(optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        if last_step:
            step = max(0, step - 1)
        return float(keras.ops.convert_to_numpy(schedule(step)))
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def probe_model(model: keras.Model, layers: list, who: str) -> keras.Model:
    """A model from ``model``'s inputs to the outputs of ``layers`` (Sequential and functional only)."""
    try:
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        return keras.Model(inputs, [layer.output for layer in layers])
    except (AttributeError, ValueError, TypeError) as e:
        raise TypeError(
            f"{who} reads intermediate activations, which needs a Sequential or functional model; "
            f"{type(model).__name__} looks subclassed (no layer.output: {e}). Build the model "
            "functionally, or pass it an already-built Sequential/functional model"
        ) from None


def as_batches(probe_x, batch_size: int = 256):
    """Probe inputs as a list of numpy batches (small, fixed, reused every measurement)."""
    x = np.asarray(probe_x)
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]

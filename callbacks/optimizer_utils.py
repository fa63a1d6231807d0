"""Reading an optimizer's learning rate the way Keras 3 applies it (public: ``from callbacks import ...``)."""

from __future__ import annotations

import keras


def unwrap_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that owns the learning rate (inside a ``LossScaleOptimizer`` when mixed precision)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def current_learning_rate(optimizer: keras.optimizers.Optimizer, *, last_step: bool = True) -> float:
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


def learning_rate_rising(optimizer: keras.optimizers.Optimizer) -> bool:
    """Whether the schedule's rate for the next step is below the one after it: a warmup (or any ramp up)
    is under way. A constant rate is not rising."""
    optimizer = unwrap_optimizer(optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return False
    step = int(keras.ops.convert_to_numpy(optimizer.iterations))
    now, after = (float(keras.ops.convert_to_numpy(schedule(s))) for s in (step, step + 1))
    return after > now


def learning_rate_peak(optimizer: keras.optimizers.Optimizer, samples: int = 64) -> float:
    """The highest rate the schedule has given so far (over ``samples`` + 1 evenly spaced steps up to the
    next one, the ends included), or the current rate when it is not a schedule."""
    optimizer = unwrap_optimizer(optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    step = int(keras.ops.convert_to_numpy(optimizer.iterations))
    steps = sorted({round(step * i / samples) for i in range(samples + 1)})
    return max(float(keras.ops.convert_to_numpy(schedule(s))) for s in steps)

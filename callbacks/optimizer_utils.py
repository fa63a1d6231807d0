"""Reading an optimizer's learning rate the way Keras 3 applies it (public: ``from callbacks import ...``)."""

from __future__ import annotations

import keras


def unwrap_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that owns the learning rate (inside a ``LossScaleOptimizer`` when mixed precision)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def optimizer_steps(optimizer: keras.optimizers.Optimizer) -> int:
    """The steps the optimizer has taken: its ``iterations``, the index of the next step."""
    return int(keras.ops.convert_to_numpy(unwrap_optimizer(optimizer).iterations))


def plain_update(optimizer: keras.optimizers.Optimizer, step: int) -> bool:
    """Whether the optimizer's update at ``step`` (0-based: its ``iterations`` during that update) moves
    the weights by the gradient step alone. It does not when Keras's ``use_ema`` overwrites the weights
    with their average (every ``ema_overwrite_frequency``-th update), nor where the optimizer's own
    ``plain_update(step)`` method says so (``LookaheadSGD``: a lookahead sync). A monitor of the update's
    size measures on plain updates."""
    optimizer = unwrap_optimizer(optimizer)
    own = getattr(optimizer, "plain_update", None)
    if callable(own) and not own(step):
        return False
    every = (
        getattr(optimizer, "ema_overwrite_frequency", None) if getattr(optimizer, "use_ema", False) else None
    )
    return not (every and (step + 1) % every == 0)


def rate_sized_update(optimizer: keras.optimizers.Optimizer, variable) -> bool:
    """Whether the optimizer's step for ``variable`` has a size its learning rate fixes, whatever the
    gradient: the optimizer's own ``rate_sized_update(variable)`` says so (``LookaheadSGD``: a kernel
    taking Muon steps, a rotation at fixed norm). The update-to-weight ratio of such a variable says how
    the rate was set, not how training goes, so update-ratio rules of thumb do not apply to it."""
    own = getattr(unwrap_optimizer(optimizer), "rate_sized_update", None)
    return bool(callable(own) and own(variable))


def _rate_and_step(optimizer: keras.optimizers.Optimizer):
    """``(rate_at, next step)``: ``rate_at(step)`` is the optimizer's schedule at ``step`` (a constant
    for a float learning rate), ``next step`` its ``iterations``."""
    optimizer = unwrap_optimizer(optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    step = optimizer_steps(optimizer)
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        return (lambda s: rate), step
    return (lambda s: float(keras.ops.convert_to_numpy(schedule(s)))), step


def current_learning_rate(optimizer: keras.optimizers.Optimizer, *, last_step: bool = True) -> float:
    """Learning rate of the step just taken (``last_step``) or of the next one.

    ``optimizer.learning_rate`` evaluates a schedule at ``iterations``, which is the *next* step; the rate
    that produced the latest update is the schedule at ``iterations - 1``.
    """
    rate_at, step = _rate_and_step(optimizer)
    return rate_at(max(0, step - 1) if last_step else step)


def learning_rate_rising(optimizer: keras.optimizers.Optimizer) -> bool:
    """Whether the schedule's rate for the next step is below the one after it: a warmup (or any ramp up)
    is under way. A constant rate is not rising."""
    rate_at, step = _rate_and_step(optimizer)
    return rate_at(step + 1) > rate_at(step)


def learning_rate_peak(optimizer: keras.optimizers.Optimizer, samples: int = 64) -> float:
    """The highest rate the schedule has given so far (over ``samples`` + 1 evenly spaced steps up to the
    next one, the ends included); a constant rate is its own peak."""
    rate_at, step = _rate_and_step(optimizer)
    return max(rate_at(s) for s in sorted({round(step * i / samples) for i in range(samples + 1)}))

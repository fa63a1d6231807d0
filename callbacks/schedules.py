"""The learning-rate schedules: linear warmup in front of any Keras schedule, builders for the usual
decays behind it, :class:`Replannable`, which reads a schedule at an adjustable pace, and
:class:`PlateauSchedule` with the callback that lowers it when validation stalls (:class:`PlateauDecay`).

Registered names are part of the saved-file format and do not follow the module: ``Warmup`` is
``"callbacks>Warmup"`` and ``Replannable`` is ``"recipes>Replannable"`` (it was defined in
``recipes/budget.py`` before), so ``.keras`` files saved earlier load after ``import callbacks``.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
from keras import ops
from keras.optimizers.schedules import (
    CosineDecay,
    ExponentialDecay,
    InverseTimeDecay,
    LearningRateSchedule,
    PiecewiseConstantDecay,
    PolynomialDecay,
)

from callbacks.optimizer_utils import current_learning_rate, optimizer_steps, unwrap_optimizer

__all__ = [
    "DECAYS",
    "ExponentialRange",
    "PlateauDecay",
    "PlateauSchedule",
    "Replannable",
    "Warmup",
    "decay_schedule",
    "find_schedule",
    "schedule_position",
    "warmup_schedule",
]

DECAYS = ("cosine", "linear", "step", "exponential", "inverse_time", "constant", "plateau")


@keras.saving.register_keras_serializable(package="callbacks")
class Warmup(LearningRateSchedule):
    """Ramp linearly from ``initial_lr`` to ``schedule(0)`` over ``warmup_steps``, then follow the schedule.

    At step ``s < warmup_steps`` the rate is ``initial_lr + (schedule(0) - initial_lr) * s / warmup_steps``;
    from ``warmup_steps`` on it is ``schedule(s - warmup_steps)``, so the wrapped decay starts where the
    warmup ends (a cosine over ``D`` steps then ends at step ``warmup_steps + D``).

    Args:
        schedule: a Keras ``LearningRateSchedule`` or a float (constant rate after warmup).
        warmup_steps: optimizer steps of warmup; 0 means no warmup.
        initial_lr: rate at step 0.
        name: optional name.

    Example:
        >>> decay = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10_000)
        >>> optimizer = keras.optimizers.SGD(Warmup(decay, warmup_steps=500), momentum=0.9)

    Reference:
        Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", section 2.2.
    """

    def __init__(
        self,
        schedule: LearningRateSchedule | float,
        warmup_steps: int,
        initial_lr: float = 0.0,
        name: str | None = None,
    ):
        super().__init__()
        if not isinstance(schedule, LearningRateSchedule):
            try:
                schedule = float(schedule)
            except (TypeError, ValueError):
                raise ValueError(
                    f"`schedule` must be a LearningRateSchedule or a float. Received: schedule={schedule!r}"
                ) from None
        if int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be an integer >= 0. Received: warmup_steps={warmup_steps}")
        if not math.isfinite(initial_lr) or initial_lr < 0:
            raise ValueError(f"`initial_lr` must be finite and >= 0. Received: initial_lr={initial_lr}")
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.initial_lr = float(initial_lr)
        self.name = name

    def _after(self, step):
        if isinstance(self.schedule, LearningRateSchedule):
            return ops.cast(self.schedule(step), "float32")
        return ops.cast(self.schedule, "float32")

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.warmup_steps == 0:
            return self._after(step)
        target = self._after(ops.cast(0, "float32"))
        ramp = self.initial_lr + (target - self.initial_lr) * step / float(self.warmup_steps)
        after = self._after(ops.maximum(step - float(self.warmup_steps), 0.0))
        return ops.where(step < float(self.warmup_steps), ramp, after)

    def get_config(self) -> dict:
        schedule = self.schedule
        if isinstance(schedule, LearningRateSchedule):
            schedule = keras.saving.serialize_keras_object(schedule)
        return {
            "schedule": schedule,
            "warmup_steps": self.warmup_steps,
            "initial_lr": self.initial_lr,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> Warmup:
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def decay_schedule(
    name: str,
    lr: float,
    *,
    decay_steps: int,
    steps_per_epoch: int,
    final_lr_fraction: float = 0.0,
    step_epochs: int = 10,
    decay_factor: float = 0.1,
    inverse_time_k: float = 0.5,
) -> LearningRateSchedule | float:
    """One of Keras's own decays, parameterised in epochs (``step_epochs``, ``inverse_time_k`` per epoch).

    ``cosine``: from ``lr`` to ``lr * final_lr_fraction`` over ``decay_steps``; ``linear``: the same
    ends on a straight line (``PolynomialDecay`` of power 1); ``step``: multiply by
    ``decay_factor`` every ``step_epochs``; ``exponential``: the same factor, applied smoothly;
    ``inverse_time``: ``lr / (1 + k * epoch)``; ``constant``: ``lr``; ``plateau``: ``lr`` times a factor
    that a :class:`PlateauDecay` callback lowers (a :class:`PlateauSchedule`; ``final_lr_fraction`` and
    ``decay_factor`` then belong to the callback).
    """
    if name == "cosine":
        return CosineDecay(lr, decay_steps=max(1, decay_steps), alpha=final_lr_fraction)
    if name == "linear":
        return PolynomialDecay(
            lr, decay_steps=max(1, decay_steps), end_learning_rate=lr * final_lr_fraction, power=1.0
        )
    if name == "step":
        every = step_epochs * steps_per_epoch
        n_drops = max(0, (decay_steps - 1) // every) if every else 0
        if n_drops == 0:
            return float(lr)
        boundaries = [every * (i + 1) for i in range(n_drops)]
        values = [lr * decay_factor**i for i in range(n_drops + 1)]
        return PiecewiseConstantDecay(boundaries, values)
    if name == "exponential":
        return ExponentialDecay(lr, decay_steps=step_epochs * steps_per_epoch, decay_rate=decay_factor)
    if name == "inverse_time":
        return InverseTimeDecay(lr, decay_steps=steps_per_epoch, decay_rate=inverse_time_k)
    if name == "constant":
        return float(lr)
    if name == "plateau":
        return PlateauSchedule(lr)
    raise ValueError(f"unknown decay {name!r}; expected one of {', '.join(DECAYS)}")


def warmup_schedule(
    name: str,
    lr: float,
    *,
    epochs: float,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    initial_lr_fraction: float = 0.0,
    **decay_kwargs,
) -> LearningRateSchedule:
    """Warmup from ``lr * initial_lr_fraction`` over ``warmup_epochs``, then the ``name`` decay over the
    remaining epochs.

    The whole schedule spans ``epochs * steps_per_epoch`` optimizer steps: a cosine or linear decay
    reaches its final value exactly at the last step.
    """
    total = max(1, round(epochs * steps_per_epoch))
    warmup = min(total - 1, round(warmup_epochs * steps_per_epoch))
    decay = decay_schedule(
        name, lr, decay_steps=total - warmup, steps_per_epoch=steps_per_epoch, **decay_kwargs
    )
    return Warmup(decay, warmup_steps=warmup, initial_lr=lr * initial_lr_fraction)


# Registered under "recipes": files saved while this class lived in recipes/budget.py name it so.
@keras.saving.register_keras_serializable(package="recipes")
class Replannable(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule`` read at an adjustable pace: step ``t`` gets ``schedule(position(t))`` with
    ``position(t) = start_position + (t - start_step) * pace`` (the identity until :meth:`set_pace`).

    A budget keeper raises the pace mid-run so that the rest of the schedule, decay included, fits in
    fewer steps. The pace lives in variables read by the compiled training step, so a change applies at
    the next step without retracing; ``get_config`` records it, so a checkpoint resumes at that pace.

    Args:
        schedule: the Keras ``LearningRateSchedule`` to read (or its serialized dict).
        start_step: optimizer step at which the current pace began.
        start_position: the schedule's position at ``start_step``.
        pace: schedule steps per optimizer step from ``start_step`` on.

    Example:
        >>> schedule = Replannable(Warmup(keras.optimizers.schedules.CosineDecay(0.1, 1000), 100))
        >>> optimizer = keras.optimizers.SGD(schedule)
        >>> schedule.set_pace(start_step=500, start_position=500, pace=2.0)  # finish in 250 more steps
    """

    def __init__(self, schedule, start_step: float = 0.0, start_position: float = 0.0, pace: float = 1.0):
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        if not callable(schedule):
            raise ValueError(f"`schedule` must be a LearningRateSchedule. Received: {schedule!r}")
        self.schedule = schedule
        self._pace = [
            keras.Variable(float(v), dtype="float32", trainable=False, name=n)
            for v, n in ((start_step, "start_step"), (start_position, "start_position"), (pace, "pace"))
        ]

    def position(self, step):
        start_step, start_position, pace = self._pace
        return start_position + (keras.ops.cast(step, "float32") - start_step) * pace

    def __call__(self, step):
        return self.schedule(self.position(step))

    def set_pace(self, start_step: int, start_position: float, pace: float) -> None:
        for variable, value in zip(self._pace, (start_step, start_position, pace)):
            variable.assign(float(value))

    def get_config(self) -> dict:
        start_step, start_position, pace = (float(keras.ops.convert_to_numpy(v)) for v in self._pace)
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "start_step": start_step,
            "start_position": start_position,
            "pace": pace,
        }


def schedule_position(optimizer: keras.optimizers.Optimizer) -> tuple[int, float]:
    """The optimizer's step count, and where its schedule stands: a :class:`Replannable`'s position, else
    the step itself."""
    optimizer = unwrap_optimizer(optimizer)
    step = optimizer_steps(optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, Replannable):
        return step, float(keras.ops.convert_to_numpy(schedule.position(step)))
    return step, float(step)


@keras.saving.register_keras_serializable(package="callbacks")
class PlateauSchedule(LearningRateSchedule):
    """``initial_learning_rate * factor``, where ``factor`` (1 at first) is lowered by a
    :class:`PlateauDecay` callback whenever the monitored metric stops improving.

    Keras's ``ReduceLROnPlateau`` sets the optimizer's rate, which an optimizer built on a schedule refuses
    (``TypeError``), and it starts afresh at every ``fit``. Here the factor lives in a variable that the
    compiled training step reads, so a change applies at the next step without retracing, and the schedule
    composes with :class:`Warmup` (which ramps to the current ``initial_learning_rate * factor``) and
    :class:`Replannable`. The plateau's state (``factor``, and the callback's counters ``best``, ``wait``
    and ``cooldown_counter``) is in ``get_config``, so an optimizer saved in a checkpoint resumes with it.

    Args:
        initial_learning_rate: the rate before any decay.
        factor: the current multiplier, in ``(0, 1]``.
        best: the best monitored value so far (None: nothing seen yet).
        wait: epochs since the last improvement, as ``ReduceLROnPlateau`` counts them.
        cooldown_counter: epochs of cooldown left.
        name: optional name.

    Example:
        >>> schedule = PlateauSchedule(0.1)
        >>> model.compile(keras.optimizers.SGD(Warmup(schedule, warmup_steps=500)), ...)
        >>> model.fit(x, y, validation_data=(xv, yv), callbacks=[PlateauDecay(factor=0.1, patience=5)])
    """

    def __init__(
        self,
        initial_learning_rate: float,
        factor: float = 1.0,
        best: float | None = None,
        wait: int = 0,
        cooldown_counter: int = 0,
        name: str | None = None,
    ):
        super().__init__()
        if not math.isfinite(initial_learning_rate) or initial_learning_rate <= 0:
            raise ValueError(
                "`initial_learning_rate` must be finite and > 0. "
                f"Received: initial_learning_rate={initial_learning_rate}"
            )
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"`factor` must be in [0, 1]. Received: factor={factor}")
        if int(wait) != wait or wait < 0 or int(cooldown_counter) != cooldown_counter or cooldown_counter < 0:
            raise ValueError(
                "`wait` and `cooldown_counter` must be integers >= 0. "
                f"Received: wait={wait}, cooldown_counter={cooldown_counter}"
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self._factor = keras.Variable(float(factor), dtype="float32", trainable=False, name="plateau_factor")
        self.best = None if best is None else float(best)
        self.wait = int(wait)
        self.cooldown_counter = int(cooldown_counter)
        self.name = name

    @property
    def factor(self) -> float:
        return float(ops.convert_to_numpy(self._factor))

    def set_factor(self, factor: float) -> None:
        self._factor.assign(float(factor))

    def __call__(self, step):
        return ops.multiply(ops.cast(self._factor, "float32"), self.initial_learning_rate)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "factor": self.factor,
            "best": self.best,
            "wait": self.wait,
            "cooldown_counter": self.cooldown_counter,
            "name": self.name,
        }


def find_schedule(optimizer: keras.optimizers.Optimizer, kind: type) -> LearningRateSchedule | None:
    """The schedule of type ``kind`` in ``optimizer``'s learning rate, looking inside wrappers that keep
    the wrapped schedule in ``.schedule`` (:class:`Replannable`, :class:`Warmup`); None if there is none."""
    schedule = getattr(unwrap_optimizer(optimizer), "_learning_rate", None)
    while schedule is not None and not isinstance(schedule, kind):
        schedule = getattr(schedule, "schedule", None)
    return schedule


class PlateauDecay(keras.callbacks.Callback):
    """Multiply a :class:`PlateauSchedule`'s factor by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs: Keras's ``ReduceLROnPlateau`` rule, for an optimizer whose rate is a schedule.

    At each epoch end, as ``ReduceLROnPlateau`` does: in cooldown, count it down and reset ``wait``; a
    value better than ``best`` by more than ``min_delta`` (the first value always) becomes ``best`` and
    resets ``wait``; otherwise, out of cooldown, ``wait += 1``, and at ``wait >= patience``, if the factor
    is above ``min_factor``, it becomes ``max(factor * decay, min_factor)``, ``wait`` returns to 0 and
    ``cooldown`` epochs of cooldown start. Unlike ``ReduceLROnPlateau`` nothing is reset when training
    (re)starts: the counters live in the schedule, whose config a checkpoint saves.

    The schedule is found in the model's optimizer at ``on_train_begin`` (inside a ``LossScaleOptimizer``,
    :class:`Replannable` or :class:`Warmup`). Put this callback after :class:`LearningRateLogger`, so that
    ``learning_rate`` is the rate the epoch trained at; when no logger wrote it, this callback does.

    Args:
        factor: the multiplier of a decay, in ``(0, 1]``.
        patience: epochs without improvement before a decay.
        min_delta: the least change that counts as an improvement.
        cooldown: epochs after a decay during which no waiting is counted.
        min_factor: the factor is never lowered below this (``min_lr / initial_learning_rate``).
        monitor: the epoch log to watch.
        mode: ``"max"`` (an accuracy) or ``"min"`` (a loss).

    Example:
        >>> optimizer = keras.optimizers.SGD(Warmup(PlateauSchedule(0.1), warmup_steps=500), momentum=0.9)
        >>> model.fit(..., callbacks=[LearningRateLogger(), PlateauDecay(factor=0.1, patience=5)])
    """

    def __init__(
        self,
        factor: float = 0.1,
        patience: int = 10,
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_factor: float = 0.0,
        monitor: str = "val_accuracy",
        mode: str = "max",
    ):
        super().__init__()
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"`factor` must be in (0, 1]. Received: factor={factor}")
        for arg, value in (("patience", patience), ("cooldown", cooldown)):
            if int(value) != value or value < 0:
                raise ValueError(f"`{arg}` must be an integer >= 0. Received: {arg}={value}")
        if not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"`min_delta` must be finite and >= 0. Received: min_delta={min_delta}")
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"`min_factor` must be in [0, 1]. Received: min_factor={min_factor}")
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min'. Received: mode={mode!r}")
        self.factor = float(factor)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.cooldown = int(cooldown)
        self.min_factor = float(min_factor)
        self.monitor = monitor
        self.mode = mode
        self.schedule: PlateauSchedule | None = None
        self._warned = False

    def on_train_begin(self, logs=None):
        self.schedule = find_schedule(self.model.optimizer, PlateauSchedule)
        if self.schedule is None:
            raise ValueError(
                "PlateauDecay needs an optimizer whose learning rate is a PlateauSchedule (alone or inside "
                "Warmup or Replannable); for a float rate use keras.callbacks.ReduceLROnPlateau"
            )

    def improved(self, current: float, best: float | None) -> bool:
        if best is None:
            return True
        if self.mode == "max":
            return current - self.min_delta > best
        return current + self.min_delta < best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "learning_rate" not in logs:
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)
        current = logs.get(self.monitor)
        if current is None:
            if not self._warned:
                warnings.warn(
                    f"PlateauDecay watches `{self.monitor}`, which is not in the logs (validation data?); "
                    f"available: {', '.join(logs)}",
                    stacklevel=2,
                )
                self._warned = True
            return
        self.step(float(current))

    def step(self, current: float) -> None:
        """Apply the rule to one epoch's ``current`` value (what ``on_epoch_end`` does with the log)."""
        s = self.schedule
        if s.cooldown_counter > 0:
            s.cooldown_counter -= 1
            s.wait = 0
        if self.improved(current, s.best):
            s.best = current
            s.wait = 0
        elif s.cooldown_counter <= 0:
            s.wait += 1
            if s.wait >= self.patience:
                old = s.factor
                if old > np.float32(self.min_factor):
                    s.set_factor(max(old * self.factor, self.min_factor))
                    s.cooldown_counter = self.cooldown
                    s.wait = 0


@keras.saving.register_keras_serializable(package="callbacks")
class ExponentialRange(LearningRateSchedule):
    """Deprecated: ``find_lr`` now sweeps with Keras's ``ExponentialDecay``; kept (and registered as
    ``"callbacks>ExponentialRange"``) only so that files saved with it still load.

    ``min_lr * (max_lr / min_lr) ** (step / (steps - 1))``, which is
    ``ExponentialDecay(min_lr, decay_steps=steps - 1, decay_rate=max_lr / min_lr)``.
    """

    def __init__(self, min_lr: float, max_lr: float, steps: int):
        super().__init__()
        self.min_lr, self.max_lr, self.steps = float(min_lr), float(max_lr), int(steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return self.min_lr * (self.max_lr / self.min_lr) ** (step / max(1, self.steps - 1))

    def get_config(self) -> dict:
        return {"min_lr": self.min_lr, "max_lr": self.max_lr, "steps": self.steps}

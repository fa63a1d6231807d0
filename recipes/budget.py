"""Wall-clock budgets: measure the step time, plan the steps that fit, fit the schedule to the plan.

Cutting a long schedule short leaves the learning rate high when time runs out; the plan instead shrinks
(or stretches) the whole schedule, warmup and decay, so the run ends inside the budget with the schedule
completed. The budget covers everything after the data is in memory: building and compiling the model,
this calibration, training, validation, checkpoints and the final (test-time augmented) evaluation.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

CALIBRATION_STEPS = 30
SKIP_STEPS = 10  # the first step traces; the next ones run on prefetched batches
SAFETY = 0.9  # plan on 90% of the time left: step times on a shared 2-core machine wander by 10-15%


@dataclass
class BudgetPlan:
    budget_seconds: float
    epochs: int  # planned epochs of ``steps_per_epoch`` steps
    steps_per_epoch: int
    total_steps: int
    epoch_scale: float  # planned steps / the config's steps: how much the schedule was stretched
    seconds_per_step: float
    calibration_seconds: float
    reserved_seconds: float  # compile, per-epoch validation and saving, final evaluation
    configured_epochs: int
    configured_steps_per_epoch: int

    @property
    def epoch_length_scale(self) -> float:
        """Planned epochs per configured epoch: the factor for epoch-denominated lengths (warmup)."""
        return self.epochs / self.configured_epochs

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BudgetPlan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class _StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def _time_predict(model, x: np.ndarray, batch_size: int) -> float:
    """Seconds per image of ``model.predict`` (the first call traces and is not counted)."""
    x = x.astype(np.float32)
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    start = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    return (time.perf_counter() - start) / len(x)


def _time_epoch_end(model) -> float:
    """Seconds of what a run does at every epoch end besides validating: checkpoint, state, curves."""
    from recipes.atomic import write_json
    from recipes.checkpoint import save_model
    from recipes.plots import plot_history

    rows = [
        {"epoch": e, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, "learning_rate": 0.1}
        for e in (1, 2)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        save_model(model, Path(tmp) / "probe.keras")
        write_json(Path(tmp) / "state.json", {"history": rows})
        plot_history(rows, Path(tmp))
        return time.perf_counter() - start


def best_plan(seconds: float, step: float, per_epoch: float, steps_per_epoch: int) -> tuple[int, int]:
    """The most steps ``S`` (in ``E = ceil(S / steps_per_epoch)`` epochs) with ``S * step + E * per_epoch``
    within ``seconds``; ``(0, 1)`` when not even one step fits."""
    best = (0, 1)
    epochs = 1
    while epochs * per_epoch < seconds:
        steps = min(epochs * steps_per_epoch, math.floor((seconds - epochs * per_epoch) / step))
        if steps > (epochs - 1) * steps_per_epoch and steps > best[0]:
            best = (steps, epochs)
        if steps < epochs * steps_per_epoch:
            break  # more epochs only add overhead
        epochs += 1
    return best


def calibrate(
    model: keras.Model,
    train_ds,
    *,
    budget_seconds: float,
    elapsed_seconds: float,
    steps_per_epoch: int,
    configured_epochs: int,
    eval_images: np.ndarray,
    eval_batch_size: int,
    val_examples: int,
    final_eval_passes: int,
) -> BudgetPlan:
    """Time ``CALIBRATION_STEPS`` training steps on ``train_ds`` (weights and optimizer restored after),
    then plan the steps that fit in what is left of ``budget_seconds``.

    ``eval_images``: the test images (raw; a slice is timed). ``final_eval_passes``: forward passes over
    ``len(eval_images)`` test images at the end (one per TTA view). Raises ``ValueError`` when not even
    one step fits.
    """
    start = time.perf_counter()
    weights = [np.array(w) for w in model.get_weights()]
    optimizer_state = [np.array(v) for v in model.optimizer.variables]
    timer = _StepTimer()
    fit_start = time.perf_counter()
    model.fit(
        train_ds, steps_per_epoch=CALIBRATION_STEPS, epochs=1, verbose=0, callbacks=[timer], shuffle=False
    )
    gaps = np.diff([fit_start, *timer.ends])
    # The input pipeline prefetches while the first step traces, so the next few steps find their batches
    # ready: averaging only those underestimated a ResNet's steady step by a third. Skip them, and use
    # the mean, which counts the occasional wait for data that a median would hide.
    skip = SKIP_STEPS if len(gaps) > SKIP_STEPS + 2 else min(1, len(gaps) - 1)  # a tiny data set
    step = float(np.mean(gaps[skip:]))
    trace = max(0.0, float(gaps[0]) - step)  # the first step traces the training function
    per_image = _time_predict(model, eval_images[: max(2 * eval_batch_size, 1024)], eval_batch_size)
    epoch_end = _time_epoch_end(model)
    model.set_weights(weights)
    for variable, value in zip(model.optimizer.variables, optimizer_state):
        variable.assign(value)
    calibration = time.perf_counter() - start

    final_eval = per_image * len(eval_images) * final_eval_passes + epoch_end
    per_epoch = per_image * val_examples + epoch_end + 0.1  # validation, checkpoint, curves, monitors
    left = budget_seconds - elapsed_seconds - calibration - final_eval - 2 * trace  # train + eval traces
    configured_steps = configured_epochs * steps_per_epoch
    total, epochs = best_plan(left * SAFETY, step, per_epoch, steps_per_epoch)
    if total < 1:
        raise ValueError(
            f"a budget of {budget_seconds:.0f}s leaves no time to train: one step takes {step:.2f}s, the "
            f"final evaluation about {final_eval:.0f}s and set-up {elapsed_seconds + calibration:.0f}s; "
            "raise trainer.budget or lower the evaluation cost (trainer.tta=false, data.val_size=0)"
        )
    per = max(1, total // epochs)
    return BudgetPlan(
        budget_seconds=budget_seconds,
        epochs=epochs,
        steps_per_epoch=per,
        total_steps=per * epochs,
        epoch_scale=per * epochs / configured_steps,
        seconds_per_step=round(step, 5),
        calibration_seconds=round(calibration, 2),
        reserved_seconds=round(final_eval + epochs * per_epoch + 2 * trace, 2),
        configured_epochs=configured_epochs,
        configured_steps_per_epoch=steps_per_epoch,
    )


def planned_config(cfg, plan: BudgetPlan):
    """A copy of ``cfg`` whose epoch counts describe the plan: ``trainer.epochs`` planned epochs (of
    ``plan.steps_per_epoch`` steps each) and every epoch-denominated schedule length stretched by the
    same factor as the whole schedule."""
    planned = copy.deepcopy(cfg)
    per_config_epoch = plan.epoch_length_scale
    s = planned.schedule
    s.warmup_epochs = s.warmup_epochs * per_config_epoch
    s.step_epochs = max(1, round(s.step_epochs * per_config_epoch))
    s.inverse_time_k = s.inverse_time_k / per_config_epoch
    planned.trainer.epochs = plan.epochs
    return planned

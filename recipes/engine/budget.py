"""Wall-clock budgets: measure the step time, plan the steps that fit, fit the schedule to the plan.

Cutting a long schedule short leaves the learning rate high when time runs out; the plan instead shrinks
(or stretches) the whole schedule, warmup and decay, so the run ends inside the budget with the schedule
completed. The budget covers everything after the data is in memory: building and compiling the model,
this calibration, training, validation, checkpoints and the final (test-time augmented) evaluation.

A shared machine's speed wanders: calibration can catch a slow moment, and the machine can slow down mid-run.
:class:`BudgetKeeper` times every epoch and re-plans, in steps, when the steps left would overrun (fewer
steps; the last epoch may then end partway) or when clearly more of them fit (more steps, up to
``MAX_STRETCH`` times the calibrated epochs): the rest of the schedule (through
:class:`callbacks.Replannable`, and the lookahead ramp of :class:`recipes.engine.optimizers.LookaheadSGD`) is
compressed or stretched into them, so the run still ends in time with its schedule completed, and does not
leave a quarter of its budget unused.

The optimizer is built once, for the configured schedule: :func:`calibrate` times its steps, and
:func:`fit_schedule_to_plan` then sets the pace at which it reads that schedule so that it ends with the
plan. The calibration's steps are training steps: they stay in the model (``plan.calibration_steps``)
and count towards the plan, instead of being thrown away. The final evaluation's test-time augmentation
views are fitted to the budget too: the most views (of the configured ones) whose forward passes take at
most ``EVAL_SHARE`` of it (``plan.final_eval_passes``).
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from callbacks import Replannable, recompute_batch_norm, schedule_position, unwrap_optimizer
from callbacks.ema_validation import batch_norm_layers, variables_kept

CALIBRATION_STEPS = 30
SKIP_STEPS = 10  # the first step traces; the next ones run on prefetched batches
SAFETY = 0.9  # plan on 90% of the time left: step times on a shared 2-core machine wander by 10-15%
MAX_STRETCH = 2.0  # BudgetKeeper grows a plan to at most this many times its calibrated epochs
GROW_MARGIN = 0.05  # ... and only while this fraction of the budget stays spare (re-plans aim there)
GROW_MIN = 0.25  # ... and by at least this share of an epoch's steps (so that a plan does not creep)
PACE_EPOCHS = 3  # BudgetKeeper's pace: the median time of this many latest epochs
KEEP_SHARE = 0.25  # calibration steps stay as training when they are at most this share of the plan
EVAL_SHARE = 0.10  # the final evaluation's views may take at most this share of the budget


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
    final_eval_seconds: float = 0.0  # the final statistics, evaluation and save, part of reserved_seconds
    trace_seconds: float = 0.0  # the first training step's tracing, paid again by the first epoch
    replans: list[dict] = field(default_factory=list)  # BudgetKeeper's re-plans, in order
    schedule_steps: int = 0  # the configured schedule's length in its own steps (0: total_steps)
    calibration_steps: int = 0  # steps trained while calibrating, kept, and part of total_steps
    final_eval_passes: int = 0  # test-time augmentation views of the final evaluation (0: the config's)
    epoch_overhead_seconds: float = 0.0  # per epoch besides its steps: validation, checkpoint, curves

    @property
    def schedule_end(self) -> int:
        """Where the schedule ends, in its own steps (a plan saved before ``schedule_steps``: the plan's)."""
        return self.schedule_steps or self.total_steps

    @property
    def stop_epoch(self) -> int:
        """The epoch the run ends after: the planned one, or the last re-plan's."""
        return self.replans[-1]["epochs"] if self.replans else self.epochs

    @property
    def stop_steps(self) -> int:
        """The steps of the run's last epoch: a re-plan may end the run partway through it."""
        if self.replans:
            return self.replans[-1].get("last_epoch_steps") or self.steps_per_epoch
        return self.steps_per_epoch

    @property
    def last_epoch_share(self) -> float:
        """The share of a whole epoch that the run's last one trains."""
        return self.stop_steps / self.steps_per_epoch

    @property
    def planned_total_steps(self) -> int:
        """The step the run ends at: the planned one, or the last re-plan's."""
        return self.replans[-1]["total_steps"] if self.replans else self.total_steps

    @property
    def max_epochs(self) -> int:
        """The most epochs a re-plan may grow the plan to (the training loop's upper bound)."""
        return max(self.epochs, math.ceil(self.epochs * MAX_STRETCH))

    @property
    def epoch_length_scale(self) -> float:
        """Planned epochs per configured epoch: the factor for epoch-denominated lengths (warmup)."""
        return self.epochs / self.configured_epochs

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BudgetPlan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


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


def _time_bn_refresh(model: keras.Model, images: np.ndarray, batch_size: int) -> float:
    """Seconds per image of measuring batch norm's statistics again (:func:`callbacks.recompute_batch_norm`
    on one batch of ``images``, timed the second time, as the first pays one-off costs; the model's
    variables put back, random state included); 0 without images or batch norm."""
    if not batch_norm_layers(model) or not len(images):
        return 0.0
    batch = images[:batch_size]
    with variables_kept(model):
        recompute_batch_norm(model, batch, batch_size)
        start = time.perf_counter()
        recompute_batch_norm(model, batch, batch_size)
        seconds = time.perf_counter() - start
    return seconds / len(batch)


def _time_epoch_end(model) -> float:
    """Seconds of what a run does at every epoch end besides validating: checkpoint, state, curves."""
    from recipes.engine.atomic import write_json
    from recipes.engine.checkpoint import save_model
    from recipes.engine.plots import plot_history

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


def _time_steps(model: keras.Model, train_ds) -> tuple[float, float, int]:
    """Seconds per steady training step, the first step's extra (tracing) seconds, and the steps taken:
    ``CALIBRATION_STEPS``, or fewer when ``train_ds`` runs out (they train the model: the caller decides
    whether to keep them)."""
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
    return step, max(0.0, float(gaps[0]) - step), len(gaps)


class _SavedState:
    """The model's weights and its optimizer's variables, copied so that they can be put back."""

    def __init__(self, model: keras.Model):
        self.model = model
        self.weights = [np.array(w) for w in model.get_weights()]
        self.optimizer = [np.array(v) for v in model.optimizer.variables]

    def restore(self) -> None:
        self.model.set_weights(self.weights)
        for variable, value in zip(self.model.optimizer.variables, self.optimizer):
            variable.assign(value)


def _all_finite(model: keras.Model) -> bool:
    return all(np.isfinite(np.asarray(w, dtype=np.float64)).all() for w in model.get_weights())


def eval_views_that_fit(per_pass: float, allowed: tuple[int, ...], budget_seconds: float) -> int:
    """The most test-time augmentation views among ``allowed`` (the configured count, then the cheaper
    counts it falls back to) whose passes of ``per_pass`` seconds each take at most ``EVAL_SHARE`` of
    the budget; the fewest when none does."""
    for views in sorted(allowed, reverse=True):
        if views * per_pass <= EVAL_SHARE * budget_seconds:
            return views
    return min(allowed)


def best_plan(seconds: float, step: float, per_epoch: float, steps_per_epoch: int) -> tuple[int, int]:
    """The most steps ``S`` (in ``E = ceil(S / steps_per_epoch)`` epochs) with ``S * step + E * per_epoch``
    within ``seconds``; ``(0, 1)`` when not even one step fits."""
    steps = steps_that_fit(seconds, step, per_epoch, steps_per_epoch)
    return steps, max(1, math.ceil(steps / steps_per_epoch))


def steps_that_fit(
    seconds: float, step: float, per_epoch: float, steps_per_epoch: int, most: int | None = None
) -> int:
    """The most steps, at most ``most`` (None: no bound), that fit in ``seconds`` when each takes ``step``
    seconds and each epoch they start (``steps_per_epoch`` steps, the last one possibly partial) adds
    ``per_epoch``."""
    bound = math.inf if most is None else most
    epochs = range(1, math.ceil(most / steps_per_epoch) + 1) if most is not None else itertools.count(1)
    best = 0
    for n in epochs:
        steps = min(n * steps_per_epoch, bound, math.floor((seconds - n * per_epoch) / step))
        if steps <= (n - 1) * steps_per_epoch:
            break  # another epoch's overhead leaves fewer steps than the epochs before it hold
        best = steps
    return int(best)


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
    eval_views: tuple[int, ...] = (1,),
    refresh_images: np.ndarray | tuple = (),
    refresh_batch_size: int = 1,
) -> BudgetPlan:
    """Train ``CALIBRATION_STEPS`` steps on ``train_ds``, timing them, then plan the steps that fit in
    what is left of ``budget_seconds``.

    The calibration's steps stay trained (``plan.calibration_steps``, part of ``plan.total_steps``) unless
    they are more than ``KEEP_SHARE`` of the plan or left a weight non-finite: then the weights and the
    optimizer are put back as they were. ``train_ds`` should hold batches the training does not start
    with, so that kept steps do not repeat its first ones.

    ``eval_images``: the test images (raw; a slice is timed). ``eval_views``: the final evaluation's
    allowed forward passes over ``eval_images`` (one per test-time augmentation view): the configured
    count first, then the cheaper counts it may fall back to; the plan takes the most that fit within
    ``EVAL_SHARE`` of the budget (:func:`eval_views_that_fit`). ``refresh_images``: the training images
    the run measures batch norm's statistics on before that evaluation (``trainer.bn_refresh``), in batches
    of ``refresh_batch_size``; one batch is timed, and their time is reserved with the evaluation's.
    Raises ``ValueError`` when not even one step fits.
    """
    start = time.perf_counter()
    before = _SavedState(model)
    step, trace, kept = _time_steps(model, train_ds)
    per_image = _time_predict(model, eval_images[: max(2 * eval_batch_size, 1024)], eval_batch_size)
    epoch_end = _time_epoch_end(model)
    refresh = _time_bn_refresh(model, refresh_images, refresh_batch_size) * len(refresh_images)
    calibration = time.perf_counter() - start

    views = eval_views_that_fit(per_image * len(eval_images), tuple(eval_views), budget_seconds)
    final_eval = per_image * len(eval_images) * views + epoch_end + refresh
    per_epoch = per_image * val_examples + epoch_end + 0.1  # validation, checkpoint, curves, monitors
    left = budget_seconds - elapsed_seconds - calibration - final_eval - 2 * trace  # train + eval traces
    configured_steps = configured_epochs * steps_per_epoch
    total, epochs = best_plan(left * SAFETY, step, per_epoch, steps_per_epoch)
    if total < 1:
        before.restore()
        raise ValueError(
            f"a budget of {budget_seconds:.0f}s leaves no time to train: one step takes {step:.2f}s, the "
            f"final evaluation about {final_eval:.0f}s and set-up {elapsed_seconds + calibration:.0f}s; "
            "raise trainer.budget or lower the evaluation cost (trainer.tta=false, data.val_size=0)"
        )
    per = max(1, total // epochs)
    share = KEEP_SHARE * min(per * epochs + kept, configured_steps)
    if kept > share or not _all_finite(model):
        before.restore()  # too large a share of a tiny plan (or schedule) to train at its pace, or diverged
        kept = 0
    total_steps = per * epochs + kept
    return BudgetPlan(
        budget_seconds=budget_seconds,
        epochs=epochs,
        steps_per_epoch=per,
        total_steps=total_steps,
        epoch_scale=total_steps / configured_steps,
        seconds_per_step=round(step, 5),
        calibration_seconds=round(calibration, 2),
        reserved_seconds=round(final_eval + epochs * per_epoch + 2 * trace, 2),
        configured_epochs=configured_epochs,
        configured_steps_per_epoch=steps_per_epoch,
        final_eval_seconds=round(final_eval, 2),
        trace_seconds=round(trace, 2),
        schedule_steps=configured_steps,
        calibration_steps=kept,
        final_eval_passes=views,
        epoch_overhead_seconds=round(per_epoch, 3),
    )


def fit_schedule_to_plan(optimizer, plan: BudgetPlan) -> None:
    """Read the configured schedule at the pace that ends it at the plan's last step: the optimizer built
    for the configured epochs (and timed by :func:`calibrate`) is the one that trains, not a second one.
    Warmup and every other epoch-denominated length stretch with the whole schedule. Kept calibration
    steps read it at its own pace; the rest of it is spread over the plan's remaining steps."""
    optimizer = unwrap_optimizer(optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, Replannable):
        raise TypeError("a budget run's optimizer must read its schedule through callbacks.Replannable")
    done = plan.calibration_steps
    position = float(keras.ops.convert_to_numpy(schedule.position(done))) if done else 0.0
    schedule.set_pace(done, position, (plan.schedule_end - position) / (plan.total_steps - done))
    if hasattr(optimizer, "set_total_steps"):
        optimizer.set_total_steps(plan.total_steps)


def budget_report(model: keras.Model, plan: BudgetPlan, used_seconds: float, resumed: bool) -> dict:
    """How a budget was used: the plan, the seconds spent, and whether the schedule ran to its end."""
    steps_done, position = schedule_position(model.optimizer)
    end = plan.schedule_end
    return {
        **plan.as_dict(),
        "used_seconds": used_seconds if not resumed else None,  # a resumed run's clock restarted
        "within_budget": used_seconds <= plan.budget_seconds if not resumed else None,
        "steps_done": steps_done,
        "schedule_completed": position >= end - 1e-3 * end,
        "final_learning_rate": float(
            keras.ops.convert_to_numpy(unwrap_optimizer(model.optimizer).learning_rate)
        ),
    }


class FixedPlan:
    """A run without a budget: it ends after ``epochs``. Read, like a :class:`BudgetPlan`, through
    ``stop_epoch``, ``last_epoch_share`` and ``max_epochs`` (the progress output and fit's bound) and
    ``final_eval_passes`` (0: the configured views)."""

    final_eval_passes = 0
    last_epoch_share = 1.0  # every epoch whole

    def __init__(self, epochs: int):
        self.epochs = epochs

    @property
    def stop_epoch(self) -> int:
        return self.epochs

    @property
    def max_epochs(self) -> int:
        return self.epochs


class BudgetKeeper(keras.callbacks.Callback):
    """Keeps a budget run inside its budget, and using it, when the machine's speed changes after
    calibration.

    At every epoch end it compares the time left (budget minus elapsed minus the final evaluation) with what
    the remaining steps cost at the measured pace: the median of the last ``PACE_EPOCHS`` epochs, so that one
    odd epoch is ignored and a change that lasts two is followed (one epoch's time wanders by 10-15% on a
    shared machine; following the latest ones re-planned back and forth). When they would overrun, it
    re-plans; when more steps fit than are planned (at least ``GROW_MIN`` of an epoch more; calibration caught
    a slow moment) and at least two epochs of this session are timed, it re-plans too, up to
    ``plan.max_epochs``. A grown plan keeps ``GROW_MARGIN`` of the budget spare (a margin of the time left
    instead would shrink with it and grow the plan at every epoch end); a shrunk one keeps ``1 - SAFETY`` of
    the time left, the initial plan's margin, but at most that spare, so that it never invites a grow at the
    next epoch end. Re-plans count steps, not epochs: the run's last epoch may end partway
    (``plan.stop_steps``), so that a re-plan of a few long epochs does not leave most of one unused. Either
    way the rest of the learning-rate schedule (and of LookaheadSGD's ramp) is compressed or stretched into
    the new plan, so it still ends at its final value. A run whose next step cannot fit stops at once,
    schedule incomplete, with a warning. Each re-plan goes to ``on_replan`` (``plan.json`` and the log) and to
    ``plan.replans``.

    ``clock`` is the ``time.perf_counter()`` at which the budget started; ``None`` (a resumed run, whose
    earlier time is unknown) only ends the run at the planned or re-planned step. Run ``fit`` with
    ``epochs=plan.max_epochs``: the keeper stops it at ``plan.stop_epoch`` (after ``plan.stop_steps`` of
    its steps). The only per-step work is one comparison, in the last epoch. Each of ``listeners`` with an
    ``expect_epoch_steps(epoch, steps)`` method (:class:`callbacks.UpdateRatioLogger`) hears at that
    epoch's start that it will end early, so that what it measures at an epoch's last step is measured.
    """

    def __init__(
        self,
        plan: BudgetPlan,
        clock: float | None,
        on_replan: Callable[[dict], None] | None = None,
        listeners: Sequence = (),
    ):
        super().__init__()
        self.plan = plan
        self.clock = clock
        self.on_replan = on_replan
        self.listeners = [x for x in listeners if hasattr(x, "expect_epoch_steps")]
        self._costs: list[float] = []
        self._stop_after: int | None = None
        self._step_ends: list[tuple[int, float]] = []  # (step, when): the first and the latest

    def on_train_begin(self, logs=None):
        self._last = time.perf_counter()
        self._costs = []
        self._step_ends = []

    def on_epoch_begin(self, epoch, logs=None):
        last = epoch + 1 == self.plan.stop_epoch and self.plan.stop_steps < self.plan.steps_per_epoch
        self._stop_after = self.plan.stop_steps if last else None
        if last:
            for listener in self.listeners:
                listener.expect_epoch_steps(epoch, self.plan.stop_steps)

    def on_train_batch_end(self, batch, logs=None):
        if self._stop_after is not None and batch + 1 >= self._stop_after:
            self.model.stop_training = True  # fit ends this epoch here: validation and epoch end still run
        if not self._costs:  # this session's first epoch: time its steps after the first
            self._step_ends[1:] = [(batch, time.perf_counter())]

    def _first_epoch_cost(self, cost: float) -> float:
        """What this session's first epoch costs without the tracing it may have paid: a step that
        ``fit`` traced again (a resumed run's fresh model; a device-augmenting wrapper) and the validation
        step's first trace. Its steps after the first at their timed pace, plus the planned per-epoch
        overhead; the whole epoch's time when fewer than two steps were timed."""
        if len(self._step_ends) < 2 or self._step_ends[1][0] <= self._step_ends[0][0]:
            return cost
        (first, start), (last, end) = self._step_ends
        steps = (self.params or {}).get("steps") or self.plan.steps_per_epoch
        return (end - start) / (last - first) * steps + self.plan.epoch_overhead_seconds

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        cost = now - self._last
        if not self._costs:
            cost = self._first_epoch_cost(cost)
        self._costs.append(cost)
        self._last = now
        done = epoch + 1
        if self.clock is not None and done < self.plan.stop_epoch:
            self._check(done, now)
        if done >= self.plan.stop_epoch:
            self.model.stop_training = True

    def _check(self, done: int, now: float) -> None:
        plan = self.plan
        pace = max(float(np.median(self._costs[-PACE_EPOCHS:])), 1e-6)
        overhead = min(plan.epoch_overhead_seconds, 0.5 * pace)  # at least half an epoch is its steps
        step_seconds = (pace - overhead) / plan.steps_per_epoch
        left = plan.budget_seconds - (now - self.clock) - plan.final_eval_seconds
        step, _ = schedule_position(unwrap_optimizer(self.model.optimizer))
        planned = plan.planned_total_steps - step
        most = (plan.max_epochs - done) * plan.steps_per_epoch

        def fit_in(seconds: float) -> int:
            return steps_that_fit(seconds, step_seconds, overhead, plan.steps_per_epoch, most)

        spare = GROW_MARGIN * plan.budget_seconds
        if fit_in(left) < planned:  # keep the initial plan's margin on what is left, at most the spare
            self._replan(done, fit_in(left - min(spare, (1 - SAFETY) * left)), pace)
        elif fit_in(left - spare) - planned >= GROW_MIN * plan.steps_per_epoch and len(self._costs) > 1:
            self._replan(done, fit_in(left - spare), pace)  # grow on two epochs' evidence, not one

    def _replan(self, done: int, steps_left: int, pace: float) -> None:
        optimizer = unwrap_optimizer(self.model.optimizer)
        schedule = getattr(optimizer, "_learning_rate", None)
        step, position = schedule_position(optimizer)
        if steps_left and isinstance(schedule, Replannable):
            schedule.set_pace(step, position, (self.plan.schedule_end - position) / steps_left)
            if hasattr(optimizer, "set_total_steps"):
                optimizer.set_total_steps(step + steps_left)
        epochs_left = math.ceil(steps_left / self.plan.steps_per_epoch)
        record = {
            "after_epoch": done,
            "epochs": done + epochs_left,
            "total_steps": step + steps_left,
            # none left: the epoch just done, whole, was the last (so a resume trains it whole)
            "last_epoch_steps": steps_left - (epochs_left - 1) * self.plan.steps_per_epoch
            if steps_left
            else self.plan.steps_per_epoch,
            "seconds_per_epoch": round(pace, 2),
            "slower": step + steps_left < self.plan.planned_total_steps,
        }
        self.plan.replans.append(record)
        if not steps_left:
            warnings.warn(
                f"trainer.budget: at {pace:.0f}s per epoch not even one more step fits; stopping after "
                f"epoch {done} with the schedule incomplete",
                stacklevel=2,
            )
        if self.on_replan is not None:
            self.on_replan(record)

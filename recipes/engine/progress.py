"""What a run prints while it trains: the banners, the progress bar, the time left, the budget's re-plans.

Each reads the run's plan object (:class:`recipes.engine.budget.BudgetPlan`, or ``FixedPlan`` without a
budget) through ``plan.stop_epoch``, which a budget's keeper may move while ``fit`` runs.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path

import keras

from recipes.engine.atomic import write_json

SAMPLE_BANNER = """\
==============================================================================
 Training on the BUNDLED CIFAR-10 SAMPLE ({n_train} training images), not the
 full data set: accuracy will be far below full-CIFAR-10 figures. Point at
 the real data with data.path=/path/to/cifar-10-python.tar.gz (or put it in
 ~/.keras/datasets/). Reason: {reason}
=============================================================================="""


def duration_text(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def plan_line(plan, batch_size: int) -> str:
    """The budget's plan, as the run announces it."""
    kept = f"{plan.calibration_steps} trained while calibrating and " if plan.calibration_steps else ""
    views = plan.final_eval_passes
    evaluation = "the final evaluation" + (f" ({views} view{'s' if views > 1 else ''})" if views else "")
    return (
        f"Budget {plan.budget_seconds:.0f}s: {plan.seconds_per_step * 1000:.0f} ms per step of {batch_size}, "
        f"planned {plan.total_steps} steps ({kept}{plan.epochs} epochs of {plan.steps_per_epoch}, "
        f"{plan.epoch_scale:.2f}x the configured schedule), {plan.reserved_seconds:.0f}s kept for "
        f"compiling, validation, checkpoints and {evaluation}"
    )


def replan_line(record: dict, steps_per_epoch: int | None = None) -> str:
    """One re-plan of the budget's keeper, as the run announces it (with ``steps_per_epoch``, a last
    epoch that ends partway says so)."""
    speed = "slower" if record["slower"] else "faster"
    pace = f"\nBudget: epochs now take {record['seconds_per_epoch']:.0f}s, {speed} than planned"
    if record["epochs"] == record["after_epoch"]:
        return f"{pace}; no further step fits: stopping now, schedule incomplete"
    how = "compressed" if record["slower"] else "stretched"
    part = record.get("last_epoch_steps")
    partial = part and steps_per_epoch and part != steps_per_epoch
    partway = f", {part} of its {steps_per_epoch} steps" if partial else ""
    return (
        f"{pace}; re-planned to end after epoch {record['epochs']}{partway} ({record['total_steps']} "
        f"steps in all) with the rest of the schedule {how} to fit"
    )


class ReplanReporter(keras.callbacks.Callback):
    """After the budget's keeper (put it right after): a new re-plan goes to ``plan.json`` and the log."""

    def __init__(self, plan, plan_path: Path, echo: Callable[[str], None]):
        super().__init__()
        self.plan, self.plan_path, self.echo = plan, Path(plan_path), echo
        self._reported = len(plan.replans)

    def on_epoch_end(self, epoch, logs=None):
        for record in self.plan.replans[self._reported :]:
            write_json(self.plan_path, self.plan.as_dict())
            self.echo(replan_line(record, self.plan.steps_per_epoch))
        self._reported = len(self.plan.replans)


class CompactProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar without the per-layer monitor keys (``dead_fraction/<layer>`` and the like),
    which stay in History, history.csv and TensorBoard; its "Epoch k/N" shows ``plan.stop_epoch``, the
    run's last epoch, which a budget's re-plan may move while ``fit`` runs to an upper bound."""

    def __init__(self, plan):
        super().__init__()
        self.plan = plan

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs = self.plan.stop_epoch
        super().on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items() if "/" not in k})


class EtaPrinter(keras.callbacks.Callback):
    """After the first epoch of a session, print how long the remaining epochs should take."""

    def __init__(self, plan, first_epoch: int, echo: Callable[[str], None]):
        super().__init__()
        self.plan, self.first_epoch, self.echo = plan, first_epoch, echo
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        left = self.plan.stop_epoch - epoch - 1
        if epoch == self.first_epoch and left > 0:
            took = time.perf_counter() - self._start
            eta = duration_text(took * (left - 1 + self.plan.last_epoch_share))  # a re-plan may cut it
            self.echo(
                f"epoch {epoch + 1} took {duration_text(took)}: about {eta} left for the remaining "
                f"{left} epochs"
            )

"""When an epoch-end monitor measures: on a cadence of epochs, within a share of the training time."""

from __future__ import annotations

import math
from collections.abc import Callable
from time import perf_counter
from typing import TypeVar

T = TypeVar("T")

# The share of a fit's wall time one probe monitor may spend measuring. Three of them on by default (dead
# units, gradient norms, clean training accuracy) then cost at most ~1.5% together, inside the 2% the
# project allows its monitors at any epoch length.
MAX_OVERHEAD = 0.005

NOT_MEASURED = math.nan  # the value of a monitor's keys at an epoch it skipped


def check_cadence(every_n_epochs: int, max_overhead: float | None) -> None:
    """``ValueError`` naming the bad argument, in Keras's wording."""
    if int(every_n_epochs) != every_n_epochs or every_n_epochs < 1:
        raise ValueError(
            f"`every_n_epochs` must be an integer >= 1. Received: every_n_epochs={every_n_epochs}"
        )
    if max_overhead is not None and not 0.0 < max_overhead <= 1.0:
        raise ValueError(
            f"`max_overhead` must be in (0, 1] (a share of the training time) or None (no limit). "
            f"Received: max_overhead={max_overhead}"
        )


class EpochCadence:
    """Decides at each epoch end whether a monitor measures, and keeps its cost within ``max_overhead``.

    A monitor measures at the first epoch of every ``fit`` (a problem shows at once), at every
    ``every_n_epochs``-th epoch, and wherever the caller forces it; but a cadence epoch is skipped when the
    time the monitor has spent measuring since ``fit`` began, plus its last measurement's cost, would exceed
    ``max_overhead`` of that time. Long epochs are then all measured, short ones every few epochs; the
    measurement is never stale (a skipped epoch's keys are ``NaN``, "not measured", not the last value).
    Outside ``fit`` (no :meth:`start`), every call measures.
    """

    def __init__(self, every_n_epochs: int = 1, max_overhead: float | None = MAX_OVERHEAD):
        check_cadence(every_n_epochs, max_overhead)
        self.every_n_epochs = int(every_n_epochs)
        self.max_overhead = max_overhead
        self.spent = 0.0  # seconds measuring since start()
        self._start: float | None = None
        self._last_cost = 0.0
        self._measured_since_start = False

    def start(self) -> None:
        """Call at ``on_train_begin``: the clock of the share starts, and the next epoch is measured."""
        self._start = perf_counter()
        self.spent = 0.0
        self._last_cost = 0.0
        self._measured_since_start = False

    def due(self, epoch: int, *, force: bool = False) -> bool:
        """Whether to measure at the end of ``epoch`` (0-based)."""
        if force or self._start is None or not self._measured_since_start:
            return True
        if epoch % self.every_n_epochs:
            return False
        if self.max_overhead is None:
            return True
        elapsed = perf_counter() - self._start
        return self.spent + self._last_cost <= self.max_overhead * elapsed

    def timed(self, measure: Callable[[], T]) -> T:
        """``measure()``, with its wall time counted against the share."""
        began = perf_counter()
        try:
            return measure()
        finally:
            self._last_cost = perf_counter() - began
            self.spent += self._last_cost
            self._measured_since_start = True


def unmeasured(latest: dict[str, float]) -> dict[str, float]:
    """The keys of the last measurement, each ``NaN``: a skipped epoch keeps its columns, not its values."""
    return dict.fromkeys(latest, NOT_MEASURED)

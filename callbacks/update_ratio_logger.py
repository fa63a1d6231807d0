"""Log the update-to-weight ratio of every kernel: the lecture's ~1e-3 rule of thumb."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from callbacks._cadence import unmeasured
from callbacks.optimizer_utils import (
    current_learning_rate,
    learning_rate_peak,
    learning_rate_rising,
    optimizer_steps,
    plain_update,
    rate_sized_update,
)

PLAIN_SEARCH = 8  # steps searched back from an epoch's last for one that is the optimizer's update alone


class UpdateRatioLogger(keras.callbacks.Callback):
    """``||W_after - W_before|| / ||W_before||`` over one optimizer step, for every layer's kernels.

    The kernels (trainable weights of rank >= 2, nested layers' included) are copied before a step and
    compared after it: once per epoch, over the epoch's last step (or its second when the number of steps
    per epoch is unknown), and, with ``every_n_steps``, also over steps 1, n+1, 2n+1, ... A callback that
    ends an epoch early (a wall-clock budget's keeper) announces it with :meth:`expect_epoch_steps`, so that
    the measurement falls on that epoch's real last step. A step on which the optimizer also moves the
    weights by other means (Keras's ``use_ema`` overwrite, a lookahead sync: see
    :func:`callbacks.plain_update`) is not measured: the once-per-epoch measurement moves to the latest
    plain step before it, a periodic one to the next. Biases and
    batch-norm parameters are left out: they start at zero or one, which makes the ratio meaningless.
    At each epoch end it writes ``logs["update_ratio/<layer>"]`` and ``logs["update_ratio"]`` (the median
    over layers), each the median of that epoch's measurements: never a value measured in an earlier
    epoch (an epoch that measured nothing gets ``NaN``).

    It warns once when the median leaves ``healthy_range`` (around 1e-3 is healthy: much lower and
    learning is too slow, much higher and it is unstable), except while the learning rate is still rising
    at the measured step (a warmup: the ratio grows with it) and, for a low ratio, when the rate has
    decayed and the schedule's peak rate so far would have given a healthy ratio (the update scales with
    the rate: that is the schedule annealing, as intended). The warning judges the median over the layers
    whose step the gradient sizes: a kernel whose optimizer fixes its step's size by the rate (Muon steps
    in ``LookaheadSGD``: :func:`callbacks.rate_sized_update`) is logged but not judged, and with only such
    layers nothing is. Only ``on_train_batch_begin`` is used among
    the batch hooks, so Keras keeps its asynchronous batch-end dispatch; a measurement costs two copies
    of the kernels.

    Args:
        every_n_steps: also measure every this many steps (None: once per epoch).
        healthy_range: ``(low, high)`` bounds of the median outside which it warns.

    Example:
        >>> model.fit(x, y, callbacks=[UpdateRatioLogger()])
    """

    def __init__(self, every_n_steps: int | None = None, healthy_range: tuple[float, float] = (1e-4, 1e-2)):
        super().__init__()
        if every_n_steps is not None and (int(every_n_steps) != every_n_steps or every_n_steps < 1):
            raise ValueError(
                f"`every_n_steps` must be an integer >= 1 or None. Received: every_n_steps={every_n_steps}"
            )
        low, high = healthy_range
        if not 0 < low < high:
            raise ValueError(
                f"`healthy_range` must be (low, high) with 0 < low < high. Received: {healthy_range}"
            )
        self.every_n_steps = every_n_steps
        self.healthy_range = (float(low), float(high))
        self.latest: dict[str, float] = {}
        self._kernels: dict[str, list] = {}
        self._judged: list[str] = []  # layers whose ratio the healthy range applies to
        self._before: dict[str, list[np.ndarray]] | None = None
        self._epoch: list[dict[str, float]] = []  # this epoch's measurements
        self._step = 0
        self._warned = False
        self._peak_lr = 0.0
        self._measured_lr = 0.0
        self._warming_up = False
        self._epoch_index = 0
        self._short_epochs: dict[int, int] = {}  # epoch -> its steps, where announced
        self._first_step = 0  # the optimizer's iterations at this epoch's first batch
        self._epoch_batch: int | None = None  # this epoch's once-per-epoch measurement (at its first batch)
        self._periodic_due = False  # a periodic measurement waits for a plain step

    def expect_epoch_steps(self, epoch: int, steps: int) -> None:
        """Epoch ``epoch`` (0-based, as ``fit`` counts) will end after ``steps`` steps, before ``fit``'s
        ``steps_per_epoch``: the epoch's measurement is then taken over its step ``steps``. Call it before
        that step, e.g. from the stopping callback's ``on_epoch_begin``; the order of the callbacks does
        not matter."""
        if int(steps) != steps or steps < 1:
            raise ValueError(f"`steps` must be an integer >= 1. Received: steps={steps}")
        self._short_epochs[int(epoch)] = int(steps)

    def on_train_begin(self, logs=None):
        self._collect_kernels()
        self._step = 0
        self._before = None
        self._short_epochs = {}  # announcements are for this fit only

    def measure_step(self, step) -> dict[str, float]:
        """Ratios over one call of ``step`` outside ``fit``, e.g. ``lambda: model.train_on_batch(x, y)``.

        Call :meth:`set_model` first.
        """
        self._collect_kernels()
        self._before = self._snapshot()
        step()
        self.latest = self._finish() or self.latest
        return self.latest

    def _collect_kernels(self) -> None:
        self._kernels = {}
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            weights = [w for w in layer._trainable_variables if len(w.shape) >= 2]
            if weights:
                self._kernels[layer.name] = weights
        optimizer = getattr(self.model, "optimizer", None)
        self._judged = [
            name
            for name, weights in self._kernels.items()
            if not any(rate_sized_update(optimizer, w) for w in weights)
        ]

    def _snapshot(self) -> dict[str, list[np.ndarray]]:
        return {
            name: [keras.ops.convert_to_numpy(w).astype(np.float64) for w in ws]
            for name, ws in self._kernels.items()
        }

    def _finish(self) -> dict[str, float]:
        """The ratios against the snapshot taken one step ago ({} when there is none)."""
        if self._before is None:
            return {}
        after = self._snapshot()
        ratios = {}
        for name, old in self._before.items():
            delta = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after[name], old)))
            norm = np.sqrt(sum(np.sum(b**2) for b in old))
            if norm > 0:
                ratios[f"update_ratio/{name}"] = float(delta / norm)
        self._before = None
        if ratios:
            ratios["update_ratio"] = float(np.median(list(ratios.values())))
        return ratios

    def _due(self, batch: int) -> bool:
        if self._epoch_batch is None:  # the epoch's first batch: one read of the step counter per epoch
            self._first_step = optimizer_steps(self.model.optimizer) - batch
            self._epoch_batch = self._once_per_epoch_batch()
        n = self.every_n_steps
        self._periodic_due = self._periodic_due or (n is not None and self._step % n == 1 % n)
        if batch == self._epoch_batch:
            self._periodic_due = False
            return True
        if self._periodic_due and plain_update(self.model.optimizer, self._first_step + batch):
            self._periodic_due = False
            return True
        return False

    def _once_per_epoch_batch(self) -> int:
        """The epoch's last batch (its second when the epoch's length is unknown), or the latest plain
        update before it: at most ``PLAIN_SEARCH`` steps back."""
        steps = self._short_epochs.get(self._epoch_index) or (self.params or {}).get("steps")
        last = steps - 1 if steps else 1
        for batch in range(last, max(last - PLAIN_SEARCH, -1), -1):
            if plain_update(self.model.optimizer, self._first_step + batch):
                return batch
        return last

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_index = epoch
        self._epoch_batch = None
        self._epoch = []
        self._warming_up = False

    def on_train_batch_begin(self, batch, logs=None):
        # Measuring in the begin hook only: the previous step has finished, and Keras still dispatches
        # batch-end hooks asynchronously since this callback does not override them.
        if self._before is not None:
            self._keep(self._finish())
        if self._due(batch):
            self._before = self._snapshot()
            self._measured_lr = current_learning_rate(self.model.optimizer, last_step=False)
            self._peak_lr = max(self._peak_lr, learning_rate_peak(self.model.optimizer))
            self._warming_up = self._warming_up or learning_rate_rising(self.model.optimizer)
        self._step += 1

    def _keep(self, ratios: dict[str, float]) -> None:
        if ratios:
            self._epoch.append(ratios)

    def on_epoch_end(self, epoch, logs=None):
        self._keep(self._finish())
        logs = logs if logs is not None else {}
        if not self._epoch:
            logs.update(unmeasured(self.latest))
            return
        self.latest = {
            key: float(np.median([m[key] for m in self._epoch if key in m])) for key in self._epoch[-1]
        }
        logs.update(self.latest)
        judged = [
            self.latest[key] for key in (f"update_ratio/{n}" for n in self._judged) if key in self.latest
        ]
        if judged:
            n, total = len(judged), len(self._kernels)
            over = "" if n == total else f" (over {n} of {total} layers; the rate fixes the others' step)"
            self._check(float(np.median(judged)), over)

    def _check(self, median: float, over: str = "") -> None:
        low, high = self.healthy_range
        # A low ratio at a decayed rate is the schedule annealing when the schedule's peak rate so far would
        # have given a healthy one (the update scales with the rate); only then is the rate itself too low.
        lr = self._measured_lr
        annealing = median < low and self._peak_lr > lr and (lr <= 0 or median * self._peak_lr / lr >= low)
        if self._warned or low <= median <= high or annealing or self._warming_up:
            return
        self._warned = True
        advice = "raise the learning rate" if median < low else "lower the learning rate"
        warnings.warn(
            f"UpdateRatioLogger: median update/weight ratio {median:.1e}{over} is outside "
            f"{low:.0e}..{high:.0e} (about 1e-3 is healthy): {advice}.",
            stacklevel=3,
        )

"""Log the update-to-weight ratio of every kernel: the lecture's ~1e-3 rule of thumb."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from callbacks.optimizer_utils import current_learning_rate

ANNEALED = 0.1  # a learning rate below this fraction of the run's peak: the schedule's decay tail


class UpdateRatioLogger(keras.callbacks.Callback):
    """``||W_after - W_before|| / ||W_before||`` over one optimizer step, for every layer's kernels.

    Every ``every_n_steps`` steps the kernels (trainable weights of rank >= 2) are copied before a step and
    compared after it. Biases and batch-norm parameters are left out: they start at zero or one, which
    makes the ratio meaningless. Writes ``logs["update_ratio/<layer>"]`` (the last measurement) and
    ``logs["update_ratio"]`` (their median) at each epoch end, and warns once when the median leaves
    ``healthy_range`` (around 1e-3 is healthy: much lower and learning is too slow, much higher and it is
    unstable). A low ratio while the learning rate has decayed below a tenth of its peak so far is the
    schedule annealing, as intended, and gets no warning. Only ``on_train_batch_begin`` is used, so Keras
    keeps its asynchronous batch-end dispatch.

    Args:
        every_n_steps: steps between measurements, taken over steps 1, n+1, 2n+1, ... (step 0 is
            skipped: a warmup starts at a rate of zero).
        healthy_range: ``(low, high)`` bounds of the median outside which it warns.

    Example:
        >>> model.fit(x, y, callbacks=[UpdateRatioLogger(every_n_steps=100)])
    """

    def __init__(self, every_n_steps: int = 100, healthy_range: tuple[float, float] = (1e-4, 1e-2)):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be >= 1. Received: every_n_steps={every_n_steps}")
        self.every_n_steps = every_n_steps
        self.healthy_range = tuple(healthy_range)
        self.latest: dict[str, float] = {}
        self._kernels: dict[str, list] = {}
        self._before: dict[str, list[np.ndarray]] | None = None
        self._step = 0
        self._warned = False
        self._peak_lr = 0.0
        self._measured_lr = 0.0

    def on_train_begin(self, logs=None):
        self._collect_kernels()
        self._step = 0
        self._before = None

    def measure_step(self, step) -> dict[str, float]:
        """Ratios over one call of ``step`` outside ``fit``, e.g. ``lambda: model.train_on_batch(x, y)``.

        Call :meth:`set_model` first.
        """
        self._collect_kernels()
        self._before = self._snapshot()
        step()
        self._finish()
        return self.latest

    def _collect_kernels(self) -> None:
        self._kernels = {}
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            weights = [w for w in layer._trainable_variables if len(w.shape) >= 2]
            if weights:
                self._kernels[layer.name] = weights

    def _snapshot(self) -> dict[str, list[np.ndarray]]:
        return {
            name: [keras.ops.convert_to_numpy(w).astype(np.float64) for w in ws]
            for name, ws in self._kernels.items()
        }

    def _finish(self) -> None:
        """Compare the kernels with the snapshot taken one step ago."""
        if self._before is None:
            return
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
            self.latest = ratios

    def on_train_batch_begin(self, batch, logs=None):
        # Measuring in the begin hook only: the previous step has finished, and Keras still dispatches
        # batch-end hooks asynchronously since this callback does not override them.
        if self._before is not None:
            self._finish()
        if self._step % self.every_n_steps == 1 % self.every_n_steps:
            self._before = self._snapshot()
            self._measured_lr = current_learning_rate(self.model.optimizer, last_step=False)
            self._peak_lr = max(self._peak_lr, self._measured_lr)
        self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        self._finish()
        if logs is None or not self.latest:
            return
        logs.update(self.latest)
        median = self.latest["update_ratio"]
        low, high = self.healthy_range
        annealing = median < low and self._measured_lr < ANNEALED * self._peak_lr
        if not self._warned and not low <= median <= high and not annealing:
            self._warned = True
            advice = "raise the learning rate" if median < low else "lower the learning rate"
            warnings.warn(
                f"UpdateRatioLogger: median update/weight ratio {median:.1e} is outside "
                f"{low:.0e}..{high:.0e} (about 1e-3 is healthy): {advice}.",
                stacklevel=2,
            )

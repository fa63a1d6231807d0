"""The learning-rate range test: sweep the rate upwards on a copy of the model and watch the loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras.optimizers.schedules import ExponentialDecay

from callbacks._util import save_figure
from callbacks.optimizer_utils import current_learning_rate, unwrap_optimizer


@dataclass
class LRFinderResult:
    """Rates tried, the batch losses, their smoothed curve and the conclusions drawn from them."""

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float  # a rate well inside the falling region
    falling_range: tuple[float, float]  # rates over which the smoothed loss falls
    diverged_at: float | None  # the rate at which the loss exploded, if it did

    def plot(self, path: str | Path) -> Path:
        """Loss against learning rate on a log axis, with the falling region and the suggestion."""
        from matplotlib.figure import Figure  # the object API: no pyplot, no backend switch

        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.subplots()
        ax.plot(self.learning_rates, self.losses, alpha=0.3, label="batch loss")
        ax.plot(self.learning_rates, self.smoothed, label="smoothed")
        ax.axvspan(*self.falling_range, color="tab:green", alpha=0.1, label="loss falls")
        ax.axvline(self.suggestion, color="tab:red", ls="--", label=f"suggested {self.suggestion:.2g}")
        finite = self.smoothed[np.isfinite(self.smoothed)]
        if finite.size:
            ax.set_ylim(finite.min() * 0.9, min(finite.max(), finite[0] * 3) * 1.05)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return save_figure(fig, path)


def _range_schedule(min_lr: float, max_lr: float, steps: int) -> ExponentialDecay:
    """The range test's sweep, ``min_lr * (max_lr / min_lr) ** (step / (steps - 1))``: Keras's
    ``ExponentialDecay`` with a rate above 1, so that it reaches ``max_lr`` at the last step."""
    return ExponentialDecay(min_lr, decay_steps=max(1, steps - 1), decay_rate=max_lr / min_lr)


def find_lr(
    model: keras.Model,
    x,
    y=None,
    *,
    min_lr: float = 1e-6,
    max_lr: float = 10.0,
    steps: int = 200,
    batch_size: int = 64,
    smoothing: float = 0.9,
    divergence_factor: float = 4.0,
    seed: int = 0,
) -> LRFinderResult:
    """Run the range test on a clone of ``model`` (its weights and optimizer are left untouched).

    The rate rises exponentially from ``min_lr`` to ``max_lr`` over ``steps`` steps (Keras's
    ``ExponentialDecay`` with ``decay_rate = max_lr / min_lr > 1``; batches drawn from
    ``x, y``, cycling when needed); the test stops when the smoothed loss exceeds ``divergence_factor``
    times its minimum or becomes non-finite. The falling region spans the rates where the smoothed loss
    is still descending towards its minimum; the suggestion is the rate of steepest descent, capped at a
    tenth of the rate at the minimum (the usual rule: well below where the loss turns up).

    ``model`` must be compiled (its loss and optimizer class are reused). ``x`` is an array (with ``y``)
    or a ``tf.data.Dataset`` of ``(x, y)`` batches.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr. Received: min_lr={min_lr}, max_lr={max_lr}")
    if steps < 10:
        raise ValueError(f"`steps` must be >= 10. Received: steps={steps}")
    if model.optimizer is None or getattr(model, "loss", None) is None:
        raise ValueError("find_lr needs a compiled model: call model.compile(optimizer, loss) first")
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    optimizer = unwrap_optimizer(model.optimizer)
    config = optimizer.get_config()
    config["learning_rate"] = _range_schedule(min_lr, max_lr, steps)
    clone.compile(optimizer=type(optimizer).from_config(config), loss=model.loss)
    batches = _batches(x, y, batch_size, seed)

    rates, losses, smoothed = [], [], []
    avg, best, diverged_at = 0.0, math.inf, None
    for step in range(steps):
        xb, yb = next(batches)
        loss = float(clone.train_on_batch(xb, yb, return_dict=True)["loss"])
        rate = current_learning_rate(clone.optimizer)  # the rate this step applied, read back
        rates.append(rate)
        losses.append(loss)
        if not math.isfinite(loss):
            smoothed.append(math.nan)
            diverged_at = rate
            break
        avg = smoothing * avg + (1 - smoothing) * loss
        value = avg / (1 - smoothing ** (step + 1))  # bias-corrected exponential average
        smoothed.append(value)
        best = min(best, value)
        if step > 10 and value > divergence_factor * best:
            diverged_at = rate
            break
    rates_a, losses_a, smooth_a = map(np.asarray, (rates, losses, smoothed))
    suggestion, falling = _analyse(rates_a, smooth_a)
    return LRFinderResult(rates_a, losses_a, smooth_a, suggestion, falling, diverged_at)


def _analyse(rates: np.ndarray, smoothed: np.ndarray) -> tuple[float, tuple[float, float]]:
    finite = np.isfinite(smoothed)
    r, s = rates[finite], smoothed[finite]
    lowest = int(np.argmin(s))
    # falling region: from where the loss has dropped 2% of its total fall below its start, to the minimum
    drop = s[0] - s[lowest]
    start = int(np.argmax(s <= s[0] - 0.02 * drop)) if drop > 0 else 0
    start = min(start, lowest)
    falling = (float(r[start]), float(r[lowest]))
    slopes = np.gradient(s[: lowest + 1], np.log(r[: lowest + 1])) if lowest >= 2 else np.array([0.0])
    steepest = float(r[int(np.argmin(slopes))])
    suggestion = min(steepest, float(r[lowest]) / 10) if lowest > 0 else float(r[0])
    suggestion = max(suggestion, falling[0])
    return suggestion, falling


def _batches(x, y, batch_size: int, seed: int):
    """Endless batches: cycle a dataset, or draw seeded random batches from arrays."""
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        while True:
            yield from x
    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
        yield x[idx], y[idx]

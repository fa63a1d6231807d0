"""Stop a diverging run early, keep the last finite weights, and say what to do."""

from __future__ import annotations

import gc
import math
import warnings

import keras
import numpy as np

from callbacks.ema_validation import ema_pairs
from callbacks.optimizer_utils import current_learning_rate


class NaNGuard(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN/inf or has exploded, with usable weights.

    Keras passes batch hooks the running mean of the loss since the epoch began, which dilutes a spike;
    the guard recovers each batch's own loss from consecutive means (``k*m_k - (k-1)*m_{k-1}``). It stops
    when that loss is not finite, or exceeds ``explosion_factor`` times the first batch loss of the run
    (divergence caught before the NaN), or when the weights themselves are no longer finite while the loss
    still is (a huge learning rate overflows them in one step, and a batch loss is measured before its
    step): the weights are checked after the run's first step, at every snapshot and at each epoch end.
    It then restores the newest weight snapshot that is finite (snapshots are taken every
    ``snapshot_every_n_steps`` steps, so at most that many steps are lost; they include the optimizer's
    moving averages of the weights under ``use_ema``, which ``fit`` puts in the model when it stops),
    records where and why it stopped in :attr:`stop_info`, and warns with advice.

    Unlike Keras's ``TerminateOnNaN`` it also keeps ``BackupAndRestore`` from deleting the last good
    backup when it stops the run (keras#21771), so the run can be resumed after fixing the cause.

    Args:
        explosion_factor: stop when a batch loss exceeds this multiple of the initial loss.
        snapshot_every_n_steps: steps between copies of the weights kept for restoring.
        raise_error: raise ``TrainingDiverged`` after restoring instead of stopping quietly.

    Attributes:
        stopped: whether the guard stopped the run.
        stop_info: ``{"epoch", "step", "loss", "reason", "advice"}`` when it did (``reason``: nan, inf,
            exploded or overflow; ``step`` is 0-based in the epoch, ``epoch`` 0-based, as Keras counts).

    Example:
        >>> guard = NaNGuard()
        >>> model.fit(x, y, callbacks=[guard])
        >>> if guard.stopped: print(guard.stop_info["advice"])
    """

    def __init__(
        self, explosion_factor: float = 10.0, snapshot_every_n_steps: int = 50, raise_error: bool = False
    ):
        super().__init__()
        if not explosion_factor > 1.0:
            raise ValueError(f"`explosion_factor` must be > 1. Received: explosion_factor={explosion_factor}")
        if snapshot_every_n_steps < 1:
            raise ValueError(
                "`snapshot_every_n_steps` must be >= 1. "
                f"Received: snapshot_every_n_steps={snapshot_every_n_steps}"
            )
        self.explosion_factor = float(explosion_factor)
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.raise_error = raise_error
        self.stopped = False
        self.stop_info: dict | None = None
        self.initial_loss: float | None = None
        self._snapshots: list[list[np.ndarray]] = []
        self._prev = (0, 0.0)  # (batches seen this epoch, running mean) at the previous hook call
        self._steps = 0

    def on_train_begin(self, logs=None):
        self.stopped = False
        self.stop_info = None
        self.initial_loss = None
        self._steps = 0
        self._snapshots = [self._snapshot()]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._prev = (0, 0.0)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        if "loss" not in logs:
            return
        mean = float(logs["loss"])
        count = batch + 1
        seen, prev_mean = self._prev
        # One hook call may cover several steps (steps_per_execution): recover their mean loss.
        loss = (count * mean - seen * prev_mean) / max(1, count - seen) if math.isfinite(mean) else mean
        self._prev = (count, mean)
        first_step = self._steps == 0
        self._steps += count - seen
        if self.initial_loss is None and math.isfinite(loss):
            self.initial_loss = max(loss, 1e-8)
        reason = None
        if not math.isfinite(loss):
            reason = "nan" if math.isnan(loss) else "inf"
        elif self.initial_loss is not None and loss > self.explosion_factor * self.initial_loss:
            reason = "exploded"
        if reason:
            self._stop(reason, batch, loss)
        elif (
            first_step or self._steps % self.snapshot_every_n_steps < count - seen
        ):  # crossed a multiple of N
            weights = self._snapshot()
            if _all_finite(weights):
                self._snapshots = [self._snapshots[-1], weights]
            else:
                self._stop("overflow", batch, loss)

    def on_epoch_end(self, epoch, logs=None):
        # the epoch's last steps since the newest snapshot: a run must not end on overflowed weights
        if not self.stopped and not _all_finite(self.model.get_weights()):
            logs = logs or {}
            self._stop("overflow", max(self._prev[0] - 1, 0), float(logs.get("loss", math.nan)))

    def _stop(self, reason: str, batch: int, loss: float) -> None:
        restored = False
        for weights in reversed(self._snapshots):
            if _all_finite(weights):
                self._restore(weights)
                restored = True
                break
        lr = current_learning_rate(self.model.optimizer)
        if reason == "exploded":
            what = (
                f"loss exploding ({loss:.3g} > {self.explosion_factor:g} x initial {self.initial_loss:.3g})"
            )
        elif reason == "overflow":
            what = "weights overflowed to inf/NaN"
        else:
            what = "loss is NaN" if reason == "nan" else "loss is infinite"
        advice = (
            f"{what} at epoch {self._epoch + 1}, batch {batch + 1}: the learning rate is probably "
            f"too high; try optimizer.lr={lr / 10:.3g} (now {lr:.3g}), or check the data for NaN "
            "inputs or labels out of range."
        )
        self.stopped = True
        self.stop_info = {
            "epoch": self._epoch,
            "step": batch,
            "loss": loss,
            "reason": reason,
            "learning_rate": lr,
            "weights_restored": restored,
            "advice": advice,
        }
        self.model.stop_training = True
        self._protect_backups()
        warnings.warn(f"NaNGuard stopped training: {advice}", stacklevel=2)
        if self.raise_error:
            raise TrainingDiverged(advice)

    def _snapshot(self) -> list[np.ndarray]:
        """The model's weights, then the optimizer's averages of them (``use_ema``) once it has any: fit
        ends by copying the averages into the model, so they are restored with the weights."""
        averages = [keras.ops.convert_to_numpy(a) for _, a in ema_pairs(self.model.optimizer)]
        return self.model.get_weights() + averages

    def _restore(self, snapshot: list[np.ndarray]) -> None:
        count = len(self.model.weights)
        self.model.set_weights(snapshot[:count])
        pairs = ema_pairs(self.model.optimizer)
        averages = snapshot[count:]
        if len(averages) != len(pairs):  # taken before the first step built the optimizer: none yet
            averages = [keras.ops.convert_to_numpy(variable) for variable, _ in pairs]
        for (_, average), value in zip(pairs, averages):
            average.assign(value)

    def _protect_backups(self) -> None:
        """Keep ``BackupAndRestore`` callbacks of this model from deleting their backup at train end."""
        for obj in gc.get_objects():
            if (
                isinstance(obj, keras.callbacks.BackupAndRestore)
                and getattr(obj, "_model", None) is self.model
            ):
                obj.delete_checkpoint = False


def _all_finite(weights: list) -> bool:
    return all(np.all(np.isfinite(w)) for w in weights if np.issubdtype(np.asarray(w).dtype, np.floating))


class TrainingDiverged(RuntimeError):
    """Raised by ``NaNGuard(raise_error=True)`` when it stops a run."""

"""Per-layer gradient norms on a fixed probe batch: vanishing and exploding gradients, seen directly."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from callbacks._cadence import MAX_OVERHEAD, EpochCadence, unmeasured
from callbacks._probe import CallRecorder, tracked_layers, unique_names, warn_unreached
from callbacks._summary import EpochSummaries
from callbacks._util import WarnOnce, as_batches

# last/first gradient-norm ratio outside which the gradient is vanishing or exploding (see the docstring)
HEALTHY_RATIO = (1e-3, 1e3)


def _own_trainable(layer) -> list:
    """The trainable variables a layer created itself (not those of its sublayers)."""
    return [v for v in getattr(layer, "_trainable_variables", []) if v.trainable]


class GradientStats(keras.callbacks.Callback):
    """L2 norm of the compiled loss's gradient for every layer with trainable weights, on a fixed probe.

    At the end of a fit's first epoch and of every ``every_n_epochs``-th epoch (skipping one when measuring
    would take more than ``max_overhead`` of the training time; see ``EpochCadence``: a skipped epoch's
    keys are ``NaN``, not a repeat) one ``tf.GradientTape`` pass runs the probe through the model in
    inference mode (no dropout; batch norm uses, and does not update, its moving
    statistics), computes ``model.compute_loss`` (the compiled loss plus regularisation losses, as a
    training step does, averaged over the whole probe) and its gradient. The first measurement runs eagerly,
    recording the forward order of every layer, nested ones included; later ones run as one compiled
    ``tf.function``. No batch hook is used. Writes:

    - ``logs["grad_norm/<layer>"]``: the L2 norm over all the gradients of that layer's own trainable
      weights (kernel and bias together), for every layer Keras tracks that has some, nested ones
      included, in forward order (the order in which the forward pass first calls them);
    - ``logs["grad_norm_ratio"]``: the last such layer's norm over the first's (``inf`` when the first
      layer's gradient is exactly zero and the last's is not).

    It warns once per kind of problem: ``grad_norm_ratio > 1e3`` is a vanishing gradient (the first layer
    receives over a thousand times less gradient than the last; sigmoid's derivative is at most 1/4, so a
    plain sigmoid stack loses about that much in five layers), ``grad_norm_ratio < 1e-3`` an exploding one
    (gradients grow a thousandfold on their way back to the input). Why 1e3: with Glorot/He
    initialisation, and with batch norm or residual connections, per-layer gradient norms of trainable
    networks stay within one or two orders of magnitude of each other (Glorot & Bengio 2010; He et al.
    2015); at three orders, one learning rate cannot suit both ends (the first layer barely moves while the
    last is at its stable limit, or the reverse). It also warns once on a non-finite gradient and once per
    layer the forward pass did not reach (named). With ``log_dir`` it writes a TensorBoard histogram of
    each layer's gradient values, tagged ``gradients/<layer>`` (step = epoch).

    Args:
        probe_x: inputs of the probe (a few hundred training examples; kept fixed so epochs compare).
        probe_y: their targets, in the form the compiled loss expects.
        every_n_epochs: measure every this many epochs (and at the end of a fit's first epoch).
        healthy_ratio: ``(low, high)`` band for ``grad_norm_ratio`` outside which it warns.
        log_dir: folder for TensorBoard event files, or None.
        batch_size: the probe is run in chunks of this many examples (the gradient is the same).
        max_overhead: the most of the fit's wall time measuring may take (0.005 = 0.5%), or None to
            measure at every ``every_n_epochs``-th epoch whatever it costs.

    Example:
        >>> model.fit(x, y, callbacks=[GradientStats(x[:256], y[:256], log_dir="runs/a/tb/monitors")])

    Reference:
        Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural networks", 2010.
    """

    def __init__(
        self,
        probe_x,
        probe_y,
        every_n_epochs: int = 1,
        healthy_ratio: tuple[float, float] = HEALTHY_RATIO,
        log_dir: str | Path | None = None,
        batch_size: int = 256,
        max_overhead: float | None = MAX_OVERHEAD,
    ):
        super().__init__()
        self.cadence = EpochCadence(every_n_epochs, max_overhead)
        low, high = healthy_ratio
        if not 0 < low < 1 < high:
            raise ValueError(
                f"`healthy_ratio` must be (low, high) with 0 < low < 1 < high. Received: {healthy_ratio}"
            )
        if len(probe_x) != len(probe_y) or len(probe_x) == 0:
            raise ValueError(
                f"`probe_x` and `probe_y` must hold the same, non-zero number of examples. Received: "
                f"{len(probe_x)} and {len(probe_y)}"
            )
        self.x_batches = as_batches(probe_x, batch_size)
        self.y_batches = as_batches(probe_y, batch_size)
        self.count = len(probe_x)
        self.healthy_ratio = (float(low), float(high))
        self.summaries = EpochSummaries(log_dir) if log_dir else None
        self.latest: dict[str, float] = {}
        self.gradients: dict[str, np.ndarray] = {}  # flattened gradient values per layer, last measurement
        self._warn = WarnOnce("GradientStats")
        self._compiled: tuple | None = None  # (model, variable ids, forward order, gradient function)

    def measure(self) -> dict[str, float]:
        """Gradient norms per layer and their last/first ratio on the probe, now (call ``set_model``
        first, with a compiled model)."""
        model = self.model
        if getattr(model, "loss", None) is None:
            raise ValueError(
                "GradientStats differentiates the compiled loss: compile the model with a loss first"
            )
        owners = [layer for layer in tracked_layers(model) if _own_trainable(layer)]
        if not owners:
            self._warn(
                "nothing", f"model '{model.name}' has no trainable weights: no grad_norm key is written."
            )
            return {}
        variables = [v for layer in owners for v in _own_trainable(layer)]
        key = (model, tuple(id(v) for v in variables))
        if self._compiled is not None and self._compiled[:2] == key:
            reached, gradients = self._compiled[2:]
            total = self._probe_gradients(gradients, variables)
        else:  # the first measurement runs eagerly, recording the forward order; later ones are compiled
            with CallRecorder(owners, keep_outputs=False) as recorder:
                total = self._probe_gradients(_gradient_function(model, variables, compiled=False), variables)
            reached = recorder.order
            warn_unreached(self._warn, owners, reached)
            self._compiled = (*key, reached, _gradient_function(model, variables, compiled=True))
        grads_of = {id(v): g for v, g in zip(variables, total)}
        values: dict[str, float] = {}
        self.gradients = {}
        norms = []
        for layer, name in zip(reached, unique_names(reached)):
            grads = [grads_of[id(v)] for v in _own_trainable(layer)]
            norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads))
            values[f"grad_norm/{name}"] = norm
            self.gradients[name] = np.concatenate([g.ravel() for g in grads])
            norms.append(norm)
        if norms:
            first, last = norms[0], norms[-1]
            values["grad_norm_ratio"] = last / first if first > 0 else (math.inf if last > 0 else 1.0)
        self.latest = values
        return values

    def _probe_gradients(self, gradients, variables: list) -> list[np.ndarray]:
        """The whole probe's gradient of each variable, summed over its chunks, in float64."""
        total = [np.zeros(tuple(v.shape), np.float64) for v in variables]
        for x, y in zip(self.x_batches, self.y_batches):
            weight = np.float32(len(x) / self.count)  # chunks add up to the whole probe's mean loss
            for acc, grad in zip(total, gradients(x, y, weight)):
                acc += keras.ops.convert_to_numpy(grad).astype(np.float64)
        return total

    def _check(self, epoch: int) -> None:
        norms = [v for k, v in self.latest.items() if k.startswith("grad_norm/")]
        if not all(math.isfinite(n) for n in norms):
            self._warn(
                "nonfinite",
                f"a gradient norm is NaN or infinite after epoch {epoch + 1}: the loss or the weights have "
                "overflowed. Lower the learning rate, clip gradients, or check the data for NaNs.",
            )
            return
        ratio = self.latest.get("grad_norm_ratio")
        if ratio is None:
            return
        low, high = self.healthy_ratio
        if ratio > high:
            self._warn(
                "vanishing",
                f"vanishing gradient after epoch {epoch + 1}: the last layer's gradient norm is {ratio:.1e} "
                f"times the first's (above {high:.0e}), so the first layers barely learn. Use ReLU rather "
                "than sigmoid/tanh, He/Glorot initialisation, batch norm or residual connections.",
            )
        elif ratio < low:
            self._warn(
                "exploding",
                f"exploding gradient after epoch {epoch + 1}: the last layer's gradient norm is {ratio:.1e} "
                f"times the first's (below {low:.0e}). Lower the learning rate or the initial weights' "
                "scale, clip gradients, or add batch norm.",
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self.cadence.due(epoch):
            logs.update(unmeasured(self.latest))
            return
        self.cadence.timed(self.measure)
        logs.update(self.latest)
        self._check(epoch)
        if self.summaries is not None and self.gradients:
            self.summaries.histograms("gradients", self.gradients, step=epoch)

    def on_train_begin(self, logs=None):
        self.cadence.start()

    def on_train_end(self, logs=None):
        if self.summaries is not None:
            self.summaries.close()


def _gradient_function(model, variables: list, compiled: bool):
    """``(x, y, weight) -> gradients of weight * loss`` for ``variables`` (zeros where a variable does not
    reach the loss), the loss as ``model.compute_loss`` gives it in inference mode; as a ``tf.function``
    when ``compiled`` (worth its tracing from the second measurement on)."""
    import tensorflow as tf

    def gradients(x, y, weight):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=False)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
            loss = loss * tf.cast(weight, loss.dtype)
        grads = tape.gradient(loss, variables)
        return [
            tf.zeros(tuple(v.shape), v.dtype) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables)
        ]

    return tf.function(gradients, reduce_retracing=True, autograph=False) if compiled else gradients

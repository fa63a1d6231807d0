"""Watch for dead ReLUs: units that output zero for every example."""

from __future__ import annotations

import keras
import numpy as np

from callbacks._activations import RELU_FAMILY, activation_layers
from callbacks._cadence import MAX_OVERHEAD, EpochCadence, unmeasured
from callbacks._probe import record_outputs, tracked_layers, warn_unreached
from callbacks._util import WarnOnce, as_batches


def dead_fractions(outputs: list[np.ndarray]) -> list[tuple[int, int]]:
    """``(dead units, units)`` per activation output (N, ..., C): a unit (channel) is dead when it is
    zero at every position of every example."""
    result = []
    for out in outputs:
        units = out.shape[-1]
        alive = np.any(out.reshape(-1, units) != 0, axis=0)
        result.append((int(units - alive.sum()), int(units)))
    return result


class DeadUnitMonitor(keras.callbacks.Callback):
    """Fraction of dead units in every ReLU-family activation, measured on a fixed probe batch.

    A unit is a neuron of a Dense layer or a channel of a conv layer; it is dead when its output is zero
    at every position for every probe example (inference mode). Writes ``logs["dead_fraction/<layer>"]``
    for each ReLU layer (``ReLU`` layers and layers built with ``activation="relu"``) and
    ``logs["dead_fraction"]`` over all of them, at the end of the first epoch of a fit and of every
    ``every_n_epochs``-th epoch, skipping an epoch when measuring would take more than ``max_overhead`` of
    the training time (see ``EpochCadence``); a skipped epoch's keys are ``NaN`` (not measured), never a
    repeat of an old value.

    Every layer Keras tracks is searched: top-level ones, those inside custom layers and nested
    Sequential/functional models, and those of subclassed models. Their outputs are recorded during one
    eager forward pass of the probe (see ``callbacks/_probe.py``), with keys in forward order. It warns once
    when the model has no ReLU layer at all, and once per ReLU layer the forward pass never reached (named),
    rather than writing nothing in silence.

    Args:
        probe_x: inputs (a few hundred training images is plenty); kept fixed so epochs compare.
        every_n_epochs: measure every this many epochs (and at the end of a fit's first epoch).
        warn_above: warn when a layer's dead fraction passes this.
        max_overhead: the most of the fit's wall time measuring may take (0.005 = 0.5%), or None to
            measure at every ``every_n_epochs``-th epoch whatever it costs.

    Example:
        >>> model.fit(x, y, callbacks=[DeadUnitMonitor(x[:256])])
    """

    def __init__(
        self,
        probe_x,
        every_n_epochs: int = 1,
        warn_above: float = 0.5,
        max_overhead: float | None = MAX_OVERHEAD,
    ):
        super().__init__()
        self.cadence = EpochCadence(every_n_epochs, max_overhead)
        if not 0.0 <= warn_above <= 1.0:
            raise ValueError(f"`warn_above` must be in [0, 1]. Received: warn_above={warn_above}")
        self.probe_batches = as_batches(probe_x)
        self.warn_above = warn_above
        self.latest: dict[str, float] = {}
        self._layers: list = []
        self._warn = WarnOnce("DeadUnitMonitor")

    def on_train_begin(self, logs=None):
        self.cadence.start()
        self._layers = activation_layers(self.model, RELU_FAMILY)
        if not self._layers:
            self._warn(
                "nothing",
                f"model '{self.model.name}' has no ReLU-family activation among its "
                f"{len(tracked_layers(self.model))} layers (nested ones included): nothing to measure, no "
                "dead_fraction key is written.",
            )

    def measure(self) -> dict[str, float]:
        """Dead fraction per ReLU layer and overall, on the probe batch, now."""
        if not self._layers:
            return {}
        measured, reached = record_outputs(self.model, self._layers, self.probe_batches)
        warn_unreached(self._warn, self._layers, reached)
        if not measured:
            return {}
        counts = dead_fractions([outputs for _, _, outputs in measured])
        values = {
            f"dead_fraction/{name}": dead / units for (_, name, _), (dead, units) in zip(measured, counts)
        }
        values["dead_fraction"] = sum(d for d, _ in counts) / sum(u for _, u in counts)
        return values

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self.cadence.due(epoch):
            logs.update(unmeasured(self.latest))  # the columns stay (CSVLogger), the values are not stale
            return
        self.latest = self.cadence.timed(self.measure)
        logs.update(self.latest)
        for key, fraction in self.latest.items():
            if key.startswith("dead_fraction/") and fraction > self.warn_above:
                name = key.split("/", 1)[1]
                self._warn(
                    f"dead/{name}",
                    f"{fraction:.0%} of the units of layer '{name}' are dead (zero for every probe example) "
                    f"after epoch {epoch + 1}. Lower the learning rate, check the weight initialisation (He "
                    "init for ReLU), or try Leaky ReLU.",
                )

"""Watch for dead ReLUs: units that output zero for every example."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from callbacks._activations import RELU_FAMILY, activation_layers
from callbacks._util import as_batches, probe_model


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
    ``logs["dead_fraction"]`` over all of them, every ``every_n_epochs`` epochs. Sequential and functional
    models only: a subclassed model has no per-layer outputs to read.

    Args:
        probe_x: inputs (a few hundred training images is plenty); kept fixed so epochs compare.
        every_n_epochs: measure every this many epochs (and at the end of epoch 1).
        warn_above: warn when a layer's dead fraction passes this.

    Example:
        >>> model.fit(x, y, callbacks=[DeadUnitMonitor(x[:256])])
    """

    def __init__(self, probe_x, every_n_epochs: int = 1, warn_above: float = 0.5):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1. Received: every_n_epochs={every_n_epochs}")
        if not 0.0 <= warn_above <= 1.0:
            raise ValueError(f"`warn_above` must be in [0, 1]. Received: warn_above={warn_above}")
        self.probe_batches = as_batches(probe_x)
        self.every_n_epochs = every_n_epochs
        self.warn_above = warn_above
        self.latest: dict[str, float] = {}
        self._probe = None
        self._names: list[str] = []
        self._warned: set[str] = set()

    def on_train_begin(self, logs=None):
        layers = activation_layers(self.model, RELU_FAMILY)
        self._names = [layer.name for layer in layers]
        self._probe = probe_model(self.model, layers, "DeadUnitMonitor") if layers else None

    def measure(self) -> dict[str, float]:
        """Dead fraction per ReLU layer and overall, on the probe batch, now."""
        if self._probe is None:
            return {}
        outputs = [[] for _ in self._names]
        for batch in self.probe_batches:
            result = self._probe(batch, training=False)
            result = result if isinstance(result, (list, tuple)) else [result]
            for store, out in zip(outputs, result):
                store.append(keras.ops.convert_to_numpy(out))
        counts = dead_fractions([np.concatenate(o) for o in outputs])
        values = {f"dead_fraction/{n}": dead / units for n, (dead, units) in zip(self._names, counts)}
        values["dead_fraction"] = sum(d for d, _ in counts) / sum(u for _, u in counts)
        return values

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if epoch % self.every_n_epochs and epoch != 0:
            logs.update(self.latest)  # keep the columns stable for CSVLogger
            return
        self.latest = self.measure()
        logs.update(self.latest)
        for name in self._names:
            fraction = self.latest.get(f"dead_fraction/{name}", 0.0)
            if fraction > self.warn_above and name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"DeadUnitMonitor: {fraction:.0%} of the units of layer '{name}' are dead (zero for "
                    f"every probe example) after epoch {epoch + 1}. Lower the learning rate, check the "
                    "weight initialisation (He init for ReLU), or try Leaky ReLU.",
                    stacklevel=2,
                )

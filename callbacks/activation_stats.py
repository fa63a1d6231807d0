"""Per-layer activation statistics: the lecture's diagnosis of a bad initialisation."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from callbacks._activations import SATURATING, activation_layers, activation_name
from callbacks._cadence import MAX_OVERHEAD, EpochCadence, unmeasured
from callbacks._probe import record_outputs, tracked_layers, warn_unreached
from callbacks._summary import EpochSummaries
from callbacks._util import WarnOnce, as_batches, save_figure

SATURATION_MARGIN = 0.01  # within 1% of the output range's ends counts as saturated


def saturated_fraction(values: np.ndarray, name: str) -> float | None:
    """Fraction of activations within ``SATURATION_MARGIN`` of a saturating nonlinearity's bounds."""
    if name not in SATURATING:
        return None
    low, high = SATURATING[name]
    margin = SATURATION_MARGIN * (high - low)
    return float(np.mean((values <= low + margin) | (values >= high - margin)))


class ActivationStats(keras.callbacks.Callback):
    """Mean, standard deviation and saturation of every layer's activations on a fixed probe batch.

    With weights too small, activations shrink towards zero layer after layer (std collapsing); with
    weights too large, tanh and sigmoid units saturate (outputs pinned at their bounds, gradients near
    zero). Writes ``logs["act_mean/<layer>"]``, ``logs["act_std/<layer>"]`` and, for tanh and sigmoid
    layers, ``logs["saturated/<layer>"]`` (fraction of activations within 1% of the range's ends), every
    ``every_n_epochs`` epochs (and of a fit's first), skipping an epoch when measuring would take more than
    ``max_overhead`` of the training time (see ``EpochCadence``; a skipped epoch's keys are ``NaN``). With
    ``plot_dir`` it also saves ``activations_epoch<N>.png``, one histogram per layer; with ``log_dir``,
    TensorBoard histograms tagged ``activations/<layer>`` (step = epoch).

    Every layer Keras tracks is searched, nested and subclassed ones included, and measured during one
    eager forward pass of the probe (keys in forward order). It warns once when the model has no
    activation to measure, and once per activation layer that the forward pass never reached (named).

    Args:
        probe_x: inputs, kept fixed so that epochs compare.
        every_n_epochs: measure every this many epochs (and at the end of a fit's first epoch).
        plot_dir: folder for histogram plots, or None.
        log_dir: folder for TensorBoard event files, or None.
        max_overhead: the most of the fit's wall time measuring may take (0.005 = 0.5%), or None to
            measure at every ``every_n_epochs``-th epoch whatever it costs.

    Example:
        >>> model.fit(x, y, callbacks=[ActivationStats(x[:256], plot_dir="runs/acts")])
    """

    def __init__(
        self,
        probe_x,
        every_n_epochs: int = 1,
        plot_dir: str | Path | None = None,
        log_dir: str | Path | None = None,
        max_overhead: float | None = MAX_OVERHEAD,
    ):
        super().__init__()
        self.cadence = EpochCadence(every_n_epochs, max_overhead)
        self.probe_batches = as_batches(probe_x)
        self.plot_dir = Path(plot_dir) if plot_dir else None
        self.summaries = EpochSummaries(log_dir) if log_dir else None
        self.latest: dict[str, float] = {}
        self.activations: dict[str, np.ndarray] = {}
        self._layers: list = []
        self._warn = WarnOnce("ActivationStats")

    def on_train_begin(self, logs=None):
        self.cadence.start()
        self._attach()

    def _attach(self) -> None:
        self._layers = activation_layers(self.model)
        if not self._layers:
            self._warn(
                "nothing",
                f"model '{self.model.name}' has no activation layer among its "
                f"{len(tracked_layers(self.model))} layers (nested ones included): nothing to measure, no "
                "act_mean/act_std key is written.",
            )

    def measure(self, model: keras.Model | None = None) -> dict[str, float]:
        """Statistics now; ``model`` lets it run outside ``fit`` (as ``cli.py check`` does)."""
        if model is not None:
            self.set_model(model)
            self._attach()
        if not self._layers:
            return {}
        measured, reached = record_outputs(self.model, self._layers, self.probe_batches)
        warn_unreached(self._warn, self._layers, reached)
        values: dict[str, float] = {}
        self.activations = {}
        for layer, name, acts in measured:
            self.activations[name] = acts
            values[f"act_mean/{name}"] = float(acts.mean())
            values[f"act_std/{name}"] = float(acts.std())
            saturated = saturated_fraction(acts, activation_name(layer))
            if saturated is not None:
                values[f"saturated/{name}"] = saturated
        self.latest = values
        return values

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self.cadence.due(epoch):
            logs.update(unmeasured(self.latest))
            return
        self.cadence.timed(self.measure)
        logs.update(self.latest)
        if self.plot_dir:
            self.plot(self.plot_dir / f"activations_epoch{epoch + 1}.png")
        if self.summaries is not None and self.activations:
            self.summaries.histograms("activations", self.activations, step=epoch)

    def on_train_end(self, logs=None):
        if self.summaries is not None:
            self.summaries.close()

    def plot(self, path: str | Path) -> Path | None:
        """One histogram per layer of the last measurement (the lecture's figure), written atomically."""
        if not self.activations:
            return None
        from matplotlib.figure import Figure  # the object API: no pyplot, no backend switch

        names = list(self.activations)
        cols = min(4, len(names))
        rows = -(-len(names) // cols)
        fig = Figure(figsize=(3 * cols, 2.4 * rows), dpi=90)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, name in zip(axes.flat, names):
            acts = self.activations[name].ravel()
            ax.hist(acts, bins=50, color="tab:blue")
            ax.set_title(f"{name}\nmean {acts.mean():.2f} std {acts.std():.2f}", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        fig.tight_layout()
        return save_figure(fig, path)

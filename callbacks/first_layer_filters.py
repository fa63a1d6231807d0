"""The first convolution's filters as an image: smooth, structured filters are a sign of a healthy run."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from callbacks._probe import tracked_layers
from callbacks._summary import EpochSummaries
from callbacks._util import WarnOnce, save_image

BORDER = 255  # the one-pixel white lines between cells


def cell_scale(kh: int, kw: int) -> int:
    """Pixels per kernel tap: cells about 48 pixels across (a 3x3 kernel is drawn 16x enlarged)."""
    return max(1, 48 // max(kh, kw))


def filter_grid(kernel: np.ndarray, scale: int | None = None) -> np.ndarray:
    """A (kh, kw, in, out) conv kernel as an (H, W, 3) uint8 image, one cell per filter.

    Filter ``k`` sits in row ``k // cols``, column ``k % cols`` with ``cols = ceil(sqrt(out))``; its cell is
    ``kh * scale`` by ``kw * scale`` pixels (each tap a ``scale`` x ``scale`` block), its top-left pixel at
    ``(1 + row * (kh * scale + 1), 1 + col * (kw * scale + 1))``, and one-pixel white lines separate and
    surround the cells. Each filter is min-max normalised on its own (a constant filter is mid-grey): with
    3 input channels over all three, shown as RGB; otherwise its first input channel, in grey.
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"Expected a (kh, kw, in, out) kernel. Received: shape={kernel.shape}")
    kh, kw, channels, out = kernel.shape
    scale = scale or cell_scale(kh, kw)
    cols = math.ceil(math.sqrt(out))
    rows = math.ceil(out / cols)
    ch, cw = kh * scale, kw * scale
    grid = np.full((1 + rows * (ch + 1), 1 + cols * (cw + 1), 3), BORDER, np.uint8)
    for k in range(out):
        shown = kernel[:, :, :3, k] if channels == 3 else np.repeat(kernel[:, :, :1, k], 3, axis=2)
        low, high = shown.min(), shown.max()
        unit = (shown - low) / (high - low) if high > low else np.full_like(shown, 0.5)
        cell = np.round(unit * 255).astype(np.uint8).repeat(scale, axis=0).repeat(scale, axis=1)
        top, left = 1 + (k // cols) * (ch + 1), 1 + (k % cols) * (cw + 1)
        grid[top : top + ch, left : left + cw] = cell
    return grid


class FirstLayerFilters(keras.callbacks.Callback):
    """Draw the first ``Conv2D``'s kernel as a grid of filters, every ``every_n_epochs`` epochs.

    Well-trained first-layer filters look like smooth edge, colour and blob detectors; noisy, unchanging
    or identical filters point to too low a learning rate, too little training or dead units. The first
    ``Conv2D`` is searched among every layer Keras tracks, nested ones included, depth first in the order
    the model holds them (forward order for Sequential and functional models; attribute order in
    subclassed ones, where ``layer=`` names it exactly). Layout: see :func:`filter_grid`.

    The PNG at ``path`` is rewritten atomically at each measured epoch (and at the end of epoch 1); with
    ``log_dir`` the same image goes to TensorBoard as ``first_layer_filters`` (step = epoch). A model without
    a ``Conv2D`` (or without the named layer) gets one warning naming the problem, and no image.

    Args:
        path: the PNG to (re)write, e.g. ``run_dir / "filters.png"``, or None (TensorBoard only).
        every_n_epochs: draw every this many epochs (and at the end of epoch 1).
        layer: name of the convolution to draw, or None for the first ``Conv2D`` found.
        log_dir: folder for TensorBoard event files, or None.

    Example:
        >>> model.fit(x, y, callbacks=[FirstLayerFilters(path="runs/a/filters.png")])
    """

    def __init__(
        self,
        path: str | Path | None = None,
        every_n_epochs: int = 1,
        layer: str | None = None,
        log_dir: str | Path | None = None,
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1. Received: every_n_epochs={every_n_epochs}")
        if path is None and log_dir is None:
            raise ValueError("FirstLayerFilters needs somewhere to draw: pass `path`, `log_dir` or both")
        self.path = Path(path) if path else None
        self.every_n_epochs = every_n_epochs
        self.layer = layer
        self.summaries = EpochSummaries(log_dir) if log_dir else None
        self.latest: np.ndarray | None = None  # the last grid drawn
        self._warn = WarnOnce("FirstLayerFilters")

    def find_conv(self):
        """The layer drawn, or None (after warning once)."""
        layers = tracked_layers(self.model)
        for layer in layers:
            if self.layer is None and isinstance(layer, keras.layers.Conv2D):
                return layer
            if self.layer is not None and layer.name == self.layer:
                if len(getattr(layer, "kernel", np.zeros(0)).shape) == 4:
                    return layer
                self._warn(
                    "kind", f"layer '{self.layer}' has no (kh, kw, in, out) kernel: no filter image is drawn."
                )
                return None
        wanted = f"layer named '{self.layer}'" if self.layer else "Conv2D layer"
        self._warn(
            "missing",
            f"model '{self.model.name}' has no {wanted} among its {len(layers)} layers (nested ones "
            "included): no filter image is drawn.",
        )
        return None

    def draw(self, step: int = 0) -> np.ndarray | None:
        """Draw the filters now: write ``path`` and the TensorBoard image; returns the grid, or None."""
        conv = self.find_conv()
        if conv is None:
            return None
        self.latest = filter_grid(keras.ops.convert_to_numpy(conv.kernel))
        if self.path is not None:
            save_image(self.latest, self.path)
        if self.summaries is not None:
            self.summaries.image("first_layer_filters", self.latest, step=step)
        return self.latest

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every_n_epochs == 0 or epoch == 0:
            self.draw(step=epoch)

    def on_train_end(self, logs=None):
        if self.summaries is not None:
            self.summaries.close()

"""Small helpers shared by the callbacks."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import keras
import numpy as np


def probe_model(model: keras.Model, layers: list, who: str) -> keras.Model:
    """A model from ``model``'s inputs to the outputs of ``layers`` (Sequential and functional only)."""
    try:
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        return keras.Model(inputs, [layer.output for layer in layers])
    except (AttributeError, ValueError, TypeError) as e:
        raise TypeError(
            f"{who} reads intermediate activations, which needs a Sequential or functional model; "
            f"{type(model).__name__} looks subclassed (no layer.output: {e}). Build the model "
            "functionally, or pass it an already-built Sequential/functional model"
        ) from None


def as_batches(probe_x, batch_size: int = 256):
    """Probe inputs as a list of numpy batches (small, fixed, reused every measurement)."""
    x = np.asarray(probe_x)
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def save_figure(fig, path: str | Path) -> Path:
    """Write a ``matplotlib.figure.Figure`` as PNG atomically: a temporary file in the target's folder,
    fsynced, then ``os.replace``d over ``path`` (a kill mid-write leaves the old plot, never a torn one).

    The figure draws on its own Agg canvas, so no pyplot backend is chosen or changed, and it needs no
    ``close``: it is freed with its last reference.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename itself durable, where the file system allows
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path

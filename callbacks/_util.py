"""Small helpers shared by the callbacks."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np


def as_batches(probe_x, batch_size: int = 256):
    """Probe inputs as a list of numpy batches (small, fixed, reused every measurement)."""
    x = np.asarray(probe_x)
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


class WarnOnce:
    """``warnings.warn`` each kind of problem (a key) once per callback, prefixed by the callback's name."""

    def __init__(self, who: str):
        self.who = who
        self.seen: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            warnings.warn(f"{self.who}: {message}", stacklevel=3)


def _write_atomically(path: str | Path, write: Callable, suffix: str) -> Path:
    """Call ``write(file)`` on a temporary file in the target's folder, fsync it, then ``os.replace`` it
    over ``path`` (a kill mid-write leaves the old file, never a torn one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def save_figure(fig, path: str | Path) -> Path:
    """Write a ``matplotlib.figure.Figure`` as PNG atomically.

    The figure draws on its own Agg canvas, so no pyplot backend is chosen or changed, and it needs no
    ``close``: it is freed with its last reference.
    """
    return _write_atomically(path, lambda f: fig.savefig(f, format="png"), ".png")


def save_image(pixels: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG atomically, pixel for pixel (``matplotlib.image.imsave``
    hands PNGs to Pillow directly: no figure, no pyplot)."""
    from matplotlib.image import imsave

    return _write_atomically(path, lambda f: imsave(f, pixels, format="png"), ".png")

"""The bundled CIFAR-10 sample: a few thousand real images that ship with the package, so that every
command and test runs on a fresh machine without the full data set."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from recipes.data.splits import DataError

SAMPLE_PATH = Path(__file__).parent / "sample" / "cifar10_sample.npz"


def read_sample() -> tuple[np.ndarray, ...]:
    """The bundled CIFAR-10 sample: real images stored as JPEG (quality 95) in an npz of plain arrays, as
    ``(x_train, y_train, x_test, y_test)``. Decoding its 6,000 JPEGs takes about half a second, so it runs
    once per process; every call returns its own copies, free to modify."""
    return tuple(array.copy() for array in _decoded_sample())


@functools.cache
def _decoded_sample() -> tuple[np.ndarray, ...]:
    import tensorflow as tf

    if not SAMPLE_PATH.is_file():
        raise DataError(f"the bundled sample {SAMPLE_PATH} is missing; reinstall the package")
    with np.load(SAMPLE_PATH, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    def decode(prefix: str) -> np.ndarray:
        blob, offsets = arrays[f"{prefix}_jpeg"].tobytes(), arrays[f"{prefix}_offsets"]
        images = [tf.io.decode_jpeg(blob[a:b], channels=3).numpy() for a, b in zip(offsets[:-1], offsets[1:])]
        return np.stack(images)

    return (
        decode("train"),
        arrays["train_labels"].astype(np.int32),
        decode("test"),
        arrays["test_labels"].astype(np.int32),
    )

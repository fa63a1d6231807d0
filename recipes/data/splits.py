"""The in-memory data set every recipe trains on (:class:`ImageData`), its validation, and the
train / validation / test split."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """Data that cannot be used. The message is one line, fit to show a user: control characters in it
    (a newline in a hostile file or archive member name) are shown escaped."""

    def __init__(self, message: str):
        super().__init__(re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], str(message)))


@dataclass
class ImageData:
    """Train / validation / test splits as raw uint8 images (N, H, W, 3) and int32 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str  # where the images came from, recorded in metrics.json
    is_sample: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and variance of the training split only (never validation or test)."""
        x = self.x_train.reshape(-1, self.x_train.shape[-1]).astype(np.float64)
        return x.mean(axis=0).astype(np.float32), x.var(axis=0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Validation and splits
# --------------------------------------------------------------------------------------------------


def validate(x: np.ndarray, y: np.ndarray, num_classes: int, what: str) -> None:
    """Refuse anything the pipeline would misread: images that are not a numeric (N, height, width, 3)
    array, labels that are not N integers in 0..C-1 (floats are refused even when whole), and non-finite
    pixels."""
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        got = type(x if not isinstance(x, np.ndarray) else y).__name__
        raise DataError(f"{what}: expected NumPy arrays of images and labels, got a {got}")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{what}: expected images of shape (N, height, width, 3), got {x.shape}")
    if x.dtype.kind not in "uif":  # bool, complex, text, bytes, objects, dates: not pixel values
        raise DataError(f"{what}: images must be numbers (uint8 0..255 or float), got dtype {x.dtype}")
    if y.ndim != 1:
        raise DataError(f"{what}: expected labels of shape (N,), got {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{what}: no images")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{what}: some pixel values are NaN or infinite")
    if y.dtype.kind not in "iu":
        raise DataError(f"{what}: labels must be integers, got {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise DataError(
            f"{what}: label {int(y[bad][0])} is outside 0..{num_classes - 1} ({int(bad.sum())} such labels)"
        )


def split(
    arrays: tuple[np.ndarray, ...],
    *,
    val_size: int,
    train_limit: int | None,
    class_names: list[str],
    source: str,
    is_sample: bool = False,
) -> ImageData:
    """Hold the last ``min(val_size, 10% of training images)`` out for validation, then keep the first
    ``train_limit`` of the rest for training."""
    x_train, y_train, x_test, y_test = arrays
    validate(x_train, y_train, len(class_names), f"{source} training images")
    validate(x_test, y_test, len(class_names), f"{source} test images")
    n_val = min(val_size, len(x_train) // 10)
    n_fit = len(x_train) - n_val
    x_val, y_val = x_train[n_fit:], y_train[n_fit:]
    x_train, y_train = x_train[:n_fit], y_train[:n_fit]
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    return ImageData(
        x_train,
        y_train.astype(np.int32),
        x_val,
        y_val.astype(np.int32),
        x_test,
        y_test.astype(np.int32),
        class_names,
        source,
        is_sample,
    )

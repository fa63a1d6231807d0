"""A user's own images, one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recipes.data.splits import DataError


def read_folder(path: str | None, image_size: int, seed: int) -> tuple[tuple[np.ndarray, ...], list[str]]:
    """Images in class sub-folders. ``DIR/train`` and ``DIR/test`` are used when both exist; otherwise
    a seeded 10% of ``DIR`` is held out as the test set."""
    import keras

    if not path:
        raise DataError("data.name=folder needs data.path=DIR (a folder with one sub-folder per class)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={root}: no such folder")

    def load(directory: Path, class_names: list[str] | None = None):
        try:
            ds = keras.utils.image_dataset_from_directory(
                directory,
                labels="inferred",
                label_mode="int",
                class_names=class_names,
                image_size=(image_size, image_size),
                batch_size=None,
                shuffle=False,
                verbose=False,
            )
        except ValueError as e:
            raise DataError(f"data.path={directory}: {e}") from None
        names = list(ds.class_names)
        xs, ys = [], []
        for x, y in ds.as_numpy_iterator():
            xs.append(x)
            ys.append(y)
        if not xs:
            raise DataError(f"data.path={directory}: no images found in its class sub-folders")
        x = np.stack(xs)
        if not np.all(np.isfinite(x)):
            raise DataError(f"data.path={directory}: some images decode to non-finite values")
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), np.asarray(ys, np.int32), names

    if (root / "train").is_dir() and (root / "test").is_dir():
        x_train, y_train, names = load(root / "train")
        x_test, y_test, _ = load(root / "test", names)
    else:
        x, y, names = load(root)
        order = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, len(x) // 10)
        test, train = order[:n_test], order[n_test:]
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    return (x_train, y_train, x_test, y_test), names

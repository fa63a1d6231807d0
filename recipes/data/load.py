"""``load_data``: the splits for a recipe's ``data`` config section, from whichever source it names."""

from __future__ import annotations

from pathlib import Path

from recipes.data.cifar import CIFAR10_CLASSES, cache_search_text, find_cifar, keras_cache_candidates
from recipes.data.folder import read_folder
from recipes.data.sample import read_sample
from recipes.data.splits import DataError, ImageData, split


def load_data(cfg, *, seed: int = 0, allow_download: bool = True) -> ImageData:
    """The splits for a recipe's ``data`` config section."""
    kwargs = dict(val_size=cfg.val_size, train_limit=cfg.train_limit)
    if cfg.name == "folder":
        arrays, names = read_folder(cfg.path, cfg.image_size, seed)
        return split(arrays, class_names=names, source=f"folder:{Path(cfg.path).resolve()}", **kwargs)
    if cfg.name == "sample":
        return _sample(kwargs)
    if cfg.name == "cifar10":
        arrays, source = find_cifar(cfg.path, allow_download=allow_download)
        return split(arrays, class_names=CIFAR10_CLASSES, source=source, **kwargs)
    # auto: full CIFAR-10 from data.path or the Keras cache, else the sample, said loudly. It never
    # downloads: offline, Keras prints "Downloading data from ..." before failing (data.name=cifar10 does)
    try:
        arrays, source = find_cifar(cfg.path, allow_download=False)
        return split(arrays, class_names=CIFAR10_CLASSES, source=source, **kwargs)
    except DataError as e:
        if cfg.path:  # the user named a path: a problem with it is an error, not a reason to fall back
            raise
        problem = str(e) if any(c.exists() for c in keras_cache_candidates()) else "not there"
        data = _sample(kwargs)
        data.notes.append(
            f"looked for CIFAR-10 in {cache_search_text()}: {problem}; using the bundled sample "
            "(data.name=auto never downloads; data.name=cifar10 does)"
        )
        return data


def _sample(split_kwargs: dict) -> ImageData:
    """The bundled CIFAR-10 sample's splits."""
    return split(
        read_sample(),
        class_names=CIFAR10_CLASSES,
        source="cifar10-sample (bundled)",
        is_sample=True,
        **split_kwargs,
    )

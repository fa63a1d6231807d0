"""Image data for the recipes: CIFAR-10 (archive, folder, Keras cache, download), the bundled sample, and
the user's own image folders, all returned as one validated :class:`ImageData`.

The CIFAR-10 batches are pickles, and unpickling runs code: they are read with :class:`SafeUnpickler`,
which rebuilds only plain data (dicts, lists, bytes, numbers, numpy arrays) and refuses anything else.
The archive is read member by member without extracting it, so a member that would escape its folder
cannot be written anywhere; it is still reported, since it marks a tampered download.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = "test_batch"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SAMPLE_PATH = Path(__file__).parent / "sample" / "cifar10_sample.npz"


class DataError(ValueError):
    """Data that cannot be used. The message is one line, fit to show a user."""


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
# Restricted unpickling
# --------------------------------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes inside protocol-2 pickles written by Python 3
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any class or function outside numpy's array rebuilders is refused."""

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds only plain data")


def safe_load_pickle(data: bytes, what: str) -> object:
    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{what}: {e}; this file is not a genuine CIFAR-10 batch") from None
    except Exception as e:  # truncated or garbled bytes raise many kinds of errors
        raise DataError(f"{what}: cannot be read as a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    _reject_object_arrays(obj, what)
    return obj


def _reject_object_arrays(obj: object, what: str) -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise DataError(f"{what}: holds an object array; a CIFAR-10 batch holds only numbers")
    if isinstance(obj, dict):
        for v in obj.values():
            _reject_object_arrays(v, what)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _reject_object_arrays(v, what)


def parse_batch(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file's bytes -> images (N, 32, 32, 3) uint8 and labels (N,) int32."""
    batch = safe_load_pickle(data, what)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{what}: expected a dict with b'data' and b'labels'")
    images = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if images.ndim != 2 or images.shape[1] != 3072 or len(images) != len(labels):
        raise DataError(
            f"{what}: expected data of shape (N, 3072) and N labels, got {images.shape} and {labels.shape}"
        )
    if images.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 pixels, got {images.dtype}")
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 sources
# --------------------------------------------------------------------------------------------------


def _read_cifar_files(read) -> tuple[np.ndarray, ...]:
    """``read(name)`` returns the bytes of a batch file; returns the four arrays."""
    train = [parse_batch(read(name), name) for name in CIFAR10_TRAIN]
    x_test, y_test = parse_batch(read(CIFAR10_TEST), CIFAR10_TEST)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (member.issym() or member.islnk()):
        raise DataError(
            f"{archive}: member '{name}' escapes the archive's folder (absolute path, '..' "
            "or link); refusing a tampered archive, download it again"
        )


def read_cifar_archive(path: Path) -> tuple[np.ndarray, ...]:
    """Read the official ``cifar-10-python.tar.gz`` without extracting it."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {}
            for member in tar:
                _check_member(member, path)
                if member.isfile():
                    members[Path(member.name).name] = member

            def read(name: str) -> bytes:
                if name not in members:
                    raise DataError(
                        f"{path}: has no {CIFAR10_FOLDER}/{name}; is this the CIFAR-10 python archive?"
                    )
                return tar.extractfile(members[name]).read()

            return _read_cifar_files(read)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(
            f"{path}: the archive is truncated or corrupt ({type(e).__name__}: {e}); download it again"
        ) from None


def read_cifar_folder(path: Path) -> tuple[np.ndarray, ...]:
    """Read the extracted ``cifar-10-batches-py/`` folder (or the folder holding it)."""
    if (path / CIFAR10_FOLDER).is_dir():
        path = path / CIFAR10_FOLDER

    def read(name: str) -> bytes:
        file = path / name
        if not file.is_file():
            raise DataError(
                f"{path}: missing {name}; expected the {CIFAR10_FOLDER}/ layout "
                f"({', '.join(CIFAR10_TRAIN)}, {CIFAR10_TEST})"
            )
        return file.read_bytes()

    return _read_cifar_files(read)


def read_cifar(path: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """Read CIFAR-10 from an archive or a folder (the folder may hold the archive)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data.path={path}: no such file or folder")
    if path.is_dir():
        archive = path / "cifar-10-python.tar.gz"
        if not (path / CIFAR10_FOLDER).is_dir() and not (path / CIFAR10_TEST).is_file() and archive.is_file():
            return read_cifar_archive(archive)
        return read_cifar_folder(path)
    return read_cifar_archive(path)


def keras_cache_candidates() -> list[Path]:
    """Where ``keras.datasets.cifar10.load_data`` and ``keras.utils.get_file`` leave CIFAR-10."""
    root = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    return [
        root / "cifar-10-batches-py-target" / CIFAR10_FOLDER,
        root / CIFAR10_FOLDER,
        root / "cifar-10-python.tar.gz",
    ]


def download_cifar() -> Path:
    """Download the official archive once into the Keras cache, checked against its sha256."""
    import keras

    return Path(
        keras.utils.get_file(
            "cifar-10-python.tar.gz", origin=CIFAR10_URL, file_hash=CIFAR10_SHA256, hash_algorithm="sha256"
        )
    )


def find_cifar(path: str | None, *, allow_download: bool = True) -> tuple[tuple[np.ndarray, ...], str]:
    """CIFAR-10 arrays and a description of their source, trying data.path, the cache, a download."""
    if path:
        return read_cifar(path), f"cifar10:{Path(path).expanduser().resolve()}"
    for candidate in keras_cache_candidates():
        if candidate.exists():
            return read_cifar(candidate), f"cifar10:{candidate}"
    failure = "downloads are off"
    if allow_download:
        try:
            archive = download_cifar()
            return read_cifar(archive), f"cifar10:{archive}"
        except DataError:
            raise
        except Exception as e:  # no network, proxy, hash mismatch: all mean "not downloadable here"
            failure = f"the download failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    raise DataError(
        "CIFAR-10 not found: " + failure + ". Provide it in one of three ways: (1) data.path=PATH to "
        "cifar-10-python.tar.gz or its extracted cifar-10-batches-py/ folder; (2) put either in "
        f"{keras_cache_candidates()[1].parent}/; (3) run once with network access to download it from "
        f"{CIFAR10_URL}"
    )


def read_sample() -> tuple[np.ndarray, ...]:
    """The bundled CIFAR-10 sample: real images stored as JPEG (quality 95) in an npz of plain arrays."""
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


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Validation and splits
# --------------------------------------------------------------------------------------------------


def validate(x: np.ndarray, y: np.ndarray, num_classes: int, what: str) -> None:
    """Refuse images of the wrong shape or type, labels outside 0..C-1, and non-finite pixels."""
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{what}: expected images of shape (N, height, width, 3), got {x.shape}")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{what}: no images")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{what}: some pixel values are NaN or infinite")
    y = np.asarray(y)
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


def load_data(cfg, *, seed: int = 0, allow_download: bool = True) -> ImageData:
    """The splits for a recipe's ``data`` config section."""
    kwargs = dict(val_size=cfg.val_size, train_limit=cfg.train_limit)
    if cfg.name == "folder":
        arrays, names = read_folder(cfg.path, cfg.image_size, seed)
        return split(arrays, class_names=names, source=f"folder:{Path(cfg.path).resolve()}", **kwargs)
    if cfg.name == "sample":
        return split(
            read_sample(),
            class_names=CIFAR10_CLASSES,
            source="cifar10-sample (bundled)",
            is_sample=True,
            **kwargs,
        )
    if cfg.name == "cifar10":
        arrays, source = find_cifar(cfg.path, allow_download=allow_download)
        return split(arrays, class_names=CIFAR10_CLASSES, source=source, **kwargs)
    # auto: full CIFAR-10 when it can be had, else the sample, said loudly
    try:
        arrays, source = find_cifar(cfg.path, allow_download=allow_download)
        return split(arrays, class_names=CIFAR10_CLASSES, source=source, **kwargs)
    except DataError as e:
        if cfg.path:  # the user named a path: a problem with it is an error, not a reason to fall back
            raise
        data = split(
            read_sample(),
            class_names=CIFAR10_CLASSES,
            source="cifar10-sample (bundled)",
            is_sample=True,
            **kwargs,
        )
        data.notes.append(str(e))
        return data

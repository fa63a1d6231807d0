"""CIFAR-10 from the official archive, its extracted folder, or the Keras cache, read without running code.

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
from pathlib import Path

import numpy as np

from recipes.data.splits import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = "test_batch"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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


def cache_search_text() -> str:
    """The Keras-cache places :func:`find_cifar` tries, as one phrase: ``ROOT/ (a, b, c)``."""
    candidates = keras_cache_candidates()
    root = candidates[1].parent
    return f"{root}/ ({', '.join(str(c.relative_to(root)) for c in candidates)})"


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

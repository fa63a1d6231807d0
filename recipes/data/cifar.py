"""CIFAR-10 from the official archive, its extracted folder, or the Keras cache, read without running code.

The CIFAR-10 batches are pickles, and unpickling runs code: they are read with :class:`SafeUnpickler`,
which rebuilds only plain data (dicts, lists, bytes, numbers, numpy arrays) and refuses anything else.
The archive is read member by member without extracting it, so a member that would escape its folder
cannot be written anywhere; it is still reported, since it marks a tampered download.

Nothing here reads more than :data:`MAX_BATCH_BYTES` at once, whatever a file or an archive header
declares: a batch is checked against the cap before a byte of it is read, so a 200-byte archive that
declares a terabyte is refused at once instead of exhausting memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import pickletools
import reprlib
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

# A genuine batch pickle is 30.9 MB (10000 x 3072 pixel bytes, 10000 labels and file names). The cap is
# about twice that: room for a batch re-pickled with another protocol, and still a bounded read. It applies
# to every archive member, every batch file of an extracted folder, and to what unpickling may create.
MAX_BATCH_BYTES = 64 * 2**20
MAX_BATCH_TEXT = f"{MAX_BATCH_BYTES // 2**20} MiB"
# A genuine batch is about 30,000 pickle operations (10,000 labels, 10,000 file names, their memo
# entries). Each operation may create an object (one byte of input, 72 of memory for an empty list), so
# their number is capped too, at about 8 times that.
MAX_PICKLE_OPS = 2**18
MAX_MEMBERS = 100  # the official archive holds 8 (the folder and 7 files)
MAX_ARCHIVE_BYTES = 8 * MAX_BATCH_BYTES  # the official archive's members add up to 186 MB


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
    """Unpickles plain data only: any class or function outside numpy's array rebuilders is refused.

    The two allowed calls that create memory are bounded: ``_codecs.encode`` only turns text into bytes
    with latin-1 (the one use pickle makes of it; ``encode(encode(b, 'hex'), 'hex')`` would double a
    string per call), and all it creates counts against :data:`MAX_BATCH_BYTES`; ``_reconstruct`` only
    makes the empty placeholder numpy's pickles ask for. Anything else an unpickled object holds is bytes
    of the input itself (numpy's ``__setstate__`` shares them rather than copying).
    """

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self.created = 0

    def _spend(self, nbytes: int) -> None:
        self.created += nbytes
        if self.created > MAX_BATCH_BYTES:
            raise pickle.UnpicklingError(
                f"refused to create more than {MAX_BATCH_TEXT} while unpickling, the most a CIFAR batch holds"
            )

    def _encode(self, obj, encoding="utf-8", errors="strict"):
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(
                f"refused to call _codecs.encode on {type(obj).__name__} with {encoding!r}: pickle stores "
                "bytes only as latin-1 text"
            )
        self._spend(len(obj))
        return obj.encode("latin1", errors)

    def _reconstruct(self, subtype, shape, dtype):
        # numpy pickles an array as an empty one of shape (0,) that __setstate__ then fills
        if subtype is not np.ndarray or not isinstance(shape, tuple) or 0 not in shape:
            raise pickle.UnpicklingError(
                "refused to rebuild an array other than numpy's empty (0,) placeholder: a CIFAR batch holds "
                "only plain arrays"
            )
        return np.ndarray.__new__(subtype, shape, dtype)

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) == ("_codecs", "encode"):
            return self._encode
        if name == "_reconstruct" and (module, name) in _ALLOWED_GLOBALS:
            return self._reconstruct
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds only plain data")


def check_pickle_ops(data: bytes, what: str) -> None:
    """Scan the pickle's operations before unpickling, so that a small file cannot make the unpickler
    allocate much: refuse more than :data:`MAX_PICKLE_OPS` of them, a memo slot beyond that (the
    unpickler grows its memo table to the slot asked for: 9 bytes naming slot 2**26 take 1 GiB), and a
    length that runs past the data (the unpickler allocates the declared length before reading)."""
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(data), 1):
            if count > MAX_PICKLE_OPS:
                raise DataError(
                    f"{what}: more than {MAX_PICKLE_OPS:,} pickle operations (a genuine CIFAR-10 batch has "
                    "about 30,000); this file is not a genuine CIFAR-10 batch"
                )
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) >= MAX_PICKLE_OPS:
                raise DataError(
                    f"{what}: asks for pickle memo slot {int(arg):,} (a genuine CIFAR-10 batch uses fewer "
                    f"than {MAX_PICKLE_OPS:,}); this file is not a genuine CIFAR-10 batch"
                )
    except DataError:
        raise
    except Exception as e:  # an unknown opcode, a length past the end: not a pickle we can read
        raise DataError(f"{what}: cannot be read as a CIFAR-10 batch ({type(e).__name__}: {e})") from None


def safe_load_pickle(data: bytes, what: str) -> object:
    check_pickle_ops(data, what)
    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{what}: {e}; this file is not a genuine CIFAR-10 batch") from None
    except Exception as e:  # truncated or garbled bytes raise many kinds of errors
        raise DataError(f"{what}: cannot be read as a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    _reject_object_arrays(obj, what)
    return obj


def _reject_object_arrays(obj: object, what: str) -> None:
    """Walk dicts, lists and tuples for object arrays, each container once: the pickle memo lets a few
    bytes describe a list holding the same list twice, forty levels deep (2**40 paths, one object each)."""
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise DataError(f"{what}: holds an object array; a CIFAR-10 batch holds only numbers")
        if isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)


def parse_batch(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file's bytes -> images (N, 32, 32, 3) uint8 and labels (N,) int32.

    ``what`` names the file in errors. The labels must be N whole numbers in 0..9, as a list (the
    official format) or a one-dimensional integer array. Floats are refused even when whole (1.0): the
    official batches hold Python ints, so a float marks a file rewritten by something else, and a rule on
    the type refuses such a file whole rather than depending on which values it happens to hold.
    """
    batch = safe_load_pickle(data, what)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{what}: expected a dict with b'data' and b'labels'; this is not a CIFAR-10 batch")
    images = batch[b"data"]
    if not isinstance(images, np.ndarray) or images.ndim != 2 or images.shape[1] != 3072:
        got = f"shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{what}: expected b'data' to be an array of shape (N, 3072), got {got}")
    if images.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 pixels, got {images.dtype}")
    labels = _parse_labels(batch[b"labels"], len(images), what)
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _parse_labels(labels: object, n: int, what: str) -> np.ndarray:
    """A batch's labels, checked in Python before NumPy sees them: ``np.asarray`` would turn strings,
    nested lists or ints beyond 64 bits into arrays that fail later, or silently cast ``True`` to 1."""
    fix = "a CIFAR-10 batch holds a flat list of integer labels 0..9; replace the file with the official one"
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{what}: labels are an array of {labels.dtype} with shape {labels.shape}; {fix}")
        values = labels
    elif isinstance(labels, (list, tuple)):
        for i, v in enumerate(labels):
            if type(v) is not int:  # bool is a subclass of int: refused too
                raise DataError(f"{what}: label {i} is {reprlib.repr(v)} ({type(v).__name__}); {fix}")
        values = labels
    else:
        raise DataError(f"{what}: labels are a {type(labels).__name__}; {fix}")
    if len(values) != n:
        raise DataError(f"{what}: {n} images but {len(values)} labels; {fix}")
    if n and (min(values) < 0 or max(values) >= len(CIFAR10_CLASSES)):
        bad = [int(v) for v in values if not 0 <= v < len(CIFAR10_CLASSES)]
        raise DataError(
            f"{what}: label {reprlib.repr(bad[0])} is outside 0..{len(CIFAR10_CLASSES) - 1} "
            f"({len(bad)} such labels); {fix}"
        )
    return np.asarray(values, dtype=np.int32)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 sources
# --------------------------------------------------------------------------------------------------


def _read_cifar_files(read) -> tuple[np.ndarray, ...]:
    """``read(name)`` returns the bytes of a batch file and how to name it in errors; returns the four
    arrays."""
    train = [parse_batch(*read(name)) for name in CIFAR10_TRAIN]
    x_test, y_test = parse_batch(*read(CIFAR10_TEST))
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def _too_big(subject: str, size: int, fix: str) -> DataError:
    return DataError(
        f"{subject} is {size:,} bytes, over the {MAX_BATCH_TEXT} cap on a CIFAR-10 batch (a genuine one is "
        f"31 MB); {fix}"
    )


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (member.issym() or member.islnk()):
        raise DataError(
            f"{archive}: member '{name}' escapes the archive's folder (absolute path, '..' "
            "or link); refusing a tampered archive, download it again"
        )
    if member.isfile() and member.size > MAX_BATCH_BYTES:
        raise _too_big(f"{archive}: member '{name}'", member.size, _ARCHIVE_FIX)


_ARCHIVE_FIX = "this is not the CIFAR-10 python archive, download it again"


class _CappedStream:
    """The decompressed archive as tarfile reads it, refusing any one read over the cap. tarfile reads an
    extended header (pax, GNU long name) whole at the size the header declares, before it hands us the
    member: a 200-byte archive could otherwise make it allocate gigabytes."""

    def __init__(self, raw, archive: Path):
        self.raw, self.archive = raw, archive

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:  # tarfile never asks for "all of it"; bound it anyway
            size = MAX_BATCH_BYTES + tarfile.BLOCKSIZE
        elif size > MAX_BATCH_BYTES + tarfile.BLOCKSIZE:
            raise _too_big(
                f"{self.archive}: an extended tar header (pax or GNU long name)", size, _ARCHIVE_FIX
            )
        return self.raw.read(size)

    def seek(self, *args) -> int:
        return self.raw.seek(*args)

    def tell(self) -> int:
        return self.raw.tell()


def _open_decompressed(path: Path):
    """The archive's tar stream, decompressed as ``tarfile.open(path, "r:*")`` would (gzip, bzip2, xz or
    none), so that :class:`_CappedStream` can sit between it and tarfile."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(path, "rb")
    return open(path, "rb")


def read_cifar_archive(path: Path) -> tuple[np.ndarray, ...]:
    """Read the official ``cifar-10-python.tar.gz`` without extracting it."""
    try:
        with (
            _open_decompressed(path) as raw,
            tarfile.open(fileobj=_CappedStream(raw, path), mode="r:") as tar,
        ):
            members, count, total = {}, 0, 0
            for member in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise DataError(
                        f"{path}: more than {MAX_MEMBERS} members (the CIFAR-10 archive has 8); "
                        + _ARCHIVE_FIX
                    )
                _check_member(member, path)
                if member.isfile():
                    total += member.size
                    if total > MAX_ARCHIVE_BYTES:
                        raise DataError(
                            f"{path}: its members add up to more than {MAX_ARCHIVE_BYTES // 2**20} MiB (the "
                            f"CIFAR-10 archive's to 186 MB); {_ARCHIVE_FIX}"
                        )
                    members[Path(member.name).name] = member

            def read(name: str) -> tuple[bytes, str]:
                if name not in members:
                    raise DataError(
                        f"{path}: has no {CIFAR10_FOLDER}/{name}; is this the CIFAR-10 python archive?"
                    )
                member = members[name]
                what = f"{path}: member '{member.name}'"
                # the size was checked against the cap; tarfile reads no further than it
                data = tar.extractfile(member).read(min(member.size, MAX_BATCH_BYTES))
                if len(data) > MAX_BATCH_BYTES:
                    raise _too_big(what, len(data), _ARCHIVE_FIX)
                return data, what

            return _read_cifar_files(read)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        raise DataError(
            f"{path}: the archive is truncated or corrupt ({type(e).__name__}: {e}); download it again"
        ) from None


def read_cifar_folder(path: Path) -> tuple[np.ndarray, ...]:
    """Read the extracted ``cifar-10-batches-py/`` folder (or the folder holding it)."""
    if (path / CIFAR10_FOLDER).is_dir():
        path = path / CIFAR10_FOLDER
    fix = f"replace it with the one from the official archive ({CIFAR10_URL})"

    def read(name: str) -> tuple[bytes, str]:
        file = path / name
        if not file.is_file():
            raise DataError(
                f"{path}: missing {name}; expected the {CIFAR10_FOLDER}/ layout "
                f"({', '.join(CIFAR10_TRAIN)}, {CIFAR10_TEST})"
            )
        try:
            size = file.stat().st_size
            if size > MAX_BATCH_BYTES:
                raise _too_big(str(file), size, fix)
            with open(file, "rb") as f:
                # at most one byte past what stat said (Python allocates the size asked for up front),
                # and never past the cap, even if the file grew since
                data = f.read(min(size, MAX_BATCH_BYTES) + 1)
        except OSError as e:
            raise DataError(f"{file}: cannot be read ({type(e).__name__}: {e.strerror or e})") from None
        if len(data) > MAX_BATCH_BYTES:
            raise _too_big(str(file), len(data), fix)
        return data, str(file)

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

"""Atomic file writes: a kill at any moment leaves the old file or the new one, never a torn one.

Every writer puts its bytes in a temporary file in the target's directory, flushes and fsyncs it, then
``os.replace``s it over the target (atomic on POSIX when both are on one file system) and fsyncs the
directory so the rename itself survives a power cut. The new file gets the mode a plain write would give
it (``0o666`` less the umask), or the mode of the file it replaces, not ``mkstemp``'s private ``0o600``.

A kill between the write and the rename leaves a hidden temporary (``.NAME.XXXXXXXX.EXT``);
:func:`sweep_temporaries` removes those when a run starts again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system allows opening a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target`` atomically.

    For writers that insist on opening the file themselves (``model.save``, ``savefig``). ``suffix``
    defaults to the target's, since both of those pick the format from the extension.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _mode_for(target: Path) -> int:
    """The replaced file's permission bits, or those a plain ``open(target, "w")`` would create."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)$")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_path`'s temporaries (``.NAME.XXXXXXXX`` + NAME's suffix)."""
    match = _TEMPORARY.match(name)
    return bool(match) and match["name"].endswith(match["suffix"])


def sweep_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed writer left in ``folder`` (not below it); returns what went."""
    removed = []
    for path in Path(folder).glob(".*"):
        if path.is_file() and is_temporary(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_with(target: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically write ``target`` with a function that writes to a given path."""
    with atomic_path(target) as tmp:
        writer(tmp)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

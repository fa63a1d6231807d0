"""keras-tuner's state files, written atomically so that a killed search can always resume.

keras-tuner 1.4 writes ``oracle.json``, ``tuner0.json`` and every ``trial.json`` by opening the file for
writing and writing the JSON in place: a kill (Ctrl-C twice, an out-of-memory kill, a laptop lid) in the
middle of a write leaves a torn file, and the next run cannot reload the search at all. Every one of those
writes goes through ``keras_tuner.src.utils.save_json``; :func:`install` replaces it with a version that
writes local files through :func:`recipes.engine.atomic.write_text` (temporary file, fsync, rename), so a kill
leaves the old state or the new one. Remote paths (``gs://``) keep keras-tuner's own writer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keras_tuner.src import utils as kt_utils

from recipes.engine.atomic import write_text

_original_save_json = kt_utils.save_json


def _is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def save_json_atomically(path: str | os.PathLike, obj) -> str:
    """Drop-in for keras-tuner's ``save_json``: same JSON text and return value, written atomically."""
    if _is_remote(path):
        return _original_save_json(path, obj)
    text = json.dumps(obj)
    write_text(path, text)
    return text


def install() -> None:
    """Route keras-tuner's state writes through :func:`save_json_atomically` (idempotent)."""
    kt_utils.save_json = save_json_atomically


def torn_files(directory: str | os.PathLike) -> list[Path]:
    """keras-tuner state files under ``directory`` that do not parse (torn by a kill mid-write)."""
    torn = []
    for path in sorted(Path(directory).rglob("*.json")):
        try:
            json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            torn.append(path)
    return torn

"""The run directory: where a run writes, what it records about itself, and whether it may write there.

Before any data is loaded, :func:`open_run_dir` makes sure that the folder can be created and written,
that it is empty or one of our own run directories (a folder of the user's is never overwritten), and
that no other command is writing there (a lock the kernel releases when its process dies, however it
dies); it also sweeps the temporaries a killed write left. :func:`check_resume` then refuses to continue
a run of another recipe or config.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from recipes.config import ConfigError, diff, from_dict
from recipes.engine.atomic import is_temporary, sweep_temporaries
from recipes.registry import Recipe

LOCK_NAME = ".run.lock"
# The first files a run writes: a folder holding one of them is a run directory of ours.
RUN_MARKERS = ("run_info.json", "config.yaml", "state.json")


class RunError(RuntimeError):
    """A run that cannot start or resume. The message is one line, fit to show a user."""


def default_out_dir(run_name: str) -> Path:
    """A new folder ``runs/<run_name>-<timestamp>``, created here; ``-2``, ``-3``... when another run
    started in the same second."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{run_name}-{stamp}"
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise RunError(
                f"cannot create {candidate} ({e.strerror}); set trainer.out_dir=DIR to a folder you can write"
            ) from None
    raise RunError(f"{base}-2 .. -999 all exist; set trainer.out_dir=DIR")


def resolve_out_dir(cfg, run_name: str) -> Path:
    """``trainer.out_dir``, defaulting (and recorded in the config) to ``runs/<run_name>-<timestamp>``."""
    if not cfg.trainer.out_dir:
        cfg.trainer.out_dir = str(default_out_dir(run_name))
    return Path(cfg.trainer.out_dir)


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and write a byte there, or raise :class:`RunError` saying why not."""
    where = f"trainer.out_dir={out_dir}"
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"{where} is a file, not a folder; choose a folder for the run's outputs")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=out_dir)
        try:
            os.write(fd, b"0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise RunError(
            f"{where}: a part of that path is a file, not a folder; choose another folder"
        ) from None
    except OSError as e:
        raise RunError(f"{where}: cannot write there ({e.strerror}); {_fix_for(e)}, then run again") from None


def _fix_for(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space (or choose a folder on another disk)"
    return "choose a folder you can write, or change its permissions"


def write_failure(error: OSError, out_dir: Path) -> str:
    """One line for a write that failed mid-run (atomic writes leave every earlier file whole)."""
    what = error.filename or out_dir
    return (
        f"writing {what} failed ({error.strerror or error}); the files written before are whole and the last "
        f"completed epoch's checkpoint is kept: {_fix_for(error)}, then run the same command to resume"
    )


def check_ours(out_dir: Path, markers: tuple[str, ...] = RUN_MARKERS) -> None:
    """Refuse a non-empty folder that holds none of ``markers`` (the first files a command of ours
    writes there): its files are the user's."""
    entries = [p.name for p in out_dir.iterdir() if p.name != LOCK_NAME and not is_temporary(p.name)]
    entries = [name for name in entries if not name.startswith("workertemp_")]  # a multi-worker run's
    if entries and not any(name in entries for name in markers):
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunError(
            f"trainer.out_dir={out_dir} already holds files that are not a run's ({shown}); "
            "choose a new or empty folder (nothing there was changed)"
        )


@contextlib.contextmanager
def open_run_dir(out_dir: Path, markers: tuple[str, ...] = RUN_MARKERS) -> Iterator[Path]:
    """Claim ``out_dir`` for this command while the block runs (see the module's docstring); ``markers``
    name the files that make a non-empty folder one of ours (a run's, by default)."""
    check_writable(out_dir)
    check_ours(out_dir, markers)
    with open(out_dir / LOCK_NAME, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise RunError(
                f"trainer.out_dir={out_dir} is in use by a command still running ({holder}); wait for it "
                "to end, or choose another folder"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        for folder in (out_dir, out_dir / "checkpoints"):
            if folder.is_dir():
                sweep_temporaries(folder)
        try:
            yield out_dir
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "numpy", "keras-tuner", "pandas"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def git_revision() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_info(recipe: Recipe, cfg, overrides, data) -> dict:
    """What ran, on what: ``run_info.json``."""
    return {
        "recipe": recipe.name,
        "overrides": list(overrides),
        "seed": cfg.trainer.seed,
        "git_revision": git_revision(),
        "versions": library_versions(),
        "command": sys.argv,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "data_source": data.source,
        "train_examples": len(data.x_train),
        "val_examples": len(data.x_val),
        "test_examples": len(data.x_test),
    }


def saved_recipe(out_dir: Path) -> str | None:
    """The recipe recorded in ``run_info.json``, or None when it cannot be read."""
    import json

    try:
        info = json.loads((out_dir / "run_info.json").read_text())
    except (OSError, ValueError):
        return None
    return info.get("recipe") if isinstance(info, dict) else None


def check_resume(out_dir: Path, recipe: Recipe, cfg) -> None:
    """Refuse to resume a run of another recipe or config (naming what differs), or one whose config
    cannot be read. The folder itself is not compared: however it is spelled, it is this one."""
    previous = saved_recipe(out_dir)
    if previous is not None and previous != recipe.name:
        raise ConfigError(
            f"{out_dir} holds a run of recipe '{previous}', not '{recipe.name}'; run recipe={previous} with "
            "the same overrides to resume it, or choose another trainer.out_dir for a new run"
        )
    saved_path = out_dir / "config.yaml"
    try:
        saved_dict = yaml.safe_load(saved_path.read_text())
        if not isinstance(saved_dict, dict):
            raise ValueError("not a mapping")
        saved = from_dict(recipe.config_class, saved_dict)
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as e:
        reason = "missing" if isinstance(e, FileNotFoundError) else "unreadable"
        raise RunError(
            f"{out_dir} holds a checkpointed run whose config.yaml is {reason}, so it cannot be resumed "
            "safely; choose another trainer.out_dir (or delete the folder) to start afresh"
        ) from None
    ignored = ("trainer.verbose", "trainer.out_dir", "data.augment_on")  # the same batches either way
    changed = {k: v for k, v in diff(saved, cfg).items() if k not in ignored}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(
            f"{out_dir} holds a run with a different config ({detail}); use the same "
            "overrides to resume it, or another trainer.out_dir for a new run"
        )

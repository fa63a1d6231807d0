"""The run directory: where a run writes, what it records about itself, and whether it may resume there."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path

from recipes.config import ConfigError, diff, from_dict
from recipes.registry import Recipe


def default_out_dir(run_name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{run_name}-{stamp}"


def resolve_out_dir(cfg, run_name: str) -> Path:
    """``trainer.out_dir``, defaulting (and recorded in the config) to ``runs/<run_name>-<timestamp>``."""
    if not cfg.trainer.out_dir:
        cfg.trainer.out_dir = str(default_out_dir(run_name))
    return Path(cfg.trainer.out_dir)


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


def check_resume_config(out_dir: Path, recipe: Recipe, cfg) -> None:
    """Refuse to resume a run directory with a different config, naming the keys that differ."""
    import yaml

    saved_path = out_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved_dict = yaml.safe_load(saved_path.read_text())
    saved = from_dict(recipe.config_class, saved_dict)
    changed = {k: v for k, v in diff(saved, cfg).items() if k not in ("trainer.verbose",)}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(
            f"{out_dir} holds a run with a different config ({detail}); use the same "
            "overrides to resume it, or another trainer.out_dir for a new run"
        )

"""Faults and careless inputs around a run directory: each class tried with several instances."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import cli
import recipes.data
import recipes.engine.atomic
from recipes import run
from recipes.engine.atomic import write_json, write_text
from recipes.engine.run_dir import LOCK_NAME, default_out_dir
from tests import processes
from tests.conftest import ROOT

TINY = [
    "data.name=sample",
    "data.train_limit=256",
    "data.val_size=100",
    "model.width=16",
    "trainer.verbose=silent",
]


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["run", "recipe=mlp", *TINY, *args])
    return code, capsys.readouterr().err


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the data is loaded: refusals must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the data was loaded before the run directory was checked")

    monkeypatch.setattr(recipes.engine.run, "load_data", refuse)


import recipes.engine.run  # noqa: E402  (after the fixture's target is named)


@pytest.mark.parametrize(
    "files",
    [
        {"notes.txt": "mine"},
        {"metrics.json": "{}", "model.keras": "not ours"},  # outputs' names, but no run of ours
        {"history.csv": "epoch\n1\n"},
        {"data/x.npy": "x"},  # only a sub-folder
    ],
)
def test_a_folder_of_the_users_is_refused_and_left_alone(tmp_path, capsys, no_data, files):
    out = tmp_path / "mine"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, err = _cli(capsys, f"trainer.out_dir={out}")
    assert code == 2 and "already holds files that are not a run's" in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("setup", ["file", "under_a_file", "probe_enospc", "probe_eacces"])
def test_an_unwritable_out_dir_is_one_line_before_the_data(tmp_path, capsys, no_data, monkeypatch, setup):
    out = tmp_path / "run"
    if setup == "file":
        out.write_text("a file")
    elif setup == "under_a_file":
        (tmp_path / "f").write_text("a file")
        out = tmp_path / "f" / "run"
    else:  # root ignores permission bits: simulate what the write probe meets on a full or read-only disk
        code = errno.ENOSPC if setup == "probe_enospc" else errno.EACCES

        def failing(fd, data):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(recipes.engine.run_dir.os, "write", failing)
    code, err = _cli(capsys, f"trainer.out_dir={out}")
    assert code == 2 and err.startswith("error: trainer.out_dir=") and err.count("\n") == 1, err
    expected = {
        "file": "is a file",
        "under_a_file": "part of that path is a file",
        "probe_enospc": "free some space",
        "probe_eacces": "choose a folder you can write",
    }[setup]
    assert expected in err


def test_a_disk_that_fills_mid_run_stops_with_one_line_and_the_same_command_resumes(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    args = [f"trainer.out_dir={out}", "trainer.epochs=3"]
    replace = os.replace

    def full_at_epoch_2(src, dst):
        if os.path.basename(dst) == "epoch-002.keras":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return replace(src, dst)

    monkeypatch.setattr(recipes.engine.atomic.os, "replace", full_at_epoch_2)
    code, err = _cli(capsys, *args)
    assert code == 2 and "No space left on device" in err and "run the same command to resume" in err, err
    assert err.count("\n") == 1 and json.loads((out / "state.json").read_text())["epochs_completed"] == 1
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no litter
    monkeypatch.setattr(recipes.engine.atomic.os, "replace", replace)  # space again
    code, err = _cli(capsys, *args)
    assert code == 0, err
    rows = (out / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 2-epoch mlp run, trained once for the module; tests take copies of it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run("mlp", [*TINY, f"trainer.out_dir={out}", "trainer.epochs=2"], echo=lambda *a: None)
    return out


def _finished_mlp(out, finished) -> list[str]:
    """A copy of the finished run in ``out``, and the overrides that resume it there."""
    shutil.copytree(finished, out)
    return [*TINY, f"trainer.out_dir={out}", "trainer.epochs=2"]


def test_resuming_checks_the_recipe_and_a_readable_config(tmp_path, capsys, finished):
    out = tmp_path / "run"
    _finished_mlp(out, finished)
    for other in ("mlp_dropconnect", "resnet_small"):
        code = cli.main(["run", f"recipe={other}", *TINY, f"trainer.out_dir={out}", "trainer.epochs=2"])
        err = capsys.readouterr().err
        assert code == 2 and "holds a run of recipe 'mlp'" in err and "recipe=mlp" in err, err
    config = (out / "config.yaml").read_text()
    for damage in ("", "[1, 2", "- a list\n- of things\n", None):
        if damage is None:
            (out / "config.yaml").unlink()
        else:
            (out / "config.yaml").write_text(damage)
        code, err = _cli(capsys, f"trainer.out_dir={out}", "trainer.epochs=2")
        assert code == 2 and "config.yaml is" in err and "cannot be resumed" in err, (damage, err)
    (out / "config.yaml").write_text(config)
    assert _cli(capsys, f"trainer.out_dir={out}", "trainer.epochs=2")[0] == 0


def test_the_same_folder_resumes_however_it_is_spelled(tmp_path, monkeypatch, finished):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(finished, tmp_path / "runs" / "a")
    for spelling in ("runs/a/", "./runs/a", str(tmp_path / "runs" / "a"), "runs//a", "runs/../runs/a"):
        messages = []
        result = run("mlp", [*TINY, f"trainer.out_dir={spelling}", "trainer.epochs=2"], echo=messages.append)
        assert result.resumed_from == 2 and any("Resumed" in m for m in messages), spelling


@pytest.mark.parametrize(
    "state",
    [
        [],
        {"epochs_completed": "1"},
        {
            "epochs_completed": 3,
            "checkpoint": "epoch-003.keras",
            "history": [],
            "train_seconds": 1.0,
            "best_val_accuracy": None,
        },
        {
            "epochs_completed": 1,
            "checkpoint": "x",
            "history": ["row"],
            "train_seconds": 1.0,
            "best_val_accuracy": None,
        },
        {
            "epochs_completed": True,
            "checkpoint": "x",
            "history": [],
            "train_seconds": 1.0,
            "best_val_accuracy": None,
        },
    ],
)
def test_a_hand_edited_state_is_one_line(tmp_path, capsys, state, finished):
    out = tmp_path / "run"
    _finished_mlp(out, finished)
    write_json(out / "state.json", state)
    code, err = _cli(capsys, f"trainer.out_dir={out}", "trainer.epochs=2")
    assert code == 2 and "state.json is not a run state" in err and err.count("\n") == 1, err


def test_odd_checkpoint_names_are_ignored_and_the_fallback_is_named(tmp_path, finished):
    out = tmp_path / "run"
    args = _finished_mlp(out, finished)
    ckpts = out / "checkpoints"
    (ckpts / "epoch-abc.keras").write_bytes(b"junk")
    (ckpts / "epoch-.keras").write_bytes(b"junk")
    newest = ckpts / "epoch-002.keras"
    newest.write_bytes(newest.read_bytes()[:500])
    (out / "metrics.json").unlink()
    messages = []
    with pytest.warns(UserWarning, match="epoch-002.keras is damaged"):
        result = run("mlp", args, echo=messages.append)
    assert result.resumed_from == 1
    resumed = next(m for m in messages if m.startswith("Resumed"))
    assert "checkpoint epoch-001.keras" in resumed, resumed


def test_temporaries_a_kill_left_are_swept_and_other_hidden_files_kept(tmp_path, finished):
    out = tmp_path / "run"
    args = _finished_mlp(out, finished)
    litter = [out / ".state.json.ab12cd34.json", out / "checkpoints" / ".epoch-002.keras.zz9y8x7w.keras"]
    keep = [out / ".notes", out / ".gitignore.txt"]
    for path in litter + keep:
        path.write_bytes(b"x" * 100)
    run("mlp", args, echo=lambda *a: None)
    assert not any(p.exists() for p in litter) and all(p.exists() for p in keep)


def test_a_second_command_on_the_same_folder_is_refused_while_the_first_runs(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / LOCK_NAME, "a+") as held:  # as a running command holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, err = _cli(capsys, f"trainer.out_dir={out}", "trainer.epochs=1")
        assert code == 2 and "is in use by a command still running" in err, err
    # a killed holder leaves no stuck lock: the kernel drops it with the process
    holder = (
        "import fcntl, os, signal, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", holder, str(out / LOCK_NAME)])
    assert proc.returncode == -signal.SIGKILL
    code, err = _cli(capsys, f"trainer.out_dir={out}", "trainer.epochs=1")
    assert code == 0, err


def test_default_run_folders_started_in_the_same_second_are_distinct(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folders = [default_out_dir("mlp") for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() for f in folders)


@pytest.mark.parametrize(
    "umask, existing, expected", [(0o022, None, 0o644), (0o002, None, 0o664), (0o022, 0o640, 0o640)]
)
def test_outputs_get_the_mode_a_plain_write_gives(tmp_path, umask, existing, expected):
    target = tmp_path / "metrics.json"
    if existing is not None:
        target.write_text("{}")
        target.chmod(existing)
    old = os.umask(umask)
    try:
        write_text(target, "{}")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == expected


# ---- SIGKILL at each write site, then the same command again -------------------------------------

RUN = ["run", "recipe=mlp", *TINY, "trainer.epochs=2"]


def _whole_run(out) -> None:
    """Every file of a finished 2-epoch run parses, no epoch is lost or repeated, no temporary is left."""
    import keras
    import yaml

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 2
    state = json.loads((out / "state.json").read_text())
    assert state["epochs_completed"] == 2 and [r["epoch"] for r in state["history"]] == [1, 2]
    rows = (out / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2"]
    yaml.safe_load((out / "config.yaml").read_text())
    keras.saving.load_model(out / "model.keras")
    for png in out.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.rglob(".*") if p.name != LOCK_NAME]


def _killed_at_write(site: str, args: list[str]) -> None:
    """``cli.py ARGS`` in a process that SIGKILLs itself in the write ``site`` (NAME:N) names."""
    killed = processes.run(ROOT / "tests" / "kill_points.py", "write", site, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


@pytest.mark.parametrize(
    "site",
    ["epoch-002.keras:1", "state.json:2", "history.csv:2", "loss.png:1", "metrics.json:1", "model.keras:1"],
)
def test_a_kill_at_each_write_site_resumes_or_completes_whole(tmp_path, site):
    out = tmp_path / "run"
    args = [*RUN, f"trainer.out_dir={out}"]
    _killed_at_write(site, args)
    assert cli.main(args) == 0
    _whole_run(out)


@pytest.mark.parametrize("site", ["oracle.json:3", "trial.json:4"])
def test_a_kill_at_a_write_of_the_tuners_state_resumes_the_search_whole(tmp_path, site):
    import pandas as pd

    out = tmp_path / "search"
    args = [
        "tune",
        "recipe=mlp",
        "tuner=grid",
        "tune.max_trials=3",
        *TINY,
        "trainer.epochs=1",
        f"trainer.out_dir={out}",
    ]
    _killed_at_write(site, args)
    assert cli.main(args) == 0
    for path in (out / "tuner").rglob("*.json"):
        json.loads(path.read_text())  # every state file whole
    frame = pd.read_csv(out / "trials.csv")
    assert len(frame) == 3 and (frame["status"] == "COMPLETED").all(), frame
    assert not [p for p in out.rglob(".*") if p.is_file() and p.name != LOCK_NAME]

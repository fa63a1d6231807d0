"""keras-tuner search spaces, coarse-to-fine narrowing, trial tables and resumable searches."""

import json
import math
import signal
import socket
import time

import keras_tuner as kt
import numpy as np
import pandas as pd
import pytest

from tests import processes
from tests.conftest import ROOT
from tuners import coarse_to_fine, hypermodel, narrow_space, trials_frame

FIXED = {"model__width": 32, "trainer__batch_size": 64}


@pytest.fixture(scope="module")
def tiny(sample_arrays):
    x, y, xt, yt = sample_arrays
    return x[:256], y[:256], (xt[:128], yt[:128])


def _mlp_tuner(tmp_path, tuner_class=kt.RandomSearch, **kwargs) -> kt.Tuner:
    """A search over the mlp recipe in ``tmp_path/p`` (reloads what an earlier one left there)."""
    return tuner_class(
        hypermodel("mlp", **FIXED),
        objective="val_accuracy",
        directory=str(tmp_path),
        project_name="p",
        **kwargs,
    )


def _space(recipe):
    hp = kt.HyperParameters()
    hypermodel(recipe).recipe.search_space(hp)
    return {p.name: p for p in hp.space}


def test_search_spaces_are_named_after_config_keys_with_defaults():
    hm = hypermodel("resnet_small")
    cfg = hm.config(kt.HyperParameters())  # an empty HyperParameters: every default comes out
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer.weight_decay == 5e-3 and cfg.model.width == 16
    assert cfg.loss.label_smoothing == 0.1 and cfg.schedule.warmup_epochs == 2.0
    space = _space("resnet_small")
    for key in (
        "optimizer.lr",
        "optimizer.weight_decay",
        "optimizer.momentum",
        "schedule.warmup_epochs",
        "loss.label_smoothing",
        "model.width",
    ):
        assert key in space
    assert space["optimizer.lr"].sampling == "log" and space["optimizer.weight_decay"].sampling == "log"
    assert {"model.activation", "model.init", "model.dropout"} <= set(_space("mlp"))


def test_the_mlp_space_leaves_out_what_the_notes_advise_against():
    space = _space("mlp")
    assert "sigmoid" not in space["model.activation"].values
    assert {"relu", "tanh", "maxout"} <= set(space["model.activation"].values)
    assert space["model.init"].values == ["auto"]  # Xavier for tanh, He for ReLU: no mismatched pairs
    cfg = hypermodel("mlp").config(kt.HyperParameters())
    assert cfg.model.activation == "relu" and cfg.model.init == "auto"


def test_space_overrides_bring_back_any_value_of_the_config_key():
    from recipes.config import ConfigError
    from tuners.search import space_overrides

    recipe = hypermodel("mlp").recipe
    hp = space_overrides(recipe, {"model.activation": "relu,sigmoid", "model.init": "auto,small_random"})
    values = {p.name: p.values for p in hp.space}
    assert values == {"model.activation": ["relu", "sigmoid"], "model.init": ["auto", "small_random"]}
    with pytest.raises(ConfigError, match="sigmod is not one of .*did you mean 'sigmoid'"):
        space_overrides(recipe, {"model.activation": "relu,sigmod"})
    widths = space_overrides(hypermodel("resnet_small").recipe, {"model.width": "8,64"})
    assert widths.space[0].values == [8, 64]  # typed as the key: integers


def test_a_short_trial_trains_the_final_schedule_compressed():
    hm = hypermodel("resnet_small")  # 30 epochs, 2 of them warmup
    final = hm.trial_config(kt.HyperParameters())
    assert final.trainer.epochs == 30 and final.schedule.warmup_epochs == 2.0
    short = hm.trial_config(kt.HyperParameters(), 3)
    assert short.trainer.epochs == 3 and short.schedule.warmup_epochs == pytest.approx(2.0 * 3 / 30)
    assert hm.trial_config(kt.HyperParameters(), 30) == final


def test_log_uniform_sampling_covers_decades_evenly():
    lr = _space("resnet_small")["optimizer.weight_decay"]  # 1e-4 .. 1e-1: three decades
    samples = np.array([lr.random_sample(seed) for seed in range(6000)])
    assert samples.min() >= 1e-4 and samples.max() <= 1e-1
    counts = np.histogram(np.log10(samples), bins=[-4, -3, -2, -1])[0]
    # 2,000 expected per decade; the binomial std is ~37, allow 4 of them
    assert np.all(np.abs(counts - 2000) < 150), counts


def test_random_search_and_trials_frame(tmp_path, tiny):
    x, y, val = tiny
    tuner = _mlp_tuner(tmp_path, max_trials=3, seed=1)
    tuner.search(x, y, validation_data=val, epochs=1, verbose=0)  # raw 0-255 images, as keras-tuner documents
    frame = trials_frame(tuner)
    assert len(frame) == 3 and frame["trial_id"].is_unique
    for column in (
        "trial_id",
        "stage",
        "status",
        "optimizer.lr",
        "model.activation",
        "val_accuracy",
        "best_epoch",
        "wall_seconds",
    ):
        assert column in frame.columns
    assert (frame["status"] == "COMPLETED").all() and (frame["wall_seconds"] > 0).all()
    path = tmp_path / "trials.csv"
    frame.to_csv(path, index=False)
    again = pd.read_csv(path, dtype={"trial_id": str})
    pd.testing.assert_frame_equal(again[frame.columns[3:-1]], frame[frame.columns[3:-1]], check_dtype=False)


def test_coarse_to_fine_narrows_around_the_best_and_stage_two_stays_inside(tmp_path, tiny):
    x, y, val = tiny
    result = coarse_to_fine(
        hypermodel("mlp", **FIXED),
        x,
        y,
        val,
        directory=str(tmp_path),
        coarse_trials=4,
        coarse_epochs=1,
        fine_trials=3,
        fine_epochs=1,
        top_k=2,
        verbose=0,
    )
    original = {p.name: p for p in result.coarse.oracle.get_space().space}
    best = [t.hyperparameters.values for t in result.coarse.oracle.get_best_trials(2)]
    stage2 = result.frame[result.frame["stage"] == 2]
    assert len(stage2) == 3 and (result.frame["stage"] == 1).sum() == 4
    for param in result.narrowed.space:
        if isinstance(param, kt.engine.hyperparameters.Float):
            wide = original[param.name]
            assert wide.min_value <= param.min_value and param.max_value <= wide.max_value
            f = math.log if param.sampling == "log" else float
            assert f(param.max_value) - f(param.min_value) < f(wide.max_value) - f(wide.min_value)
            for values in best:
                assert param.min_value <= values[param.name] <= param.max_value
            assert stage2[param.name].between(param.min_value, param.max_value).all()
        else:
            assert set(stage2[param.name]) <= set(param.values)


def test_narrow_space_in_log_space():
    hp = kt.HyperParameters()
    hp.Float("optimizer.lr", 1e-4, 1.0, sampling="log")
    narrowed = narrow_space(hp.space, [{"optimizer.lr": 1e-3}, {"optimizer.lr": 1e-2}], margin=0.5)
    lr = narrowed.space[0]
    assert lr.min_value == pytest.approx(10**-3.5) and lr.max_value == pytest.approx(10**-1.5)


def test_diverging_trials_fail_with_their_reason_and_end_the_search(tmp_path, tiny):
    x, y, val = tiny
    hp = kt.HyperParameters()
    hp.Fixed("optimizer.lr", 1e4)  # every trial diverges
    tuner = _mlp_tuner(
        tmp_path, max_trials=5, hyperparameters=hp, tune_new_entries=True, max_consecutive_failed_trials=2
    )
    with pytest.raises(RuntimeError, match="consecutive"):
        tuner.search(x, y, validation_data=val, epochs=2, verbose=0)
    frame = trials_frame(tuner)
    assert (frame["status"] == "FAILED").all() and len(frame) == 2  # no retries
    assert frame["message"].str.contains("diverged").all()


def _completed_trials(out) -> dict:
    """(project, trial id) -> (values, mtime) of every completed trial (project: coarse_to_fine's stage)."""
    done = {}
    for path in (out / "tuner").glob("*/trial_*/trial.json"):
        trial = json.loads(path.read_text())
        if trial["status"] == "COMPLETED":
            key = (path.parent.parent.name, trial["trial_id"])
            done[key] = (trial["hyperparameters"]["values"], path.stat().st_mtime_ns)
    return done


# random search's resume path is grid's without the grid's saved order; the unit tests below cover it.
# Four trials: two finished, one running and one to come (coarse_to_fine's in stage 2)
@pytest.mark.parametrize(
    "tuner, size",
    [("grid", ["tune.max_trials=4"]), ("coarse_to_fine", ["tune.max_trials=3", "tune.fine_trials=1"])],
    ids=["grid", "coarse_to_fine"],
)
def test_cli_search_killed_midway_resumes_with_the_remaining_trials(tmp_path, tuner, size):
    out = tmp_path / "search"
    total = 4
    args = [
        "tune",
        "recipe=mlp",
        f"tuner={tuner}",
        *size,
        "data.name=sample",
        "data.train_limit=256",
        "data.val_size=100",
        "model.width=16",
        "trainer.epochs=1",
        f"trainer.out_dir={out}",
    ]
    # SIGKILLed by the process itself as its third trial starts: two trials done, the third running
    killed = processes.run(ROOT / "tests" / "kill_points.py", "trial", "3", *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = _completed_trials(out)
    assert len(before) == 2, before
    resumed = processes.run(ROOT / "cli.py", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = _completed_trials(out)
    statuses = {
        f"{path.parent.parent.name}/{path.parent.name}": json.loads(path.read_text())["status"]
        for path in (out / "tuner").glob("*/trial_*/trial.json")
    }
    assert len(after) == total, statuses
    for key, (values, mtime) in before.items():
        assert after[key] == (values, mtime)  # finished trials were not rerun
    frame = pd.read_csv(out / "trials.csv")
    assert len(frame) == total and "python cli.py run recipe=mlp" in resumed.stdout
    assert (out / "scores.png").exists()


def test_state_files_are_written_atomically(tmp_path, monkeypatch):
    """A kill between writing keras-tuner's new state and renaming it over the old leaves the old state."""
    from keras_tuner.src import utils as kt_utils

    import recipes.engine.atomic

    oracle = kt.oracles.RandomSearchOracle(objective="val_accuracy", max_trials=3)
    oracle._set_project_dir(str(tmp_path), "project")
    oracle.save()  # through keras-tuner's own call path
    path = tmp_path / "project" / "oracle.json"
    saved = json.loads(path.read_text())
    assert "ongoing_trials" in saved

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes.engine.atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        kt_utils.save_json(str(path), {"max_trials": 99, "padding": "x" * 100_000})
    assert json.loads(path.read_text()) == saved
    assert [p.name for p in tmp_path.rglob("*")] == ["project", "oracle.json"]  # no temporary left behind


def test_torn_state_file_gives_one_line_naming_it(tmp_path, capsys):
    import cli

    out = tmp_path / "search"
    args = [
        "tune",
        "recipe=mlp",
        "data.name=sample",
        "data.train_limit=128",
        "data.val_size=50",
        "model.width=8",
        "trainer.epochs=1",
        f"trainer.out_dir={out}",
    ]
    assert cli.main([*args, "tune.max_trials=1"]) == 0
    trial = next((out / "tuner" / "random").glob("trial_*/trial.json"))
    trial.write_text(trial.read_text()[:20])  # as an older keras-tuner writer left it when killed
    capsys.readouterr()
    assert cli.main([*args, "tune.max_trials=2"]) == 2  # a one-line error, not an exception
    err = capsys.readouterr().err
    assert "torn" in err and str(trial) in err and "delete those trial folders" in err


def test_bad_tuner_options_are_one_line_errors(capsys):
    import cli

    assert cli.main(["tune", "recipe=mlp", "tuner=randon"]) == 2
    assert "did you mean 'random'" in capsys.readouterr().err
    assert cli.main(["tune", "recipe=mlp", "tune.max_trial=3"]) == 2
    assert "did you mean 'tune.max_trials'" in capsys.readouterr().err


def test_search_space_bounds_can_be_overridden(tmp_path):
    out = tmp_path / "search"
    proc = processes.run(
        ROOT / "cli.py",
        "tune",
        "recipe=mlp",
        "tune.max_trials=3",
        "space.optimizer.lr=0.002:0.004",
        "space.model.activation=tanh,elu",
        "data.name=sample",
        "data.train_limit=128",
        "data.val_size=50",
        "model.width=8",
        "trainer.epochs=1",
        f"trainer.out_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    frame = pd.read_csv(out / "trials.csv")
    assert frame["optimizer.lr"].between(0.002, 0.004).all()
    assert set(frame["model.activation"]) <= {"tanh", "elu"}


def test_bad_space_bounds_are_one_line_errors(capsys):
    import cli

    assert cli.main(["tune", "recipe=mlp", "space.optimizer.lrr=1:2"]) == 2
    assert "did you mean 'optimizer.lr'" in capsys.readouterr().err
    assert cli.main(["tune", "recipe=mlp", "space.optimizer.lr=0.1"]) == 2
    assert "expected LOW:HIGH" in capsys.readouterr().err
    assert cli.main(["tune", "recipe=mlp", "space.model.activation=swishy"]) == 2
    assert "swishy is not one of" in capsys.readouterr().err


@pytest.mark.parametrize("tuner", ["grid", "bayesian", "hyperband"])
def test_every_keras_tuner_search_runs_on_a_recipe(tmp_path, tuner):
    from tuners.search import run_search

    result = run_search(
        "mlp",
        [
            f"tuner={tuner}",
            "tune.max_trials=2",
            "data.name=sample",
            "data.train_limit=128",
            "data.val_size=50",
            "model.width=8",
            "trainer.epochs=2",
            f"trainer.out_dir={tmp_path}",
        ],
        echo=lambda *a: None,
        verbose=0,
    )
    assert len(result["frame"]) >= 2 and (tmp_path / "trials.csv").exists()
    assert result["best_command"].startswith("python cli.py run recipe=mlp ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_listening(port: int, chief: processes.Process, timeout: float = 120) -> None:
    """Until the chief accepts connections on ``port`` (its oracle server is up), or it has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and chief.running():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)


def test_distributed_search_with_a_chief_and_two_workers(tmp_path):
    import os

    out = tmp_path / "search"
    args = [
        "tune",
        "recipe=mlp",
        "tune.max_trials=4",
        "data.name=sample",
        "data.train_limit=128",
        "data.val_size=50",
        "model.width=8",
        "trainer.epochs=1",
        f"trainer.out_dir={out}",
    ]
    port = _free_port()
    procs = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_PORT": str(port)}
        env.pop("KERASTUNER_ORACLE_IP", None)  # our CLI binds to loopback when no host is named
        procs[tuner_id] = processes.Process(ROOT / "cli.py", args, env=env)
        if tuner_id == "chief":
            _wait_until_listening(port, procs[tuner_id])  # the chief's oracle server first
    outputs = {}
    for tuner_id, proc in procs.items():
        done = proc.wait(timeout=300)
        outputs[tuner_id] = done.stdout + done.stderr
        assert done.returncode == 0, f"{tuner_id}: {outputs[tuner_id][-2000:]}"
    trials = [json.loads(p.read_text()) for p in (out / "tuner" / "random").glob("trial_*/trial.json")]
    assert len(trials) == 4 and all(t["status"] == "COMPLETED" for t in trials)
    frame = pd.read_csv(out / "trials.csv")
    assert len(frame) == 4 and frame["trial_id"].is_unique  # each trial ran exactly once
    assert "no more trials" in outputs["tuner0"] and "no more trials" in outputs["tuner1"]
    assert "reproduce the best trial" in outputs["chief"]


def test_a_trial_finished_just_before_a_kill_is_not_rerun(tmp_path, tiny):
    """trial.json written, oracle.json not: keras-tuner alone would queue the trial for a retry."""
    from tuners.resume import reconcile

    x, y, val = tiny

    def make():
        return _mlp_tuner(tmp_path, max_trials=2, seed=0)

    tuner = make()
    tuner.search(x, y, validation_data=val, epochs=1, verbose=0)
    oracle_file = tmp_path / "p" / "oracle.json"
    state = json.loads(oracle_file.read_text())
    last = state["end_order"].pop()
    state["ongoing_trials"] = {"tuner0": last}  # as if killed between the two writes
    oracle_file.write_text(json.dumps(state))
    reloaded = make()
    assert reloaded.oracle._retry_queue == [last]  # what keras-tuner would retrain
    assert reconcile(reloaded.oracle) == [last]
    assert reloaded.oracle._retry_queue == [] and last in reloaded.oracle.end_order


@pytest.mark.parametrize("search", ["random", "grid", "hyperband"])  # bayesian draws its first as random
def test_a_trial_drawn_just_before_a_kill_is_drawn_again_and_run(tmp_path, tiny, search):
    """trial.json written, oracle.json not, as a trial starts: keras-tuner alone never runs that trial.

    Resumed, the search ends with the trials of one that was never interrupted.
    """
    from tuners.grid import ResumableGridSearch
    from tuners.resume import reconcile

    x, y, val = tiny

    def make(where):
        size = {"max_epochs": 2} if search == "hyperband" else {"max_trials": 2}
        tuner_class = {"random": kt.RandomSearch, "grid": ResumableGridSearch, "hyperband": kt.Hyperband}
        return _mlp_tuner(where, tuner_class[search], seed=1, **size)  # keras-tuner randomises seed=0

    def trials(tuner) -> list:
        """(id, status, values) of each trial; hyperband's promotions depend on the scores, so those
        only by their place in the brackets."""
        rows = []
        for t in tuner.oracle.trials.values():
            values = t.hyperparameters.values
            if values.get("tuner/round", 0) > 0:
                values = {k: v for k, v in values.items() if k.startswith("tuner/") and k != "tuner/trial_id"}
            rows.append((t.trial_id, t.status, values))
        return rows

    def search_in(tuner):
        tuner.search(x, y, validation_data=val, epochs=1, verbose=0)

    reference = make(tmp_path / "uninterrupted")
    search_in(reference)

    class Killed(BaseException):
        pass

    tuner = make(tmp_path)
    oracle = tuner.oracle
    save_trial, save = oracle._save_trial, oracle.save
    started = []

    def save_trial_noting_starts(trial):
        save_trial(trial)
        if trial.status == "RUNNING" and trial.trial_id not in started:
            started.append(trial.trial_id)

    def save_unless_second_trial_started():
        if len(started) == 2:
            raise Killed  # the kill lands between the trial's file and the oracle's
        save()

    oracle._save_trial, oracle.save = save_trial_noting_starts, save_unless_second_trial_started
    with pytest.raises(Killed):
        search_in(tuner)
    orphan = started[1]
    assert json.loads((tmp_path / "p" / f"trial_{orphan}" / "trial.json").read_text())["status"] == "RUNNING"

    reloaded = make(tmp_path)
    assert orphan in reloaded.oracle.trials and orphan not in reloaded.oracle.start_order  # what kt leaves
    fixed = reconcile(reloaded.oracle)
    search_in(reloaded)
    assert all(status == "COMPLETED" for _, status, _ in trials(reloaded))  # none left "running" forever
    assert sorted(trials(reloaded)) == sorted(trials(reference))
    assert fixed == [orphan]


@pytest.mark.parametrize("tuner", ["random", "bayesian"])
def test_the_default_seed_draws_the_same_trials_every_time(tmp_path, tuner):
    """trainer.seed=0 (the default) must not reach keras-tuner as 0, which it replaces with a random seed."""
    from tuners.search import TuneOptions, make_tuner

    def first_draws(where):
        made = make_tuner(tuner, hypermodel("mlp", **FIXED), TuneOptions(), where, 0, 2)
        made._populate_initial_space()  # what search() does first: the space, from one build
        return [made.oracle.populate_space(str(i))["values"] for i in range(3)]

    draws = first_draws(tmp_path / "a")
    assert all("optimizer.lr" in values for values in draws)
    assert draws == first_draws(tmp_path / "b")

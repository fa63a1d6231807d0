"""``tune``: the best trial in the objective's own direction, user bounds in every stage, options that
would do nothing refused, and distributed settings that fail in one line naming the fix."""

import socket

import keras_tuner as kt
import numpy as np
import pandas as pd
import pytest

import cli
from tuners.coarse_to_fine import keras_tuner_seed
from tuners.results import best_row
from tuners.search import distributed_role, run_search

TINY = ["data.name=sample", "data.train_limit=128", "data.val_size=50", "model.width=8", "trainer.epochs=1"]


def _objective(name: str) -> kt.Objective:
    """The objective keras-tuner itself makes of a name (its direction inferred as a search infers it)."""
    return kt.oracles.RandomSearchOracle(objective=name, max_trials=1).objective


@pytest.mark.parametrize(
    "name, scores, best",
    [
        ("val_loss", [0.9, 0.2, 0.5], 1),  # minimised: the lowest, where idxmax took the worst
        ("loss", [2.3, 2.4, 1.7, np.nan], 2),
        ("val_accuracy", [0.1, 0.6, 0.3], 1),  # maximised
        ("accuracy", [np.nan, 0.25, 0.75], 2),  # a failed trial (no score) never wins
        ("val_loss", [np.nan, 3.0], 1),
    ],
)
def test_the_best_row_follows_the_oracles_direction(name, scores, best):
    frame = pd.DataFrame({"trial_id": [f"{i:02d}" for i in range(len(scores))], name: scores})
    assert best_row(frame, _objective(name))["trial_id"] == f"{best:02d}"


def test_no_scored_trial_has_no_best_row():
    frame = pd.DataFrame({"trial_id": ["00", "01"], "val_loss": [np.nan, np.nan]})
    assert best_row(frame, _objective("val_loss")) is None


def _command_values(command: str) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in command.split()[3:])


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


TARGET_LR = 10**-2.5


def _loss_of(lr: float) -> float:
    """The fake trials' val_loss: lowest at TARGET_LR, growing with the distance in decades."""
    return 1.0 + (np.log10(lr) - np.log10(TARGET_LR)) ** 2


@pytest.fixture
def scored_trials(monkeypatch, sample_arrays):
    """Trials that train nothing: the recipe's model is built (the space declared as in a real search) and
    ``fit`` reports a val_loss known from the trial's learning rate alone, and val_accuracy = 1/val_loss.
    For speed, the sample is decoded once per session, keras-tuner's per-trial ``clear_session`` skips
    its garbage collection (0.2 s a call) and no plot is drawn."""
    import keras

    import recipes.data.load
    import tuners.search
    from tuners.hypermodel import RecipeHyperModel

    trials = []  # each trial's values, the epochs it was asked to train, its layers and dense1's weights

    def fit(self, hp, model, *args, **kwargs):
        layers = {layer.name: layer for layer in model.layers}
        kernel = layers["dense1"].kernel.numpy() if "dense1" in layers else None
        trials.append(
            {"values": dict(hp.values), "epochs": kwargs.get("epochs"), "layers": layers, "kernel": kernel}
        )
        loss = _loss_of(hp.values["optimizer.lr"])
        return {"val_loss": loss, "val_accuracy": 1.0 / loss}

    monkeypatch.setattr(RecipeHyperModel, "fit", fit)
    monkeypatch.setattr(recipes.data.load, "read_sample", lambda: sample_arrays)
    clear = keras.backend.clear_session
    monkeypatch.setattr(keras.backend, "clear_session", lambda free_memory=True: clear(free_memory=False))
    monkeypatch.setattr(tuners.search, "plot_scores", lambda *args: None)
    return trials


def _search(tmp_path, *args, tiny=TINY) -> tuple[dict, pd.DataFrame]:
    result = run_search("mlp", [*args, *tiny, f"trainer.out_dir={tmp_path}"], echo=lambda *a: None, verbose=0)
    return result, pd.read_csv(tmp_path / "trials.csv")


def _assert_command_is_the_trial_nearest_the_target(result, frame):
    """Known without the score column: the best trial is the one whose rate is nearest TARGET_LR (in
    decades); its values, and not the worst trial's, are in the printed command."""
    distance = (np.log10(frame["optimizer.lr"]) - np.log10(TARGET_LR)).abs()
    assert distance.nunique() == len(frame)  # no ties
    best, worst = frame.loc[distance.idxmin()], frame.loc[distance.idxmax()]
    values = _command_values(result["best_command"])
    for key in ("optimizer.lr", "optimizer.momentum", "model.activation", "model.init"):
        assert values[key] == _fmt(best[key])
    assert values["optimizer.lr"] != _fmt(worst["optimizer.lr"])


@pytest.mark.parametrize("objective", ["val_loss", "val_accuracy"])  # minimised, maximised
@pytest.mark.parametrize("tuner", ["random", "bayesian"])
def test_the_printed_command_is_the_best_trial_in_the_objectives_direction(
    tmp_path, scored_trials, tuner, objective
):
    result, frame = _search(tmp_path, f"tuner={tuner}", f"tune.objective={objective}", "tune.max_trials=4")
    assert len(frame) == 4 and frame[objective].notna().all()
    _assert_command_is_the_trial_nearest_the_target(result, frame)


@pytest.mark.parametrize(
    "bounds",
    [
        {"optimizer.lr": (0.002, 0.004), "optimizer.momentum": (0.6, 0.7)},
        {"optimizer.lr": (1e-4, 2e-4), "model.dropout": (0.1, 0.2)},
    ],
)
def test_coarse_to_fine_keeps_every_stage_inside_the_user_bounds(tmp_path, scored_trials, bounds):
    result, frame = _search(
        tmp_path,
        "tuner=coarse_to_fine",
        "tune.max_trials=4",
        "tune.fine_trials=2",
        "tune.top_k=2",
        "tune.objective=val_loss",
        *(f"space.{key}={lo}:{hi}" for key, (lo, hi) in bounds.items()),
        "space.model.activation=tanh,elu",
    )
    assert (frame["stage"] == 1).sum() == 4 and (frame["stage"] == 2).sum() == 2
    for key, (lo, hi) in bounds.items():
        assert frame[key].between(lo, hi).all(), frame[["stage", key]]
    assert set(frame["model.activation"]) <= {"tanh", "elu"}
    _assert_command_is_the_trial_nearest_the_target(result, frame)


# --------------------------------------------------------------------------------------------------
# How long trials train, and what the default space leaves out
# --------------------------------------------------------------------------------------------------

SEVEN_EPOCHS = [*TINY[:-1], "trainer.epochs=7"]  # a final run of 7 epochs


@pytest.mark.parametrize(
    "args, stage1, stage2",
    [
        (["tuner=random"], 2, None),  # tune.coarse_epochs, 2 by default
        (["tuner=bayesian", "tune.coarse_epochs=3"], 3, None),
        (["tuner=coarse_to_fine"], 2, 7),  # stage 2: the final run's epochs
        (["tuner=coarse_to_fine", "tune.coarse_epochs=4", "tune.fine_epochs=5"], 4, 5),
        (["tuner=coarse_to_fine", "tune.coarse_epochs=9"], 7, 7),  # never longer than a final run
    ],
)
def test_trials_train_the_documented_epochs(tmp_path, scored_trials, args, stage1, stage2):
    _search(tmp_path, *args, "tune.max_trials=3", "tune.fine_trials=2", tiny=SEVEN_EPOCHS)
    epochs = [trial["epochs"] for trial in scored_trials]
    assert epochs == [stage1] * 3 + ([stage2] * 2 if stage2 else [])


def test_hyperband_trains_up_to_the_final_runs_epochs(tmp_path, scored_trials):
    _search(tmp_path, "tuner=hyperband", tiny=[*TINY[:-1], "trainer.epochs=3"])
    epochs = [trial["epochs"] for trial in scored_trials]
    assert max(epochs) == 3 and min(epochs) == 1  # brackets of 1 epoch, promoted to 3 (factor 3)


def test_a_fine_stage_shorter_than_the_coarse_one_is_refused(tmp_path, capsys):
    args = ["tune", "recipe=mlp", "tuner=coarse_to_fine", f"trainer.out_dir={tmp_path}"]
    assert cli.main([*args, "tune.coarse_epochs=3", "tune.fine_epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "tune.fine_epochs=2 is shorter than stage 1's 3 epochs" in err and err.count("\n") == 1
    assert cli.main([*args, "tune.coarse_epochs=0"]) == 2
    assert "tune.coarse_epochs=0: expected a value >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was loaded or written


def test_sigmoid_and_small_random_come_back_when_the_space_names_them(tmp_path, scored_trials):
    _, frame = _search(
        tmp_path, "tune.max_trials=4", "space.model.activation=sigmoid,tanh", "space.model.init=small_random"
    )
    assert set(frame["model.activation"]) == {"sigmoid", "tanh"}
    assert set(frame["model.init"]) == {"small_random"}
    for trial in scored_trials:  # each trial's model has the drawn nonlinearity and N(0, 0.01^2) weights
        assert f"{trial['values']['model.activation']}1" in trial["layers"]
        assert np.std(trial["kernel"]) == pytest.approx(0.01, rel=0.05)  # 3072 x 8 draws: 1% std error


def test_a_search_stopped_by_failed_trials_points_at_a_trials_table_that_exists(tmp_path, capsys):
    args = [
        "tune",
        "recipe=mlp",
        "tune.max_trials=3",
        "tune.max_consecutive_failed_trials=1",
        "space.optimizer.lr=1e5:1e6",  # every trial diverges
        "data.name=sample",
        "data.train_limit=256",
        "data.val_size=50",
        "model.width=8",
        "trainer.epochs=1",
        "trainer.batch_size=64",
        f"trainer.out_dir={tmp_path}",
    ]
    with pytest.warns(UserWarning, match="NaNGuard"):
        assert cli.main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # keras-tuner prints each failed trial's
    assert last.startswith("error: search stopped: ")
    assert last.endswith(f"(see the message column of {tmp_path / 'trials.csv'})")
    frame = pd.read_csv(tmp_path / "trials.csv")
    assert len(frame) == 1 and frame["status"].eq("FAILED").all()
    assert frame["message"].str.contains("diverged").all()


@pytest.mark.parametrize("verb", ["tune", "check"])
@pytest.mark.parametrize("budget", ["600", "90s", "1.5h"])
def test_a_budget_is_refused_where_it_would_do_nothing(verb, budget, capsys, tmp_path):
    assert cli.main([verb, "recipe=mlp", f"trainer.budget={budget}", f"trainer.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"trainer.budget={budget} applies to 'run' only" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # refused before anything was loaded or written


@pytest.mark.parametrize(
    "seed, offset, expected",
    [(0, 1, 1), (0, 2, 2), (41, 1, 42), (2**32 - 2, 1, 2**32 - 1), (2**32 - 1, 1, 1), (2**32 - 1, 2, 2)],
)
def test_keras_tuner_seeds_stay_in_numpys_range_and_never_zero(seed, offset, expected):
    assert keras_tuner_seed(seed, offset) == expected


def test_the_largest_trainer_seed_builds_a_bayesian_search(tmp_path):
    from tuners import hypermodel
    from tuners.search import TuneOptions, make_tuner

    # BayesianOptimization seeds numpy.random.RandomState with it: 2**32 would raise ValueError
    tuner = make_tuner("bayesian", hypermodel("mlp"), TuneOptions(), tmp_path, 2**32 - 1, 1)
    assert tuner.oracle.seed == 1


# --------------------------------------------------------------------------------------------------
# Distributed settings
# --------------------------------------------------------------------------------------------------

VARIABLES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


def _env(monkeypatch, **values):
    """Exactly these keras-tuner variables set (the others unset), restored after the test."""
    for name in VARIABLES:
        monkeypatch.setenv(name, "")  # recorded, so that a value set later is removed at teardown
        monkeypatch.delenv(name)
    for short, value in values.items():
        monkeypatch.setenv(f"KERASTUNER_{short.upper()}", value)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"oracle_ip": "127.0.0.1"}, "KERASTUNER_ORACLE_IP=127.0.0.1 is set but KERASTUNER_TUNER_ID is not"),
        (
            {"oracle_ip": "10.1.2.3", "oracle_port": "8000"},
            "KERASTUNER_ORACLE_IP=10.1.2.3 is set but KERASTUNER_TUNER_ID is not",
        ),
        ({"tuner_id": "chief"}, "KERASTUNER_TUNER_ID is set but KERASTUNER_ORACLE_PORT is not"),
        ({"tuner_id": "", "oracle_port": "8000"}, "KERASTUNER_TUNER_ID is set but empty"),
        (
            {"tuner_id": "tuner0", "oracle_port": "abc"},
            "KERASTUNER_ORACLE_PORT='abc': expected a port number",
        ),
        ({"tuner_id": "tuner0", "oracle_port": "0"}, "KERASTUNER_ORACLE_PORT='0': expected a port number"),
        ({"tuner_id": "chief", "oracle_port": "70000"}, "KERASTUNER_ORACLE_PORT='70000': expected a port"),
        ({"tuner_id": "chief", "oracle_port": "-5"}, "KERASTUNER_ORACLE_PORT='-5': expected a port number"),
    ],
)
def test_distributed_settings_keras_tuner_would_fail_on_are_one_line_errors(
    monkeypatch, capsys, env, expected
):
    _env(monkeypatch, **env)
    assert cli.main(["tune", "recipe=mlp", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert "Traceback" not in err and "trials.csv" not in err


@pytest.mark.parametrize("tuner_id, role", [("tuner0", "worker"), ("chief", "chief"), ("tuner-7", "worker")])
def test_a_tuner_id_without_an_ip_serves_and_reaches_the_oracle_on_loopback(monkeypatch, tuner_id, role):
    import os

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed
    _env(monkeypatch, tuner_id=tuner_id, oracle_port=str(port))
    assert distributed_role() == role
    assert os.environ["KERASTUNER_ORACLE_IP"] == "127.0.0.1"


@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 held by a listening socket for the test's duration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# no IP (loopback), loopback named, and an address of no machine here (TEST-NET-1, RFC 5737)
@pytest.mark.parametrize("ip", [None, "127.0.0.1", "192.0.2.1"])
def test_a_chief_that_cannot_listen_says_so_before_loading_anything(
    monkeypatch, capsys, tmp_path, taken_port, ip
):
    _env(monkeypatch, tuner_id="chief", oracle_port=str(taken_port), **({"oracle_ip": ip} if ip else {}))
    assert cli.main(["tune", "recipe=mlp", *TINY, f"trainer.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"the chief cannot listen on {ip or '127.0.0.1'}:{taken_port}" in err
    assert "KERASTUNER_ORACLE_PORT to a free port" in err
    assert "trials.csv" not in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_a_port_taken_between_the_check_and_keras_tuners_server_gives_the_same_line(
    monkeypatch, capsys, tmp_path, taken_port
):
    import tuners.search

    _env(monkeypatch, tuner_id="chief", oracle_port=str(taken_port), oracle_ip="127.0.0.1")
    monkeypatch.setattr(tuners.search, "check_chief_can_listen", lambda ip, port: None)  # lost the race
    assert cli.main(["tune", "recipe=mlp", *TINY, f"trainer.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"the chief cannot listen on 127.0.0.1:{taken_port}" in err and "trials.csv" not in err
    assert err.count("\n") == 1 and not (tmp_path / "trials.csv").exists()

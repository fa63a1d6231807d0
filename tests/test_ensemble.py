"""Ensembles: the average of the members' softmax, checked by hand; refusals name the member."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from recipes import run
from recipes.engine.ensemble import Member, check_members, ensemble_predict, run_ensemble
from recipes.engine.run_dir import RunError

TINY = [
    "data.name=sample",
    "data.train_limit=256",
    "data.val_size=100",
    "model.width=16",
    "trainer.verbose=silent",
]


def _linear(kernel: np.ndarray) -> keras.Model:
    inputs = keras.Input((kernel.shape[0],))
    dense = keras.layers.Dense(kernel.shape[1], use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([kernel])
    return model


def test_the_ensemble_is_the_mean_of_the_members_softmax():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
    a, b = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), np.array([[0.0, 0.0, 3.0], [1.0, -1.0, 0.0]])

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    expected = (softmax(x @ a) + softmax(x @ b)) / 2
    got = ensemble_predict([_linear(a), _linear(b)], x)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)


def _member(name: str, classes: int = 10, side: int = 32, source: str = "cifar10:/d", data=None) -> Member:
    inputs = keras.Input((side, side, 3))
    outputs = keras.layers.Dense(classes)(keras.layers.GlobalAveragePooling2D()(inputs))
    return Member(Path(name), "mlp", data or {"name": "auto"}, source, keras.Model(inputs, outputs))


@pytest.mark.parametrize(
    "odd, words",
    [
        (_member("runs/b", classes=5), "5 classes against 10"),
        (_member("runs/b", side=64), "shape (64, 64, 3)"),
        (_member("runs/b", source="cifar10-sample (bundled)"), "data cifar10-sample"),
        (_member("runs/b", data={"name": "auto", "image_size": 64}), "data.* settings"),
    ],
)
def test_members_of_other_data_classes_or_sizes_are_refused_by_name(odd, words):
    with pytest.raises(RunError) as err:
        check_members([_member("runs/a"), _member("runs/ok"), odd])
    message = str(err.value)
    assert "runs/b differs from runs/a" in message and words in message and "\n" not in message


def test_two_seeds_of_a_run_make_an_ensemble(tmp_path, sample_arrays):
    dirs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        run("mlp", [*TINY, "trainer.epochs=1", f"trainer.seed={seed}", f"trainer.out_dir={out}"])
        dirs.append(out)
    result = run_ensemble(dirs, [f"trainer.out_dir={tmp_path / 'ens'}"])
    report = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert report == result.report
    for member, out in zip(report["members"], dirs):
        metrics = json.loads((out / "metrics.json").read_text())
        assert member["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    # the ensemble's accuracy, recomputed from the saved models
    x, y = sample_arrays[2].astype(np.float32), sample_arrays[3]
    models = [keras.saving.load_model(d / "model.keras") for d in dirs]
    probs = np.mean(
        [keras.ops.convert_to_numpy(keras.ops.softmax(m.predict(x, verbose=0))) for m in models], 0
    )
    assert report["ensemble_test_accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == y))
    assert report["ensemble_test_loss"] == pytest.approx(
        -np.mean(np.log(probs[np.arange(len(y)), y])), rel=1e-4
    )
    # a folder that is no finished run, and a single member, are refused in one line
    for bad in ([dirs[0], tmp_path], [dirs[0]]):
        with pytest.raises(RunError):
            run_ensemble(bad, [f"trainer.out_dir={tmp_path / 'ens2'}"])


def test_the_cli_verb_prints_the_table_and_refuses_a_bad_member(tmp_path, capsys):
    import cli

    dirs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        run("mlp", [*TINY, "trainer.epochs=1", f"trainer.seed={seed}", f"trainer.out_dir={out}"])
        dirs.append(str(out))
    capsys.readouterr()
    assert cli.main(["ensemble", *dirs, f"trainer.out_dir={tmp_path / 'ens'}", "trainer.tta=true"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines() if len(line.split()) == 2}
    assert report["tta"] is True and lines["ensemble"] == f"{report['ensemble_test_accuracy']:.4f}"
    assert lines[dirs[1]] == f"{report['members'][1]['test_accuracy']:.4f}"
    for bad in ([dirs[0], str(tmp_path)], [dirs[0], str(tmp_path / "missing")], [dirs[0]]):
        assert cli.main(["ensemble", *bad, f"trainer.out_dir={tmp_path / 'e2'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert cli.main(["ensemble", *dirs, "trainer.epochs=3"]) == 2  # not a key of ensemble
    assert "unknown config key" in capsys.readouterr().err


SEARCH = [
    "data.name=sample",
    "data.train_limit=128",
    "data.val_size=100",
    "model.width=8",
    "trainer.epochs=2",
    "tune.max_trials=3",
]


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory) -> Path:
    """One finished three-trial search, shared by the tests below."""
    from tuners.search import run_search

    out = tmp_path_factory.mktemp("search") / "search"
    run_search("mlp", [*SEARCH, f"trainer.out_dir={out}"], echo=lambda *a: None, verbose=0)
    return out


def _best_trial_ids(search: Path, k: int) -> list[str]:
    """The k completed trials of highest val_accuracy, read from trials.csv alone (ties: table order)."""
    import pandas as pd

    table = pd.read_csv(search / "trials.csv", dtype={"trial_id": str})
    done = table[table["status"] == "COMPLETED"]
    return list(done.sort_values("val_accuracy", ascending=False, kind="stable")["trial_id"].head(k))


def test_top_k_averages_the_best_trials_of_a_search_with_their_best_weights(
    search_dir, tmp_path, sample_arrays
):
    import pandas as pd

    from recipes import get_recipe
    from recipes.data import load_data
    from tuners.search_dir import trial_members

    result = run_ensemble([search_dir], ["top=2", f"trainer.out_dir={tmp_path / 'ens'}"])
    expected = [str(search_dir / "tuner" / "random" / f"trial_{t}") for t in _best_trial_ids(search_dir, 2)]
    assert [m["run_dir"] for m in result.report["members"]] == expected
    # each trial's saved weights are its best epoch's: they score the trial's objective again
    table = pd.read_csv(search_dir / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    val = load_data(get_recipe("mlp").config(SEARCH[:-1]).data, seed=0)
    members = trial_members(search_dir, 2)
    for member in members:
        predicted = member.model.predict(val.x_val.astype(np.float32), verbose=0).argmax(-1)
        score = table.loc[member.out_dir.name.removeprefix("trial_"), "val_accuracy"]
        assert np.mean(predicted == val.y_val) == pytest.approx(score, abs=1e-6)
    x, y = sample_arrays[2].astype(np.float32), sample_arrays[3]
    probs = ensemble_predict([m.model for m in members], x)
    assert result.report["ensemble_test_accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == y))


def test_top_k_refusals_are_one_line(search_dir, tmp_path, capsys):
    import shutil

    import cli

    def damaged(name: str, change) -> str:
        copy = tmp_path / name
        shutil.copytree(search_dir, copy)
        change(copy)
        return str(copy)

    best = _best_trial_ids(search_dir, 1)[0]
    no_weights = damaged("w", lambda d: (d / f"tuner/random/trial_{best}/checkpoint.weights.h5").unlink())
    no_record = damaged("r", lambda d: (d / "search.json").unlink())
    unfinished = damaged("t", lambda d: (d / "trials.csv").unlink())

    def other_data(d: Path) -> None:
        record = json.loads((d / "search.json").read_text())
        (d / "search.json").write_text(json.dumps({**record, "data_source": "folder:/elsewhere"}))

    elsewhere = damaged("o", other_data)
    search = str(search_dir)
    cases = [
        ([search, "top=4"], "3 completed trials, fewer than top=4; use top=3"),
        ([search], "is a search directory: add top=K"),
        ([str(tmp_path / "missing"), "top=2"], "not one: it has no search.json"),
        ([search, "top=1"], "two or more members"),
        ([search, "checkpoints=2"], "for a search directory use top=K"),
        ([no_weights, "top=2"], f"trial_{best} has no saved weights"),
        ([no_record, "top=2"], "no readable search.json"),
        ([unfinished, "top=2"], "has not finished"),
        ([search, elsewhere, "top=1"], f"{elsewhere}/tuner/random/trial_{best} differs from"),
    ]
    for args, words in cases:
        assert cli.main(["ensemble", *args, f"trainer.out_dir={tmp_path / 'ens'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err


def test_ensemble_predict_is_public():
    import recipes

    assert recipes.ensemble_predict is ensemble_predict and "ensemble_predict" in recipes.__all__

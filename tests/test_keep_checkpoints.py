"""``trainer.keep_checkpoints=K``: the K best epochs by val_accuracy, checked against history.csv, through a
resume, and averaged by ``ensemble DIR checkpoints=K`` (checked by hand)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest

from recipes import get_recipe, run
from recipes.config import ConfigError
from recipes.data import load_data
from recipes.engine.checkpoint import RunCheckpoint
from recipes.engine.ensemble import run_ensemble
from recipes.engine.keep_best import KeepBest, kept_path

K = 2
ARGS = [
    "data.name=sample",
    "data.train_limit=256",
    "data.val_size=100",
    "model.width=16",
    "trainer.epochs=4",
    f"trainer.keep_checkpoints={K}",
    "trainer.verbose=silent",
    *(
        f"callbacks.{name}=false"
        for name in ("dead_units", "update_ratio", "gradient_stats", "clean_accuracy")
    ),
]


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory) -> Path:
    """One finished run that kept its K best epochs, shared by the tests below."""
    out = tmp_path_factory.mktemp("kept") / "run"
    run("mlp", [*ARGS, f"trainer.out_dir={out}"])
    return out


def _k_best_of_history(out: Path, k: int = K) -> list[int]:
    """The k best epochs by val_accuracy, computed from history.csv alone (ties: the earlier epoch)."""
    history = pd.read_csv(out / "history.csv")
    ranked = history.sort_values(["val_accuracy", "epoch"], ascending=[False, True], kind="stable")
    return [int(e) for e in ranked["epoch"].head(k)]


def _kept_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "best").iterdir())


def test_the_kept_epochs_are_the_k_best_of_the_history(kept_run):
    expected = _k_best_of_history(kept_run)
    kept = json.loads((kept_run / "metrics.json").read_text())["kept_checkpoints"]
    assert [entry["epoch"] for entry in kept] == expected
    assert _kept_files(kept_run) == sorted(f"epoch-{e:03d}.keras" for e in expected)
    history = pd.read_csv(kept_run / "history.csv").set_index("epoch")
    for entry in kept:
        assert entry["val_accuracy"] == pytest.approx(history.loc[entry["epoch"], "val_accuracy"])
        assert (kept_run / entry["path"]).is_file()


def test_kept_models_reload_and_score_their_recorded_validation_accuracy(kept_run):
    data = load_data(get_recipe("mlp").config(ARGS).data, seed=0)
    for entry in json.loads((kept_run / "metrics.json").read_text())["kept_checkpoints"]:
        model = keras.saving.load_model(kept_run / entry["path"])  # plain Keras: an inference model
        predicted = model.predict(data.x_val.astype(np.float32), verbose=0).argmax(-1)
        assert np.mean(predicted == data.y_val) == pytest.approx(entry["val_accuracy"], abs=1e-6)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_checkpoints_k_averages_the_kept_models_softmax(kept_run, tmp_path, sample_arrays):
    result = run_ensemble([kept_run], [f"checkpoints={K}", f"trainer.out_dir={tmp_path / 'ens'}"])
    report = result.report
    kept = json.loads((kept_run / "metrics.json").read_text())["kept_checkpoints"]
    assert [m["run_dir"] for m in report["members"]] == [str(kept_run / e["path"]) for e in kept]
    x, y = sample_arrays[2].astype(np.float32), sample_arrays[3]
    probs = [_softmax(keras.saving.load_model(kept_run / e["path"]).predict(x, verbose=0)) for e in kept]
    for member, p in zip(report["members"], probs):
        assert member["test_accuracy"] == pytest.approx(np.mean(p.argmax(-1) == y))
    mean = np.mean(probs, axis=0)
    assert report["ensemble_test_accuracy"] == pytest.approx(np.mean(mean.argmax(-1) == y))
    assert report["ensemble_test_loss"] == pytest.approx(
        -np.mean(np.log(mean[np.arange(len(y)), y])), rel=1e-4
    )


class Killed(Exception):
    """Stands for a kill at one point of an epoch's writes."""


def _kill_at(monkeypatch, cls, hook: str, at_epoch: int) -> None:
    original = getattr(cls, hook)

    def hooked(self, epoch, logs=None):
        if epoch == at_epoch:
            raise Killed
        return original(self, epoch, logs)

    monkeypatch.setattr(cls, hook, hooked)


def test_an_interrupted_and_resumed_run_keeps_the_k_best_of_its_whole_history(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = [*ARGS, "trainer.epochs=3", f"trainer.out_dir={out}"]
    args.remove("trainer.epochs=4")
    # a kill after epoch 1's kept file was written but before the state recorded epoch 1
    with monkeypatch.context() as m, pytest.raises(Killed):
        _kill_at(m, RunCheckpoint, "on_epoch_end", 0)
        run("mlp", args)
    assert (out / "best").is_dir() and not (out / "state.json").exists()
    # a kill after the state recorded epoch 2 but before epoch 2's surplus was deleted
    with monkeypatch.context() as m, pytest.raises(Killed):
        _kill_at(m, KeepBest, "on_epoch_begin", 2)
        run("mlp", args)
    assert json.loads((out / "state.json").read_text())["epochs_completed"] == 2
    result = run("mlp", args)
    assert result.resumed_from == 2
    expected = _k_best_of_history(out)
    assert [e["epoch"] for e in result.metrics["kept_checkpoints"]] == expected
    assert _kept_files(out) == sorted(f"epoch-{e:03d}.keras" for e in expected)


def _tiny_model() -> keras.Model:
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def _epoch(callback: KeepBest, epoch: int, val: float, loss: float = 1.0) -> None:
    callback.on_epoch_begin(epoch)
    callback.on_epoch_end(epoch, {"loss": loss, "val_accuracy": val})


def _on_disk(out: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (out / "best").glob("epoch-*.keras"))


def test_pruning_waits_for_the_next_epoch_and_diverged_epochs_never_enter(tmp_path):
    guard = SimpleNamespace(stopped=False)
    callback = KeepBest(tmp_path, 2, guard=guard)
    callback.set_model(_tiny_model())
    callback.on_train_begin()
    for epoch, val in enumerate([0.1, 0.3]):
        _epoch(callback, epoch, val)
    _epoch(callback, 2, 0.2)  # epoch 3 pushes epoch 1 out ...
    assert _on_disk(tmp_path) == [1, 2, 3]  # ... but its file stays until the state records epoch 3
    _epoch(callback, 3, 0.9, loss=math.nan)  # a NaN loss never enters
    assert _on_disk(tmp_path) == [2, 3]
    guard.stopped = True
    _epoch(callback, 4, 0.95)  # nor an epoch the NaN guard stopped
    guard.stopped = False
    _epoch(callback, 5, 0.3)  # ties epoch 2: the earlier epoch ranks first
    callback.on_train_end()
    assert _on_disk(tmp_path) == [2, 6]
    assert [(e["epoch"], e["val_accuracy"]) for e in callback.kept] == [(2, 0.3), (6, 0.3)]


def test_a_resume_drops_epochs_the_state_does_not_record_and_the_surplus(tmp_path):
    model = _tiny_model()
    (tmp_path / "best").mkdir()
    for epoch in (1, 2, 3, 4):  # as a kill can leave them: epoch 4 unrecorded, epoch 1 not yet pruned
        model.save(kept_path(tmp_path, epoch))
    history = [{"epoch": e, "loss": 1.0, "val_accuracy": v} for e, v in ((1, 0.2), (2, 0.5), (3, 0.4))]
    callback = KeepBest(tmp_path, 2, history)
    callback.set_model(model)
    callback.on_train_begin()
    assert _on_disk(tmp_path) == [2, 3]
    assert [e["epoch"] for e in callback.kept] == [2, 3]


def test_keep_checkpoints_without_validation_images_is_one_line():
    with pytest.raises(ConfigError) as err:
        get_recipe("mlp").config(["trainer.keep_checkpoints=3", "data.val_size=0"])
    message = str(err.value)
    assert "trainer.keep_checkpoints=3" in message and "data.val_size" in message and "\n" not in message
    with pytest.raises(ConfigError, match="expected a value >= 0"):
        get_recipe("mlp").config(["trainer.keep_checkpoints=-1"])


def test_checkpoints_k_refusals_are_one_line(kept_run, tmp_path, capsys):
    import cli

    unkept = tmp_path / "unkept"
    shutil.copytree(kept_run, unkept)
    metrics = json.loads((unkept / "metrics.json").read_text())
    del metrics["kept_checkpoints"]
    (unkept / "metrics.json").write_text(json.dumps(metrics))
    cases = [
        ([str(unkept), "checkpoints=2"], "train it again with trainer.keep_checkpoints=2"),
        ([str(kept_run), "checkpoints=3"], "keeps 2 checkpoints, fewer than checkpoints=3"),
        ([str(kept_run), "checkpoints=1"], "two or more members"),
        ([str(tmp_path / "missing"), "checkpoints=2"], "not a finished run directory"),
        ([str(kept_run), "checkpoints=-1"], "expected a value >= 0"),
    ]
    for args, words in cases:
        assert cli.main(["ensemble", *args, f"trainer.out_dir={tmp_path / 'ens'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err

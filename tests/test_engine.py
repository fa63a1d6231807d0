"""The engine's one training path: ``run``, the tuner's hypermodel and ``check`` build the same training;
a run's ``model.keras`` is an inference model that loads in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import keras_tuner as kt
import numpy as np
import pytest

import recipes.diagnostics.checks
import recipes.engine.run
from recipes import run
from recipes.data import load_data
from recipes.registry import get_recipe
from tuners import hypermodel

TINY = ["data.name=sample", "data.train_limit=256", "data.val_size=100", "trainer.verbose=silent"]


class Captured(Exception):
    def __init__(self, **what):
        super().__init__("captured")
        self.what = what


def _layers(model: keras.Model) -> list[tuple[str, dict]]:
    """Each layer's class and config, less what is fitted to the data (normalisation statistics)."""
    fitted = {"mean", "variance"}
    return [
        (type(layer).__name__, {k: v for k, v in layer.get_config().items() if k not in fitted})
        for layer in model.layers
    ]


def _unnamed(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "name"}  # Keras numbers its optimizers' names


def _through_run(monkeypatch, overrides) -> dict:
    def capture(r, training):
        raise Captured(model=training.model, steps=training.steps_per_epoch, batch=training.batch_size)

    monkeypatch.setattr(recipes.engine.run, "fit", capture)
    with pytest.raises(Captured) as got:
        run("fast", overrides, echo=lambda *a: None)
    return got.value.what


def _through_hypermodel(overrides, data) -> dict:
    hm = hypermodel("fast", overrides)
    hp = kt.HyperParameters()
    model = hm.build(hp)

    def capture(train_ds, steps_per_epoch, **kwargs):
        raise Captured(model=model, steps=steps_per_epoch, batch=int(next(iter(train_ds))[0].shape[0]))

    model.fit = capture
    with pytest.raises(Captured) as got:
        hm.fit(hp, model, data.x_train, data.y_train, validation_data=(data.x_val, data.y_val))
    return got.value.what


def _through_check(monkeypatch, overrides) -> dict:
    from recipes.diagnostics.checklist import run_checks

    def capture(model, x, *args, **kwargs):
        raise Captured(model=model)

    monkeypatch.setattr(recipes.diagnostics.checks, "check_learning_rate", capture)
    with pytest.raises(Captured) as got:
        run_checks("fast", overrides, echo=lambda *a: None, overfit_steps=1)
    return got.value.what


def test_run_the_hypermodel_and_check_build_the_same_training(tmp_path, monkeypatch):
    # the trial's values (the search space's defaults) as fixed overrides, so that all three see one config
    trial = hypermodel("fast", TINY).trial_overrides(kt.HyperParameters())
    overrides = [*trial, f"trainer.out_dir={tmp_path / 'run'}"]
    data = load_data(get_recipe("fast").config(overrides).data)
    through_run = _through_run(monkeypatch, overrides)
    through_tuner = _through_hypermodel(trial, data)
    through_check = _through_check(monkeypatch, [*trial, f"trainer.out_dir={tmp_path / 'check'}"])

    spe = len(data.x_train) // 256  # fast's batch of 256 on 256 - 25 (10% held out) images: clamped
    assert through_run["batch"] == through_tuner["batch"] == len(data.x_train)
    assert through_run["steps"] == through_tuner["steps"] == max(1, spe)
    reference = through_run["model"]
    for other in (through_tuner["model"], through_check["model"]):
        assert _layers(other) == _layers(reference)
        # the optimizer, its schedule (serialised inside) and lookahead plan are the same
        assert _unnamed(other.optimizer.get_config()) == _unnamed(reference.optimizer.get_config())
        assert type(other.optimizer) is type(reference.optimizer)
        assert other.loss.get_config() == reference.loss.get_config()
    schedule = reference.optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "Warmup"  # the configured warmup + decay, not a constant


def _predict_in_fresh_process(tmp_path, model_path, images, loader: str) -> tuple[np.ndarray, list[str]]:
    """Predictions of ``model_path`` by a new Python process started outside the repository, and the
    modules of ours it imported."""
    np.save(tmp_path / "images.npy", images)
    code = (
        "import json, sys; import numpy as np\n"
        f"{loader}\n"
        "model = load(sys.argv[1])\n"
        "np.save(sys.argv[2], model.predict(np.load(sys.argv[3]), verbose=0))\n"
        "mine = {'recipes', 'callbacks', 'layers', 'tuners'}\n"
        "ours = sorted({m.split('.')[0] for m in sys.modules} & mine)\n"
        "print(json.dumps(ours))\n"
    )
    out = tmp_path / "predictions.npy"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(model_path), str(out), str(tmp_path / "images.npy")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(out), json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_keras_only_model_loads_with_plain_keras_in_a_fresh_process(tmp_path, sample_arrays):
    result = run("mlp", [*TINY, "trainer.epochs=1", "model.width=16", f"trainer.out_dir={tmp_path / 'run'}"])
    images = sample_arrays[2][:64].astype(np.float32)
    expected = result.model.predict(images, verbose=0)
    got, ours = _predict_in_fresh_process(
        tmp_path, result.out_dir / "model.keras", images, "from keras.saving import load_model as load"
    )
    assert ours == []  # nothing of ours was needed, or imported
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_model_with_our_layers_loads_after_import_recipes(tmp_path, sample_arrays):
    # fast's model.keras and checkpoint (our initialiser, layers and optimizer) load the same way: test_fast
    overrides = [*TINY, "trainer.epochs=1", "model.width=16", f"trainer.out_dir={tmp_path / 'run'}"]
    result = run("mlp_dropconnect", overrides)
    images = sample_arrays[2][:64].astype(np.float32)
    expected = result.model.predict(images, verbose=0)
    got, _ = _predict_in_fresh_process(
        tmp_path, result.out_dir / "model.keras", images, "from recipes import load_model as load"
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the deliverable holds no training state: no optimizer, schedule or loss to resolve when loading
    import zipfile

    config = json.loads(zipfile.ZipFile(result.out_dir / "model.keras").read("config.json"))
    assert "compile_config" not in config or not config["compile_config"]


def test_the_readme_user_recipe_script_runs_from_a_temporary_folder(tmp_path):
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- user-recipe:start -->")[1].split("<!-- user-recipe:end -->")[0]
    script = block.split("```python\n")[1].split("```")[0]
    (tmp_path / "my_recipe.py").write_text(script)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "my_recipe.py"], cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout and "best {" in proc.stdout
    metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    assert metrics["recipe"] == "tiny_cnn" and metrics["epochs_completed"] == 2
    assert (tmp_path / "runs" / "tiny_search").is_dir()

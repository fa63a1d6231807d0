"""``trainer.bn_refresh``: a run that ends on weights its batch-norm statistics did not follow (``fast``'s
lookahead slow copy, ``optimizer.ema``'s average) measures them again, inside its budget."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from recipes import run
from recipes.config import ConfigError
from recipes.data import load_data
from recipes.engine.averaging import BN_IMAGES, refreshes_batch_norm
from recipes.engine.evaluate import predict_tta
from recipes.registry import get_recipe

SMOKE = [
    "data.name=sample",
    "data.train_limit=300",
    "data.val_size=100",
    "trainer.batch_size=50",
    "trainer.epochs=1",
    "trainer.verbose=silent",
    "model.width1=8",
    "model.width2=16",
    "model.width3=16",
]


@pytest.mark.parametrize(
    "recipe, overrides, expected",
    [
        ("fast", [], True),  # lookahead: the last planned step swaps in the slow weights
        ("fast", ["optimizer.lookahead_every=0"], False),
        ("fast", ["trainer.bn_refresh=false"], False),
        ("mlp", [], False),  # the statistics followed the weights it ends on
        ("mlp", ["optimizer.ema=0.99"], True),
        ("mlp", ["optimizer.ema=0.99", "trainer.bn_refresh=false"], False),
        ("mlp", ["trainer.bn_refresh=true"], True),
        ("resnet_small", [], False),
    ],
)
def test_auto_measures_again_where_the_run_ends_on_other_weights(recipe, overrides, expected):
    assert refreshes_batch_norm(get_recipe(recipe).config(overrides)) is expected


@pytest.mark.parametrize("bad", ["yes", "on", "1", "Auto", ""])
def test_a_bad_setting_is_refused_with_the_choices(bad):
    with pytest.raises(ConfigError) as e:
        get_recipe("fast").config([f"trainer.bn_refresh={bad}"])
    message = str(e.value)
    assert "trainer.bn_refresh" in message and "auto, true, false" in message and "\n" not in message


def _statistics_of(model: keras.Model, images: np.ndarray, batch_size: int) -> dict[str, tuple]:
    """Each batch-norm layer's input over ``images`` in training mode (earlier layers normalise with their
    batch's own moments, so the moving statistics play no part): the batch-weighted mean of the batches'
    means and (biased) variances, in numpy."""
    out = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        to_input = keras.Model(model.input, layer.input)
        means, variances, weights = [], [], []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].astype(np.float32)
            act = keras.ops.convert_to_numpy(to_input(batch, training=True)).astype(np.float64)
            means.append(act.mean(axis=(0, 1, 2)))
            variances.append(act.var(axis=(0, 1, 2)))
            weights.append(len(batch))
        out[layer.name] = (np.average(means, 0, weights), np.average(variances, 0, weights))
    return out


def _moving(model: keras.Model) -> dict[str, tuple]:
    return {
        layer.name: (
            keras.ops.convert_to_numpy(layer.moving_mean),
            keras.ops.convert_to_numpy(layer.moving_variance),
        )
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }


@pytest.mark.parametrize("setting", ["auto", "false"])
def test_a_fast_run_ends_with_the_statistics_of_its_final_weights(tmp_path, setting):
    overrides = [*SMOKE, f"trainer.bn_refresh={setting}", f"trainer.out_dir={tmp_path}"]
    result = run("fast", overrides, echo=lambda *a: None)
    cfg = get_recipe("fast").config(overrides)
    data = load_data(cfg.data, seed=cfg.trainer.seed)
    images = data.x_train[:BN_IMAGES]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["bn_refresh_images"] == (len(images) if setting == "auto" else 0)

    expected = _statistics_of(keras.saving.load_model(tmp_path / "model.keras"), images, 50)
    saved = _moving(keras.saving.load_model(tmp_path / "model.keras"))
    assert len(saved) == 6 and set(saved) == set(expected)
    gaps = []
    for name, (mean, variance) in expected.items():
        gaps.append(float(np.max(np.abs(saved[name][0] - mean) / (np.abs(mean) + 1e-3))))
        if setting == "auto":
            np.testing.assert_allclose(saved[name][0], mean, rtol=1e-4, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(saved[name][1], variance, rtol=1e-4, atol=1e-5, err_msg=name)
    if setting == "false":  # training's last batches of the fast weights: clearly other numbers
        assert max(gaps) > 1e-2

    # the run was evaluated on, and its last checkpoint holds, the model it saved
    final = keras.saving.load_model(tmp_path / "model.keras")
    probs = predict_tta(final, data.x_test.astype(np.float32), 256, True, 1)
    assert float(np.mean(probs.argmax(-1) == data.y_test)) == pytest.approx(result.metrics["test_accuracy"])
    checkpoint = keras.saving.load_model(tmp_path / "checkpoints" / "epoch-001.keras")
    for got, want in zip(checkpoint.weights, final.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))


def _bn_model():
    import tensorflow as tf

    from callbacks import Replannable

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64 * 8, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(), keras.layers.Dense(1)]
    )
    schedule = Replannable(keras.optimizers.schedules.PolynomialDecay(0.01, decay_steps=64 * 50))
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(), x


def test_timing_the_refresh_leaves_the_statistics_as_they_were():
    from recipes.engine.budget import _time_bn_refresh

    model, _, x = _bn_model()
    model.fit(x, x[:, :1], batch_size=64, epochs=1, verbose=0)  # statistics away from their initial values
    before = _moving(model)
    assert _time_bn_refresh(model, x[:200], 64) > 0
    for name, (mean, variance) in _moving(model).items():
        np.testing.assert_array_equal(mean, before[name][0])
        np.testing.assert_array_equal(variance, before[name][1])
    assert _time_bn_refresh(model, x[:0], 64) == 0.0
    assert _time_bn_refresh(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]), x, 64) == 0.0


def test_the_budget_reserves_the_refresh_with_the_final_evaluation(monkeypatch):
    """Timings fixed: the plan reserves the refresh's images at their timed cost beside the test views
    (the planner and the keeper leave ``final_eval_seconds`` free at the end)."""
    from recipes.engine import budget

    monkeypatch.setattr(budget, "_time_predict", lambda *a: 0.001)  # seconds per test image
    monkeypatch.setattr(budget, "_time_epoch_end", lambda *a: 0.5)
    monkeypatch.setattr(budget, "_time_bn_refresh", lambda *a: 0.004)  # seconds per refresh image
    plans = {}
    for n in (0, 1000):
        model, ds, x = _bn_model()
        plans[n] = budget.calibrate(
            model,
            ds,
            budget_seconds=600.0,
            elapsed_seconds=0.0,
            steps_per_epoch=64,
            configured_epochs=50,
            eval_images=np.zeros((2000, 4), "float32"),
            eval_batch_size=100,
            val_examples=0,
            refresh_images=np.zeros((n, 4), "float32"),
            refresh_batch_size=64,
        )
    assert plans[0].final_eval_seconds == pytest.approx(0.001 * 2000 + 0.5, abs=0.01)
    assert plans[1000].final_eval_seconds == pytest.approx(0.001 * 2000 + 0.5 + 4.0, abs=0.01)


def test_a_run_the_nan_guard_stopped_keeps_the_statistics_it_went_back_to():
    from types import SimpleNamespace

    from recipes.engine.averaging import finish_weights

    cfg = get_recipe("fast").config([])  # lookahead: auto measures again
    model, _, x = _bn_model()
    model.fit(x, x[:, :1], batch_size=64, epochs=1, verbose=0)
    data = SimpleNamespace(x_train=x)
    before = _moving(model)
    assert finish_weights(model, cfg, data, 64, diverged=True) == {"averaged": False, "bn_refresh_images": 0}
    for name, (mean, variance) in _moving(model).items():
        np.testing.assert_array_equal(mean, before[name][0])
        np.testing.assert_array_equal(variance, before[name][1])
    assert finish_weights(model, cfg, data, 64) == {"averaged": False, "bn_refresh_images": len(x)}
    [(name, (mean, _))] = _moving(model).items()
    assert not np.allclose(mean, before[name][0])

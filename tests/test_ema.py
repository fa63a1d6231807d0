"""optimizer.ema: Keras's moving average of the weights, checked against a hand computation, and a run that
ends on it (test evaluation, model.keras, final checkpoint), keeps it across a resume, and refuses bad
decays."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest

from callbacks import NaNGuard, ema_pairs, recompute_batch_norm
from recipes import run
from recipes.config import ConfigError
from recipes.data import load_data
from recipes.engine.optimizers import LookaheadSGD
from recipes.engine.training import build_optimizer
from recipes.registry import get_recipe

DECAY = 0.9
LR = 0.1


def closed_form_ema(raw: np.ndarray, decay: float) -> float:
    """Keras's average after ``len(raw)`` steps of weights ``raw[t]`` (the value after step t + 1): the
    first step copies the weight, each later one mixes in ``1 - decay`` of it (no bias correction), so
    ``avg_N = decay**(N-1) * w_1 + sum_{t=2..N} (1 - decay) * decay**(N-t) * w_t``."""
    n = len(raw)
    weights = (1 - decay) * decay ** (n - 1 - np.arange(n, dtype=np.float64))
    weights[0] = decay ** (n - 1)
    return float(np.dot(weights, raw))


class RecordKernel(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.raw: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.raw.append(float(keras.ops.convert_to_numpy(self.model.trainable_variables[0])[0, 0]))


@pytest.mark.parametrize(
    "overrides, kind",
    [
        (["optimizer.name=sgd"], keras.optimizers.SGD),
        (["optimizer.name=adam"], keras.optimizers.Adam),
        (["optimizer.lookahead_every=2"], LookaheadSGD),
    ],
    ids=["sgd", "adam", "lookahead_sgd"],
)
def test_the_average_is_the_closed_form_ema_of_the_raw_weights(overrides, kind):
    # loss -w on input 1: every gradient is -1, so plain SGD moves the weight by +lr per step
    cfg = get_recipe("mlp").config(
        [
            *overrides,
            f"optimizer.ema={DECAY}",
            f"optimizer.lr={LR}",
            "optimizer.momentum=0",
            "optimizer.weight_decay=0",
            "schedule.name=constant",
            "schedule.warmup_epochs=0",
        ]
    )
    optimizer = build_optimizer(cfg, steps_per_epoch=12)
    assert isinstance(optimizer, kind) and optimizer.use_ema and optimizer.ema_momentum == DECAY
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(optimizer=optimizer, loss=lambda y_true, y_pred: -keras.ops.mean(y_pred))
    recorder = RecordKernel()
    ones = np.ones((12, 1), np.float32)
    model.fit(ones, ones, batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    raw = np.array(recorder.raw)
    if kind is keras.optimizers.SGD:
        np.testing.assert_allclose(raw, LR * np.arange(1, 13), rtol=1e-5)
    final = float(keras.ops.convert_to_numpy(model.trainable_variables[0])[0, 0])
    assert final == pytest.approx(closed_form_ema(raw, DECAY), rel=1e-5)  # fit ended on the average
    assert abs(final - raw[-1]) > 0.1  # which is not the raw weight


@pytest.mark.parametrize("value", ["-0.1", "1", "1.0", "1.5", "0.999999", "abc", "nan", "true"])
def test_a_bad_decay_is_refused_with_one_line(value):
    with pytest.raises(ConfigError) as error:
        get_recipe("mlp").config([f"optimizer.ema={value}"])
    message = str(error.value)
    assert message.startswith("optimizer.ema=")  # names the key; then what is expected
    assert "expected" in message and "\n" not in message


def _values(variables) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in variables]


def test_batch_norm_statistics_are_recomputed_as_the_mean_over_batches():
    images = np.random.default_rng(0).normal(3.0, 2.0, (10, 3)).astype(np.float32)
    layer = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Sequential([keras.Input((3,)), layer])
    assert recompute_batch_norm(model, images, batch_size=4) == 1  # batches of 4, 4 and 2 images
    batches = [images[:4], images[4:8], images[8:]]
    variance = sum(len(b) * b.var(axis=0) for b in batches) / len(images)  # each batch's own variance
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), images.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), variance, rtol=1e-5)
    assert layer.momentum == 0.9  # put back


class RecordAverages(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.averages: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.averages.append([keras.ops.convert_to_numpy(a) for _, a in ema_pairs(self.model.optimizer)])


def test_the_nan_guard_restores_the_averages_with_the_weights():
    # fit ends by copying the averages into the model: NaN averages would undo the guard's restore
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 4)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)
    y[40:50] = np.nan  # batch 4 of 8: its step turns weights and averages to NaN
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01, use_ema=True, ema_momentum=DECAY), loss="mse")
    recorder = RecordAverages()
    with pytest.warns(UserWarning, match="loss is NaN"):
        model.fit(
            x,
            y,
            batch_size=10,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[recorder, NaNGuard(snapshot_every_n_steps=1)],
        )
    for got, want in zip(_values(model.trainable_variables), recorder.averages[3]):  # after batch 3
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert all(np.isfinite(keras.ops.convert_to_numpy(a)).all() for _, a in ema_pairs(model.optimizer))


OVERRIDES = [
    "data.name=sample",
    "data.train_limit=256",
    "data.val_size=100",
    "trainer.verbose=silent",
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "model.width=16",
    "model.batch_norm=true",
    f"optimizer.ema={DECAY}",
    # monitors that do not concern the average, off to keep the test short
    "callbacks.dead_units=false",
    "callbacks.update_ratio=false",
    "callbacks.gradient_stats=false",
    "callbacks.clean_accuracy=false",
]


class Capture(keras.callbacks.Callback):
    """Raw weights and averages at each epoch end (before the run's checkpoint)."""

    def __init__(self, stop_at_epoch: int | None = None):
        super().__init__()
        self.raw: list[list[np.ndarray]] = []
        self.averages: list[list[np.ndarray]] = []
        self.stop_at_epoch = stop_at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.stop_at_epoch:
            raise KeyboardInterrupt  # as a Ctrl-C: the epochs before are checkpointed

    def on_epoch_end(self, epoch, logs=None):
        self.raw.append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables])
        self.averages.append([keras.ops.convert_to_numpy(a) for _, a in ema_pairs(self.model.optimizer)])


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema") / "run"
    capture = Capture()
    result = run(
        "mlp", [*OVERRIDES, f"trainer.out_dir={out}"], echo=lambda *a: None, extra_callbacks=[capture]
    )
    return result, capture


def test_a_run_ends_on_the_averaged_weights(ema_run):
    result, capture = ema_run
    out = result.out_dir
    final = keras.saving.load_model(out / "model.keras")
    saved = _values(final.trainable_variables)
    averages, raw = capture.averages[-1], capture.raw[-1]
    assert len(saved) == len(averages) == len(raw)
    for got, average in zip(saved, averages):
        np.testing.assert_allclose(got, average, rtol=1e-6, atol=1e-7)
    assert max(float(np.max(np.abs(g - w))) for g, w in zip(saved, raw)) > 1e-3  # not the raw weights
    # the final checkpoint holds the same model; its optimizer the same averages
    checkpoint = keras.saving.load_model(out / "checkpoints" / "epoch-002.keras")
    for got, want in zip(_values(checkpoint.variables), _values(final.variables)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for (_, got), want in zip(ema_pairs(checkpoint.optimizer), averages):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-6, atol=1e-7)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ema"] == DECAY and metrics["status"] == "completed"


def test_val_accuracy_ema_is_logged_and_its_last_value_is_the_final_model(ema_run):
    result, _ = ema_run
    rows = list(csv.DictReader((result.out_dir / "history.csv").open()))
    assert [row["val_accuracy_ema"] != "" for row in rows] == [True, True]
    cfg = get_recipe("mlp").config(OVERRIDES)
    data = load_data(cfg.data, seed=cfg.trainer.seed)
    final = keras.saving.load_model(result.out_dir / "model.keras")
    predicted = np.argmax(final.predict(data.x_val.astype(np.float32), verbose=0), axis=-1)
    assert float(rows[-1]["val_accuracy_ema"]) == pytest.approx(float(np.mean(predicted == data.y_val)))


def test_a_resumed_run_keeps_the_average(ema_run, tmp_path):
    uninterrupted, capture = ema_run
    out = tmp_path / "run"
    overrides = [*OVERRIDES, f"trainer.out_dir={out}"]
    with pytest.raises(KeyboardInterrupt):
        run("mlp", overrides, echo=lambda *a: None, extra_callbacks=[Capture(stop_at_epoch=1)])
    # the epoch-1 checkpoint saved the averages with the optimizer state
    checkpoint = keras.saving.load_model(out / "checkpoints" / "epoch-001.keras")
    for (_, got), want in zip(ema_pairs(checkpoint.optimizer), capture.averages[0]):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-6, atol=1e-7)
    resumed = run("mlp", overrides, echo=lambda *a: None)
    assert resumed.resumed_from == 1
    want = _values(keras.saving.load_model(uninterrupted.out_dir / "model.keras").variables)
    got = _values(keras.saving.load_model(out / "model.keras").variables)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)

"""``schedule.name=plateau``: PlateauSchedule + PlateauDecay against ReduceLROnPlateau's rule worked by
hand and against Keras's own callback, behind the warmup, read by the compiled step, and resumed."""

import keras
import numpy as np
import pytest

from callbacks import (
    LearningRateLogger,
    PlateauDecay,
    PlateauSchedule,
    Replannable,
    Warmup,
    find_schedule,
    warmup_schedule,
)

# A scripted validation curve and the factor after each epoch under ReduceLROnPlateau's rule with
# factor 0.5, patience 2, min_delta 0.01, cooldown 1, floor 0.2 (min_lr of a rate of 1), worked by hand:
# an improvement is a value above best + 0.01 (the first value always is); out of cooldown a non-improving
# epoch adds 1 to wait, and wait >= 2 multiplies the factor by 0.5 (never below 0.2), resets wait and
# starts 1 epoch of cooldown, during which wait is reset, the cooldown counted down, and only then waiting
# resumes (in that same epoch).
CURVE = [0.30, 0.40, 0.405, 0.408, 0.45, 0.45, 0.44, 0.43, 0.42, 0.50, 0.50, 0.49, 0.48]
RULE = dict(factor=0.5, patience=2, min_delta=0.01, cooldown=1, min_factor=0.2)
EXPECTED = [
    1.0,  # 0.30: the first value is the best
    1.0,  # 0.40 > 0.30 + 0.01: best
    1.0,  # 0.405 < 0.40 + 0.01: wait 1
    0.5,  # 0.408: wait 2 -> decay, cooldown 1
    0.5,  # 0.45: cooldown ends; 0.45 > 0.41: best
    0.5,  # 0.45: wait 1
    0.25,  # 0.44: wait 2 -> decay, cooldown 1
    0.25,  # 0.43: cooldown counted down to 0, then wait 1
    0.2,  # 0.42: wait 2 -> 0.125, held at the floor 0.2; cooldown 1
    0.2,  # 0.50: cooldown ends; best
    0.2,  # 0.50: wait 1
    0.2,  # 0.49: wait 2, but the factor is at its floor: nothing changes
    0.2,  # 0.48: wait 3, still at the floor
]
PEAK = 0.1


def _model(schedule) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    return model


def _feed(callback: PlateauDecay, model: keras.Model, curve, first_epoch: int = 0) -> list[float]:
    """Run ``callback`` over ``curve`` as fit would (train begin, then one epoch end per value)."""
    callback.set_model(model)
    callback.on_train_begin()
    factors = []
    for epoch, value in enumerate(curve, start=first_epoch):
        callback.on_epoch_end(epoch, {"val_accuracy": value})
        factors.append(find_schedule(model.optimizer, PlateauSchedule).factor)
    return factors


def test_the_factor_follows_reduce_lr_on_plateaus_rule_worked_by_hand():
    model = _model(Warmup(PlateauSchedule(PEAK), warmup_steps=3))
    factors = _feed(PlateauDecay(**RULE), model, CURVE)
    np.testing.assert_allclose(factors, EXPECTED, rtol=1e-6)
    # the rate after warmup is the peak times the factor
    assert float(model.optimizer._learning_rate(100)) == pytest.approx(PEAK * 0.2, rel=1e-6)


def test_the_factor_matches_keras_reduce_lr_on_plateau_on_a_float_rate():
    # Keras's own callback on an optimizer with a plain rate of 1.0: its rate is our factor
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    keras_cb = keras.callbacks.ReduceLROnPlateau(
        monitor="val_accuracy",
        mode="max",
        factor=RULE["factor"],
        patience=RULE["patience"],
        min_delta=RULE["min_delta"],
        cooldown=RULE["cooldown"],
        min_lr=RULE["min_factor"],
    )
    keras_cb.set_model(model)
    keras_cb.on_train_begin()
    rates = []
    for epoch, value in enumerate(CURVE):
        keras_cb.on_epoch_end(epoch, {"val_accuracy": value})
        rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    np.testing.assert_allclose(rates, EXPECTED, rtol=1e-6)


def test_min_mode_watches_a_loss():
    model = _model(PlateauSchedule(PEAK))
    callback = PlateauDecay(factor=0.1, patience=1, min_delta=0.0, monitor="val_loss", mode="min")
    callback.set_model(model)
    callback.on_train_begin()
    factors = []
    for epoch, loss in enumerate([2.0, 1.5, 1.6, 1.4, 1.4]):
        callback.on_epoch_end(epoch, {"val_loss": loss})
        factors.append(callback.schedule.factor)
    # 2.0 best; 1.5 best; 1.6 worse: decay; 1.4 best; 1.4 not below 1.4: decay
    np.testing.assert_allclose(factors, [1, 1, 0.1, 0.1, 0.01], rtol=1e-6)


def test_the_warmup_ramps_to_the_decayed_rate():
    schedule = Warmup(PlateauSchedule(0.2), warmup_steps=10, initial_lr=0.0)
    assert float(schedule(5)) == pytest.approx(0.1)
    find_schedule(_model(schedule).optimizer, PlateauSchedule).set_factor(0.5)
    assert float(schedule(5)) == pytest.approx(0.05)  # half way up to 0.2 * 0.5
    assert float(schedule(10)) == pytest.approx(0.1)
    assert float(schedule(1000)) == pytest.approx(0.1)


def test_the_warmup_helper_builds_a_plateau_behind_the_warmup():
    s = warmup_schedule("plateau", 0.1, epochs=10, steps_per_epoch=10, warmup_epochs=2)
    assert isinstance(s, Warmup) and isinstance(s.schedule, PlateauSchedule) and s.warmup_steps == 20
    assert float(s(10)) == pytest.approx(0.05) and float(s(99)) == pytest.approx(0.1)


class _Scripted(keras.callbacks.Callback):
    """Replaces the epoch's val_accuracy with a scripted value (before PlateauDecay sees it)."""

    def __init__(self, curve):
        super().__init__()
        self.curve = curve

    def on_epoch_end(self, epoch, logs=None):
        logs["val_accuracy"] = self.curve[epoch]


def test_the_compiled_step_reads_the_decayed_rate_and_history_records_it():
    # loss = the output, so each step's gradient w.r.t. the kernel is the input (1.0): the kernel falls
    # by exactly the step's rate, one step per epoch
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(Warmup(PlateauSchedule(PEAK), warmup_steps=0)),
        loss=lambda y, p: keras.ops.sum(p, axis=-1),
    )
    kernels = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: kernels.append(float(model.layers[0].kernel.numpy()[0, 0]))
    )
    history = model.fit(
        np.ones((1, 1), np.float32),
        np.zeros((1, 1), np.float32),
        epochs=len(CURVE),
        batch_size=1,
        verbose=0,
        callbacks=[_Scripted(CURVE), LearningRateLogger(), PlateauDecay(**RULE), record],
    )
    # epoch e trains at the factor decided after epoch e-1
    trained_at = [PEAK * f for f in [1.0, *EXPECTED[:-1]]]
    np.testing.assert_allclose(history.history["learning_rate"], trained_at, rtol=1e-6)
    steps = -np.diff([1.0, *kernels])
    np.testing.assert_allclose(steps, trained_at, rtol=1e-5)


@pytest.mark.parametrize(
    "split, factor, best, wait, cooldown",
    [
        (3, 1.0, 0.40, 1, 0),  # waiting: the next epoch decays only if wait 1 was kept
        (6, 0.5, 0.45, 1, 0),
        (7, 0.25, 0.45, 0, 1),  # in cooldown: the next epoch counts it down
        (8, 0.25, 0.45, 1, 0),
    ],
)
def test_a_saved_and_loaded_optimizer_resumes_the_plateau(tmp_path, split, factor, best, wait, cooldown):
    model = _model(Warmup(PlateauSchedule(PEAK), warmup_steps=2))
    model.fit(np.ones((2, 2)), np.ones((2, 1)), epochs=1, verbose=0)  # builds the optimizer
    first = _feed(PlateauDecay(**RULE), model, CURVE[:split])
    state = find_schedule(model.optimizer, PlateauSchedule).get_config()
    assert state == {
        "initial_learning_rate": PEAK,
        "factor": pytest.approx(factor),
        "best": pytest.approx(best),
        "wait": wait,
        "cooldown_counter": cooldown,
        "name": None,
    }
    model.save(tmp_path / "checkpoint.keras")
    loaded = keras.saving.load_model(tmp_path / "checkpoint.keras")
    assert find_schedule(loaded.optimizer, PlateauSchedule).get_config() == state
    # a fresh callback on the loaded model continues where the first stopped (no reset at train begin)
    rest = _feed(PlateauDecay(**RULE), loaded, CURVE[split:], first_epoch=split)
    np.testing.assert_allclose(first + rest, EXPECTED, rtol=1e-6)
    assert float(loaded.optimizer._learning_rate(100)) == pytest.approx(PEAK * 0.2, rel=1e-6)


def test_config_round_trip_keeps_the_factor_and_counters():
    schedule = PlateauSchedule(0.3, factor=0.01, best=0.7, wait=2, cooldown_counter=1, name="p")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert again.get_config() == schedule.get_config()
    assert float(again(0)) == pytest.approx(0.003)


def test_inside_a_budgets_replannable_the_plateau_is_found_and_applied():
    schedule = Replannable(Warmup(PlateauSchedule(PEAK), warmup_steps=10))
    model = _model(schedule)
    schedule.set_pace(0, 0.0, 2.0)  # a plan that runs the schedule at twice the pace
    callback = PlateauDecay(factor=0.5, patience=1)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_end(0, {"val_accuracy": 0.5})
    callback.on_epoch_end(1, {"val_accuracy": 0.5})
    assert float(schedule(2)) == pytest.approx(PEAK * 0.5 * 4 / 10)  # warmup position 4 of 10
    assert float(schedule(50)) == pytest.approx(PEAK * 0.5)


def test_refusals():
    with pytest.raises(ValueError, match="factor=1.5"):
        PlateauDecay(factor=1.5)
    with pytest.raises(ValueError, match="patience=-1"):
        PlateauDecay(patience=-1)
    with pytest.raises(ValueError, match="mode='auto'"):
        PlateauDecay(mode="auto")
    with pytest.raises(ValueError, match="factor=2"):
        PlateauSchedule(0.1, factor=2)
    callback = PlateauDecay()
    callback.set_model(_model(keras.optimizers.schedules.CosineDecay(0.1, 10)))
    with pytest.raises(ValueError, match="needs an optimizer whose learning rate is a PlateauSchedule"):
        callback.on_train_begin()


def test_a_missing_metric_warns_once_and_changes_nothing():
    model = _model(PlateauSchedule(PEAK))
    callback = PlateauDecay(patience=1)
    callback.set_model(model)
    callback.on_train_begin()
    logs = {"loss": 1.0}
    with pytest.warns(UserWarning, match="val_accuracy"):
        callback.on_epoch_end(0, logs)
    callback.on_epoch_end(1, {"loss": 1.0})
    assert callback.schedule.factor == 1.0
    assert logs["learning_rate"] == pytest.approx(PEAK)  # written when no logger did


# ----------------------------------------------------------------------------------------------------
# The recipe wiring: build_training adds the callback last; a run records and checkpoints the plateau
# ----------------------------------------------------------------------------------------------------


def _tiny_data(n_val: int = 20):
    from recipes.data import ImageData

    rng = np.random.default_rng(0)

    def images(n):
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)

    (xt, yt), (xv, yv), (xs, ys) = images(64), images(n_val), images(20)
    return ImageData(xt, yt, xv, yv, xs, ys, [str(i) for i in range(10)], "random")


def test_build_training_adds_the_plateau_decay_after_the_logger():
    from recipes.config import ConfigError
    from recipes.engine.training import build_training
    from recipes.registry import get_recipe

    recipe = get_recipe("mlp")
    overrides = ["model.width=8", "model.depth=1", "schedule.name=plateau", "schedule.patience=3"]
    overrides += ["schedule.cooldown=2", "schedule.min_delta=0.002", "schedule.final_lr_fraction=0.01"]
    training = build_training(recipe, recipe.config(overrides), _tiny_data(), datasets=False)
    plateau = training.callbacks[-1]
    assert isinstance(plateau, PlateauDecay)
    assert (plateau.patience, plateau.cooldown, plateau.min_delta) == (3, 2, 0.002)
    assert (plateau.factor, plateau.min_factor, plateau.monitor) == (0.1, 0.01, "val_accuracy")
    logger = next(i for i, c in enumerate(training.callbacks) if isinstance(c, LearningRateLogger))
    assert logger < len(training.callbacks) - 1
    assert find_schedule(training.model.optimizer, PlateauSchedule) is not None

    cosine = build_training(recipe, recipe.config(overrides[:2]), _tiny_data(), datasets=False)
    assert not any(isinstance(c, PlateauDecay) for c in cosine.callbacks)
    with pytest.raises(ConfigError, match="schedule.name=plateau watches val_accuracy"):
        build_training(recipe, recipe.config(overrides), _tiny_data(n_val=0), datasets=False)


def test_a_run_records_the_decayed_rate_and_resumes_the_plateau_from_its_checkpoint(tmp_path):
    # min_delta 1.0: no accuracy can beat the first epoch's by more, so with patience 2 the rule gives
    # wait 1, 2 -> decay, 1, 2 -> decay: factors 1, 1, 0.1, 0.1, 0.01, whatever the data
    import csv

    from recipes import run

    lr = 0.01
    overrides = [
        "data.name=sample",
        "data.train_limit=256",
        "data.val_size=100",
        "model.width=8",
        "model.depth=1",
        "trainer.epochs=5",
        "trainer.verbose=silent",
        "callbacks.dead_units=false",
        "callbacks.update_ratio=false",
        "callbacks.gradient_stats=false",
        "callbacks.clean_accuracy=false",
        f"optimizer.lr={lr}",
        "schedule.name=plateau",
        "schedule.warmup_epochs=0",
        "schedule.patience=2",
        "schedule.min_delta=1.0",
        f"trainer.out_dir={tmp_path}",
    ]
    factors = [1.0, 1.0, 0.1, 0.1, 0.01]
    trained_at = [lr * f for f in [1.0, *factors[:-1]]]  # each epoch at the factor set after the one before

    def history():
        return [
            {k: float(v) for k, v in row.items()} for row in csv.DictReader((tmp_path / "history.csv").open())
        ]

    result = run("mlp", overrides, echo=lambda _: None)
    first = history()
    np.testing.assert_allclose([r["learning_rate"] for r in first], trained_at, rtol=1e-5)
    assert find_schedule(result.model.optimizer, PlateauSchedule).factor == pytest.approx(0.01)
    saved = keras.saving.load_model(tmp_path / "checkpoints" / "epoch-004.keras")
    state = find_schedule(saved.optimizer, PlateauSchedule).get_config()
    assert state["factor"] == pytest.approx(0.1) and state["wait"] == 1

    # as if killed after epoch 4: the resumed run must decay at epoch 5 (wait 1 -> 2); a plateau counted
    # afresh would take the first value it sees as its best and keep 0.1
    (tmp_path / "checkpoints" / "epoch-005.keras").unlink()
    (tmp_path / "metrics.json").unlink()
    resumed = run("mlp", overrides, echo=lambda _: None)
    assert resumed.resumed_from == 4
    assert find_schedule(resumed.model.optimizer, PlateauSchedule).factor == pytest.approx(0.01)
    again = history()
    np.testing.assert_allclose([r["learning_rate"] for r in again], trained_at, rtol=1e-5)
    assert [r["val_accuracy"] for r in again[:4]] == [r["val_accuracy"] for r in first[:4]]

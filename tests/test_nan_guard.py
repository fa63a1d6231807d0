import keras
import numpy as np
import pytest

from callbacks import NaNGuard, TrainingDiverged


def _linear_model(lr: float):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


def _data(n=80):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return x, (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32))


def _all_finite(model):
    return all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_nan_targets_stop_training_at_that_batch_with_finite_weights():
    x, y = _data()
    y[40:50] = np.nan  # batch 4 of 8 (batches of 10, no shuffling)
    model = _linear_model(0.01)
    guard = NaNGuard(snapshot_every_n_steps=1)
    with pytest.warns(UserWarning, match="loss is NaN"):
        model.fit(x, y, batch_size=10, epochs=3, shuffle=False, verbose=0, callbacks=[guard])
    assert guard.stopped
    assert guard.stop_info["epoch"] == 0 and guard.stop_info["step"] == 4
    assert guard.stop_info["reason"] == "nan"
    assert _all_finite(model)
    assert np.isfinite(model.predict(x, verbose=0)).all()  # the model is still usable


def test_divergence_is_caught_before_nan_with_advice():
    x, y = _data(400)
    model = _linear_model(1.5)  # far above the stable rate of this problem: the loss grows geometrically
    guard = NaNGuard(explosion_factor=10.0)
    with pytest.warns(UserWarning, match="loss exploding.*try optimizer.lr=0.15"):
        model.fit(x, y, batch_size=10, epochs=5, shuffle=False, verbose=0, callbacks=[guard])
    info = guard.stop_info
    assert info["reason"] == "exploded" and np.isfinite(info["loss"])
    assert info["loss"] > 10 * guard.initial_loss
    assert _all_finite(model)
    assert info["epoch"] == 0 and info["step"] < 39  # stopped early in the first epoch


def test_batch_loss_is_recovered_from_the_running_mean():
    # a single spiking batch late in an epoch moves the running mean little; the guard still sees it
    x, y = _data(200)
    y[180:190] *= 30.0  # batch 18 of 20: its own loss is ~900x the others, the running mean ~ +45x less
    model = _linear_model(0.0)  # weights frozen: every batch loss is known in advance
    guard = NaNGuard(explosion_factor=100.0)
    with pytest.warns(UserWarning, match="exploding"):
        model.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    assert guard.stop_info["step"] == 18
    w = model.get_weights()
    expected = np.mean((x[180:190] @ w[0] + w[1] - y[180:190]) ** 2)
    assert guard.stop_info["loss"] == pytest.approx(expected, rel=1e-3)


def test_backup_and_restore_keeps_its_backup(tmp_path):
    x, y = _data()
    y_bad = y.copy()
    model = _linear_model(0.01)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[backup, NaNGuard()])
    y_bad[20:30] = np.nan
    with pytest.warns(UserWarning):
        model.fit(
            x,
            y_bad,
            batch_size=10,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup2")), NaNGuard()],
        )
    assert (tmp_path / "backup2").exists()  # Keras alone would delete it here (keras#21771)


def test_raise_error_mode():
    x, y = _data()
    y[0:10] = np.nan
    with pytest.raises(TrainingDiverged, match="loss is NaN"), pytest.warns(UserWarning):
        _linear_model(0.01).fit(
            x, y, batch_size=10, verbose=0, shuffle=False, callbacks=[NaNGuard(raise_error=True)]
        )


def _overflow_data():
    # targets of 1e3: the first step's gradient is ~1e4 per weight, so lr * 1e4 > 3.4e38 overflows float32
    x, y = _data(10)
    return x, y * 1e3


@pytest.mark.parametrize("lr", [1e35, 1e37, 3e38])
def test_weights_overflowing_in_the_only_step_stop_the_run(lr):
    x, y = _overflow_data()
    model = _linear_model(lr)
    before = model.get_weights()
    guard = NaNGuard()
    with pytest.warns(UserWarning, match="weights overflowed"):
        # one step per epoch: its loss is measured before the step, finite; only the weights show it
        model.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    assert guard.stopped and guard.stop_info["reason"] == "overflow"
    assert guard.stop_info["epoch"] == 0 and guard.stop_info["step"] == 0
    assert np.isfinite(guard.stop_info["loss"])
    assert _all_finite(model)
    for restored, initial in zip(model.get_weights(), before):
        np.testing.assert_array_equal(restored, initial)  # the only finite snapshot: the initial weights


@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_sane_rates_do_not_trip_the_overflow_check(lr):
    x, y = _data()
    guard = NaNGuard(snapshot_every_n_steps=1)
    _linear_model(lr).fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0, callbacks=[guard])
    assert not guard.stopped


class _Poison(keras.callbacks.Callback):
    """Writes inf into the kernel at an epoch's end, as an overflow in the epoch's last step would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.layers[0].kernel
            kernel.assign(np.full(kernel.shape, np.inf, np.float32))


@pytest.mark.parametrize("epoch", [0, 2])
def test_weights_overflowed_after_the_last_snapshot_are_caught_at_the_epoch_end(epoch):
    x, y = _data()
    model = _linear_model(0.01)
    guard = NaNGuard(snapshot_every_n_steps=1000)  # no snapshot after the first step
    with pytest.warns(UserWarning, match=f"weights overflowed to inf/NaN at epoch {epoch + 1}, batch 8"):
        history = model.fit(
            x, y, batch_size=10, epochs=5, shuffle=False, verbose=0, callbacks=[_Poison(epoch), guard]
        )
    assert guard.stop_info["reason"] == "overflow" and guard.stop_info["epoch"] == epoch
    assert len(history.history["loss"]) == epoch + 1  # no epoch after it
    assert _all_finite(model)

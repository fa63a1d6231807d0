import keras
import numpy as np
import pytest

from callbacks import LearningRateLogger, Warmup


def _fit(optimizer, epochs=2):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    return model.fit(
        np.ones((20, 3)),
        np.ones((20, 1)),
        batch_size=5,
        epochs=epochs,
        verbose=0,
        callbacks=[LearningRateLogger()],
    )


def test_float_learning_rate():
    history = _fit(keras.optimizers.Adam(0.003))
    assert history.history["learning_rate"] == pytest.approx([0.003, 0.003])


def test_schedule_reports_the_rate_of_the_last_step_of_each_epoch():
    schedule = Warmup(0.1, warmup_steps=10)  # 4 steps per epoch: last steps are 3 and 7
    history = _fit(keras.optimizers.SGD(schedule))
    assert history.history["learning_rate"] == pytest.approx([0.03, 0.07])


def test_loss_scale_optimizer_is_unwrapped():
    inner = keras.optimizers.SGD(Warmup(0.1, warmup_steps=10))
    history = _fit(keras.optimizers.LossScaleOptimizer(inner), epochs=1)
    assert history.history["learning_rate"] == pytest.approx([0.03])


def test_csv_logger_sees_the_key(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(
        np.ones((4, 3)),
        np.ones((4, 1)),
        verbose=0,
        epochs=1,
        callbacks=[LearningRateLogger(), keras.callbacks.CSVLogger(tmp_path / "h.csv")],
    )
    assert "learning_rate" in (tmp_path / "h.csv").read_text().splitlines()[0]

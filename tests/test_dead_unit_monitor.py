import warnings

import keras
import numpy as np
import pytest

from callbacks import DeadUnitMonitor

BIAS = np.array([-1, -1, -1, 1, 1, 1, 1, 1], np.float32)  # units 0-2 dead when the kernel is zero


def _known_model():
    """A Dense and a conv ReLU layer whose zero kernels and biases make exactly 3 of 8 units dead."""
    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer="zeros", name="conv")
    x = conv(inputs)
    x = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(8, kernel_initializer="zeros", name="dense")
    x = keras.layers.ReLU(name="dense_relu")(dense(x))
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs)
    conv.bias.assign(BIAS)
    dense.bias.assign(BIAS)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model


def test_reports_exactly_the_known_fraction():
    model = _known_model()
    x = np.random.default_rng(0).standard_normal((16, 6, 6, 2)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = model.fit(
            x, np.zeros((16, 2)), epochs=2, verbose=0, callbacks=[DeadUnitMonitor(x, max_overhead=None)]
        )
    h = history.history
    assert h["dead_fraction/conv"] == [3 / 8, 3 / 8]
    assert h["dead_fraction/dense_relu"] == [3 / 8, 3 / 8]
    assert h["dead_fraction"] == [6 / 16, 6 / 16]
    assert "dead_fraction/head" not in h  # linear layers have no dead units


def test_a_unit_alive_at_one_position_is_alive():
    # conv unit 0 gets a positive weight on channel 0 at one tap, so it fires somewhere: 2 of 8 dead
    model = _known_model()
    conv = model.get_layer("conv")
    kernel = np.zeros((3, 3, 2, 8), np.float32)
    kernel[1, 1, 0, 0] = 1.0
    conv.kernel.assign(kernel)
    x = np.zeros((4, 6, 6, 2), np.float32)
    x[0, 2, 2, 0] = 5.0  # one position of one example
    monitor = DeadUnitMonitor(x)
    monitor.set_model(model)
    monitor.on_train_begin()
    assert monitor.measure()["dead_fraction/conv"] == 2 / 8


def test_warns_with_advice_above_the_threshold():
    model = _known_model()
    x = np.ones((4, 6, 6, 2), np.float32)
    with pytest.warns(UserWarning, match="Lower the learning rate.*Leaky ReLU"):
        model.fit(x, np.zeros((4, 2)), epochs=1, verbose=0, callbacks=[DeadUnitMonitor(x, warn_above=0.3)])


def test_a_subclassed_model_is_measured_too():
    # subclassed models have no layer.output: the monitor records outputs during a forward pass instead
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(16, activation="relu")

        def call(self, x):
            return self.d(x)

    model = Net()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    model(x)
    model.d.bias.assign(np.linspace(-3, 3, 16).astype(np.float32))
    out = np.maximum(x @ model.d.kernel.numpy() + model.d.bias.numpy(), 0)
    expected = float(np.mean(~np.any(out > 0, axis=0)))
    history = model.fit(x, np.ones((4, 16)), verbose=0, callbacks=[DeadUnitMonitor(x, warn_above=1.0)])
    assert history.history[f"dead_fraction/{model.d.name}"] == [expected]
    assert 0 < expected < 1

import warnings

import keras
import numpy as np
import pytest

from callbacks import GradientStats

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((3, 2)).astype(np.float32)
B1 = np.array([0.1, -0.2], np.float32)
W2 = RNG.standard_normal((2, 1)).astype(np.float32)
B2 = np.array([0.3], np.float32)


def _known_model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(2, activation="tanh", name="hidden")
    out = keras.layers.Dense(1, name="out")
    model = keras.Model(inputs, out(hidden(inputs)))
    hidden.kernel.assign(W1)
    hidden.bias.assign(B1)
    out.kernel.assign(W2)
    out.bias.assign(B2)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model


def _hand_gradient_norms(x, y):
    """Backpropagation of the mean squared error through tanh(x W1 + b1) W2 + b2, in float64."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    h = np.tanh(x @ W1 + B1)
    pred = h @ W2 + B2
    d_pred = 2.0 * (pred - y) / pred.size
    g_w2, g_b2 = h.T @ d_pred, d_pred.sum(axis=0)
    d_z = (d_pred @ W2.T) * (1.0 - h**2)
    g_w1, g_b1 = x.T @ d_z, d_z.sum(axis=0)
    hidden = np.sqrt(np.sum(g_w1**2) + np.sum(g_b1**2))
    out = np.sqrt(np.sum(g_w2**2) + np.sum(g_b2**2))
    return hidden, out


def test_norms_match_a_hand_computed_gradient():
    x = RNG.standard_normal((5, 3)).astype(np.float32)
    y = RNG.standard_normal((5, 1)).astype(np.float32)
    hidden, out = _hand_gradient_norms(x, y)
    # batch_size=2: the probe runs in chunks of 2, 2 and 1, which must add up to the whole batch's gradient
    stats = GradientStats(x, y, batch_size=2, max_overhead=None)  # epoch 2 too: the compiled path
    history = _known_model().fit(x, y, epochs=2, verbose=0, callbacks=[stats]).history
    np.testing.assert_allclose(history["grad_norm/hidden"], [hidden, hidden], rtol=1e-5)
    np.testing.assert_allclose(history["grad_norm/out"], [out, out], rtol=1e-5)
    np.testing.assert_allclose(history["grad_norm_ratio"], [out / hidden] * 2, rtol=1e-5)
    assert sorted(stats.gradients) == ["hidden", "out"]
    assert stats.gradients["hidden"].shape == (3 * 2 + 2,)


def test_a_subclassed_model_is_ordered_by_its_forward_pass():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.out = keras.layers.Dense(1, name="out")  # declared before the layer it follows
            self.block = keras.Sequential([keras.layers.Dense(2, activation="tanh", name="hidden")])

        def call(self, x):
            return self.out(self.block(x))

    model = Net()
    model(np.zeros((1, 3), np.float32))
    hidden = model.block.get_layer("hidden")
    for variable, value in (
        (hidden.kernel, W1),
        (hidden.bias, B1),
        (model.out.kernel, W2),
        (model.out.bias, B2),
    ):
        variable.assign(value)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    y = RNG.standard_normal((4, 1)).astype(np.float32)
    stats = GradientStats(x, y)
    stats.set_model(model)
    values = stats.measure()
    norm_hidden, norm_out = _hand_gradient_norms(x, y)
    assert list(values) == ["grad_norm/hidden", "grad_norm/out", "grad_norm_ratio"]
    np.testing.assert_allclose(values["grad_norm_ratio"], norm_out / norm_hidden, rtol=1e-5)


def _stack(activation: str, init: str, depth: int = 10):
    inputs = keras.Input((16,))
    x = inputs
    for i in range(depth):
        x = keras.layers.Dense(16, activation=activation, kernel_initializer=init, name=f"d{i}")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(x))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model


def _fit_recording(model, x, y, callbacks, epochs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=epochs, verbose=0, callbacks=callbacks)
    return history.history, [str(w.message) for w in caught if str(w.message).startswith("GradientStats")]


def test_a_deep_sigmoid_stack_vanishes_and_warns_once():
    x = RNG.standard_normal((64, 16)).astype(np.float32)
    y = RNG.standard_normal((64, 1)).astype(np.float32)
    # sigmoid' <= 1/4 per layer: ten layers leave the first one with ~1e-6 of the last one's gradient
    h, messages = _fit_recording(_stack("sigmoid", "glorot_uniform"), x, y, [GradientStats(x, y)], epochs=3)
    assert h["grad_norm_ratio"][0] > 1e3
    assert h["grad_norm/d0"][0] < 1e-3 * h["grad_norm/head"][0]
    assert len(messages) == 1 and "vanishing gradient" in messages[0], messages


def test_a_he_initialised_relu_stack_stays_in_the_band():
    x = RNG.standard_normal((64, 16)).astype(np.float32)
    y = RNG.standard_normal((64, 1)).astype(np.float32)
    h, messages = _fit_recording(_stack("relu", "he_normal"), x, y, [GradientStats(x, y)], epochs=1)
    assert 1e-3 < h["grad_norm_ratio"][0] < 1e3
    assert messages == []


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        GradientStats(np.ones((2, 3)), np.ones((2, 1)), every_n_epochs=0)
    with pytest.raises(ValueError, match="same, non-zero number"):
        GradientStats(np.ones((2, 3)), np.ones((3, 1)))

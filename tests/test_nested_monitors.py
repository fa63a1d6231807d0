"""The activation monitors reach layers nested in custom layers, Sequential blocks and subclassed models
(keras-io's compact-transformer tokenizer), and never measure nothing in silence."""

import warnings

import keras
import numpy as np
import pytest

from callbacks import ActivationStats, DeadUnitMonitor

RNG = np.random.default_rng(0)
K1 = RNG.standard_normal((1, 1, 3, 4)).astype(np.float32)  # the tokenizer's 1x1 convolution
B1 = np.array([0.0, 0.0, -100.0, 0.0], np.float32)  # channel 2 can never fire: 1 of 4 dead
B2 = np.full(4, -1.0, np.float32)  # zero kernel and negative bias: 4 of 4 dead


class Tokenizer(keras.layers.Layer):
    """Shaped like keras-io's CCTTokenizer: a keras.Sequential of ReLU convolutions, padding and pooling,
    then a reshape to a sequence of tokens."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv_model = keras.Sequential(
            [
                keras.layers.Conv2D(4, 1, activation="relu", name="tok_conv1"),
                keras.layers.ZeroPadding2D(1),
                keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="tok_conv2"),
            ]
        )

    def call(self, images):
        out = self.conv_model(images)
        return keras.ops.reshape(out, (-1, out.shape[1] * out.shape[2], out.shape[3]))


def _cct_like():
    inputs = keras.Input((6, 6, 3))
    tokens = Tokenizer(name="tokenizer")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(tokens)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    model(np.zeros((1, 6, 6, 3), np.float32))
    model.get_layer("tokenizer").conv_model.get_layer("tok_conv1").kernel.assign(K1)
    model.get_layer("tokenizer").conv_model.get_layer("tok_conv1").bias.assign(B1)
    inner2 = model.get_layer("tokenizer").conv_model.get_layer("tok_conv2")
    inner2.kernel.assign(np.zeros(inner2.kernel.shape, np.float32))
    inner2.bias.assign(B2)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model


def _fit(model, x, y, callbacks, epochs=1):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=epochs, verbose=0, callbacks=callbacks)
    return history.history, [str(w.message) for w in caught]


def test_convolutions_inside_a_custom_layers_sequential_are_measured():
    x = RNG.standard_normal((8, 6, 6, 3)).astype(np.float32)
    model = _cct_like()
    h, _ = _fit(model, x, np.zeros((8, 2)), [DeadUnitMonitor(x), ActivationStats(x)])
    assert h["dead_fraction/tok_conv1"] == [1 / 4]
    assert h["dead_fraction/tok_conv2"] == [4 / 4]
    assert h["dead_fraction"] == [5 / 8]
    # the 1x1 convolution's activations, computed directly
    first = np.maximum(np.einsum("nhwc,cd->nhwd", x, K1[0, 0]) + B1, 0.0)
    assert abs(h["act_mean/tok_conv1"][0] - first.mean()) < 1e-5
    assert abs(h["act_std/tok_conv1"][0] - first.std()) < 1e-5
    assert h["act_mean/tok_conv2"] == [0.0]
    # the recorder put every layer's own call back
    assert all("call" not in vars(layer) for layer in model._flatten_layers())


def test_a_subclassed_model_is_measured_in_forward_order():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.second = keras.layers.Dense(4, activation="relu", name="second")  # declared first
            self.first = keras.layers.Dense(8, activation="relu", name="first")
            self.head = keras.layers.Dense(1, name="head")

        def call(self, x):
            return self.head(self.second(self.first(x)))

    model = Net()
    model(np.zeros((1, 3), np.float32))
    model.first.kernel.assign(np.zeros((3, 8), np.float32))
    model.first.bias.assign(np.array([-1, -1, -1, 1, 1, 1, 1, 1], np.float32))  # 3 of 8 dead
    model.second.kernel.assign(np.zeros((8, 4), np.float32))
    model.second.bias.assign(np.array([-1, 1, 1, 1], np.float32))  # 1 of 4 dead
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = RNG.standard_normal((6, 3)).astype(np.float32)
    h, _ = _fit(model, x, np.zeros((6, 1)), [DeadUnitMonitor(x)])
    assert list(k for k in h if k.startswith("dead_fraction/")) == [
        "dead_fraction/first",
        "dead_fraction/second",
    ]
    assert h["dead_fraction/first"] == [3 / 8]
    assert h["dead_fraction/second"] == [1 / 4]
    assert h["dead_fraction"] == [4 / 12]


def test_nothing_to_monitor_warns_once_and_writes_no_key():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = np.ones((4, 3), np.float32)
    h, messages = _fit(model, x, np.zeros((4, 1)), [DeadUnitMonitor(x), ActivationStats(x)], epochs=2)
    assert not any(k.startswith(("dead_fraction", "act_")) for k in h)
    dead = [m for m in messages if m.startswith("DeadUnitMonitor") and "no ReLU-family activation" in m]
    stats = [m for m in messages if m.startswith("ActivationStats") and "no activation layer" in m]
    assert len(dead) == 1 and len(stats) == 1, messages


def test_a_layer_the_forward_pass_never_calls_is_named():
    class WithSpare(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.used = keras.layers.Dense(4, activation="relu", name="used")
            self.spare = keras.layers.Dense(4, activation="relu", name="spare")  # tracked, never called

        def build(self, input_shape):
            self.used.build(input_shape)
            self.spare.build(input_shape)

        def call(self, x):
            return self.used(x)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(WithSpare()(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    h, messages = _fit(model, x, np.zeros((4, 1)), [DeadUnitMonitor(x)], epochs=2)
    assert "dead_fraction/used" in h and "dead_fraction/spare" not in h
    named = [m for m in messages if "'spare'" in m and "not called" in m]
    assert len(named) == 1, messages


def test_one_relu_reused_after_every_convolution_is_measured_per_call():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv_a = keras.layers.Conv2D(2, 1, name="conv_a")
            self.conv_b = keras.layers.Conv2D(3, 1, name="conv_b")
            self.relu = keras.layers.ReLU(name="relu")  # one instance, called twice per forward pass
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.head = keras.layers.Dense(1, name="head")

        def call(self, x):
            return self.head(self.pool(self.relu(self.conv_b(self.relu(self.conv_a(x))))))

    model = Net()
    model(np.zeros((1, 4, 4, 3), np.float32))
    for conv, bias in ((model.conv_a, [-1.0, 1.0]), (model.conv_b, [-1.0, -1.0, 2.0])):
        conv.kernel.assign(np.zeros(conv.kernel.shape, np.float32))
        conv.bias.assign(np.array(bias, np.float32))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = RNG.standard_normal((8, 4, 4, 3)).astype(np.float32)
    h, _ = _fit(model, x, np.zeros((8, 1)), [DeadUnitMonitor(x, warn_above=1.0), ActivationStats(x)])
    assert h["dead_fraction/relu"] == [1 / 2]  # relu(bias) of conv_a: one of two channels is zero
    assert h["dead_fraction/relu_call2"] == [2 / 3]
    assert h["dead_fraction"] == [3 / 5]
    assert h["act_mean/relu"] == [0.5] and h["act_mean/relu_call2"] == [pytest.approx(2 / 3)]

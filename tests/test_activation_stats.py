import keras
import numpy as np

from callbacks import ActivationStats


def _tanh_stack(stddev: float, depth: int = 6):
    inputs = keras.Input((100,))
    x = inputs
    for i in range(depth):
        init = keras.initializers.RandomNormal(stddev=stddev, seed=i)
        x = keras.layers.Dense(100, activation="tanh", kernel_initializer=init, name=f"tanh{i}")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(x))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model


def test_large_init_saturates_tanh():
    x = np.random.default_rng(0).standard_normal((200, 100)).astype(np.float32)
    model = _tanh_stack(stddev=1.0)  # std of the pre-activation ~ sqrt(100) = 10
    history = model.fit(x, np.zeros((200, 10)), verbose=0, callbacks=[ActivationStats(x)])
    assert history.history["saturated/tanh5"][0] > 0.8
    assert "saturated/head" not in history.history


def test_small_init_collapses_activations(tmp_path):
    x = np.random.default_rng(0).standard_normal((200, 100)).astype(np.float32)
    stats = ActivationStats(x, plot_dir=tmp_path)
    model = _tanh_stack(stddev=0.01)  # each layer multiplies the std by about 0.01 * sqrt(100) = 0.1
    history = model.fit(x, np.zeros((200, 10)), verbose=0, callbacks=[stats])
    stds = [history.history[f"act_std/tanh{i}"][0] for i in range(6)]
    assert stds[0] < 0.15 and stds[-1] < 1e-5
    assert all(b < a for a, b in zip(stds, stds[1:]))
    assert history.history["saturated/tanh5"][0] == 0.0
    assert (tmp_path / "activations_epoch1.png").stat().st_size > 1000


def test_means_match_a_direct_computation():
    x = np.random.default_rng(1).standard_normal((50, 100)).astype(np.float32)
    model = _tanh_stack(stddev=0.1, depth=2)
    values = ActivationStats(x).measure(model)
    first = np.tanh(x @ model.get_layer("tanh0").kernel.numpy() + model.get_layer("tanh0").bias.numpy())
    assert abs(values["act_mean/tanh0"] - first.mean()) < 1e-5
    assert abs(values["act_std/tanh0"] - first.std()) < 1e-5

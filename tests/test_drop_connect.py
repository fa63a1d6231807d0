import keras
import numpy as np
import pytest

from layers import DropConnect, gradcheck


def _layer(rate=0.5, seed=1):
    layer = DropConnect(8, rate=rate, seed=seed)
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    layer(x)
    layer.bias.assign(np.linspace(-1, 1, 8).astype(np.float32))
    return layer, x


def test_deterministic_at_inference_and_equal_to_dense():
    layer, x = _layer()
    expected = x @ layer.kernel.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(layer(x, training=False), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layer(x, training=False), layer(x, training=False))


def test_random_in_training_and_drops_weights_at_the_rate():
    layer, x = _layer(rate=0.3)
    a, b = layer(x, training=True).numpy(), layer(x, training=True).numpy()
    assert not np.allclose(a, b)
    # with one-hot inputs the output is one kernel row (masked, scaled) plus the bias
    eye = np.eye(10, dtype=np.float32)
    kernel = layer.kernel.numpy()
    dropped = []
    for _ in range(50):
        out = layer(eye, training=True).numpy() - layer.bias.numpy()
        dropped.append(np.isclose(out, 0.0, atol=1e-7))
        kept = ~dropped[-1]
        np.testing.assert_allclose(out[kept], kernel[kept] / 0.7, rtol=1e-5)
    assert abs(np.mean(dropped) - 0.3) < 0.02  # 4,000 Bernoulli draws: std 0.007


def test_monte_carlo_mean_matches_inference():
    layer, x = _layer(rate=0.5)
    samples = np.stack([layer(x, training=True).numpy() for _ in range(2000)])
    inference = layer(x, training=False).numpy()
    # standard error of each mean < 0.05 here; allow four of them
    np.testing.assert_allclose(samples.mean(0), inference, atol=0.2)
    assert np.abs(samples.mean(0) - inference).mean() < 0.05


def test_gradient_check_with_a_fixed_mask():
    x = np.random.default_rng(3).standard_normal((5, 6))
    assert gradcheck(DropConnect(4, rate=0.5, activation="tanh", seed=2), x, training=True).passed(1e-6)
    assert gradcheck(DropConnect(4, rate=0.5), x, training=False).passed(1e-6)


def test_saves_and_loads_in_a_model(tmp_path):
    inputs = keras.Input((10,))
    model = keras.Model(inputs, DropConnect(8, rate=0.25, activation="relu", seed=3, name="dc")(inputs))
    x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    config = loaded.get_layer("dc").get_config()
    assert config["rate"] == 0.25 and config["seed"] == 3 and config["activation"] == "relu"


def test_bad_rate():
    with pytest.raises(ValueError, match="rate=1.0"):
        DropConnect(4, rate=1.0)

import keras
import numpy as np
import pytest

from layers import Maxout, gradcheck


def test_output_is_the_max_of_the_affine_pieces_computed_by_hand():
    layer = Maxout(4, pieces=3)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    layer(x)
    layer.bias.assign(np.random.default_rng(1).standard_normal(12).astype(np.float32))
    w, b = layer.kernel.numpy(), layer.bias.numpy()
    expected = np.empty((5, 4))
    for unit in range(4):
        pieces = [x @ w[:, unit * 3 + k] + b[unit * 3 + k] for k in range(3)]
        expected[:, unit] = np.max(pieces, axis=0)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_acts_on_the_last_axis_of_any_rank():
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 8)).astype(np.float32)
    layer = Maxout(3, pieces=2)
    out = layer(x)
    assert out.shape == (2, 5, 5, 3)
    flat = layer(x.reshape(-1, 8))
    np.testing.assert_allclose(np.reshape(out, (-1, 3)), flat, rtol=1e-6)


def test_convex_in_the_input():
    layer = Maxout(6, pieces=4)
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((100, 5)).astype(np.float32), rng.standard_normal((100, 5)).astype(np.float32)
    layer(a)
    for t in (0.2, 0.5, 0.9):
        mixed = layer(t * a + (1 - t) * b).numpy()
        bound = t * layer(a).numpy() + (1 - t) * layer(b).numpy()
        assert np.all(mixed <= bound + 1e-5)


def test_gradient_check():
    result = gradcheck(Maxout(4, pieces=3), np.random.default_rng(3).standard_normal((5, 6)))
    assert result.max_relative_error < 1e-6


def test_saves_and_loads_in_a_model(tmp_path):
    inputs = keras.Input((6,))
    model = keras.Model(inputs, Maxout(4, pieces=3, name="mx")(inputs))
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.get_layer("mx").get_config()["pieces"] == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="units=0"):
        Maxout(0)

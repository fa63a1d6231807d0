"""``layers.gelu_tanh``: GELU's tanh approximation, by its formula, close to the exact GELU, saved by name."""

import math

import keras
import numpy as np

from layers import gelu_tanh, get_activation


def test_gelu_tanh_is_the_tanh_formula_and_within_a_thousandth_of_exact_gelu():
    x = np.linspace(-6, 6, 241)
    expected = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    got = keras.ops.convert_to_numpy(gelu_tanh(keras.ops.convert_to_tensor(x, "float32")))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.max(np.abs(got - exact)) < 1e-3
    assert get_activation("gelu_tanh") is gelu_tanh
    assert get_activation("relu") is keras.activations.relu


def test_a_fast_model_with_gelu_tanh_saves_and_loads_back(tmp_path):
    from recipes.registry import get_recipe

    recipe = get_recipe("fast")
    cfg = recipe.config(["model.activation=gelu_tanh", "model.width1=8", "model.width2=8", "model.width3=8"])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (64, 32, 32, 3)).astype("float32")
    stats = {"mean": [125.0] * 3, "variance": [4000.0] * 3, "num_classes": 10, "input_shape": (32, 32, 3)}
    model = recipe.build_model(cfg, {**stats, "images": images})
    assert model.get_layer("block1_act1").activation is gelu_tanh
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("block1_act1").activation is gelu_tanh
    before, after = (keras.ops.convert_to_numpy(m(images[:4])) for m in (model, loaded))
    np.testing.assert_allclose(after, before, atol=1e-5)

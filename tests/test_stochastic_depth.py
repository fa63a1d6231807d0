import keras
import numpy as np
import pytest

from layers import StochasticDepth, gradcheck, linear_survival_probabilities


def _inputs(batch=4000):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((batch, 3)).astype(np.float32), np.ones((batch, 3), np.float32)]


def test_inference_is_the_expectation_and_deterministic():
    shortcut, residual = _inputs(8)
    layer = StochasticDepth(0.8)
    np.testing.assert_allclose(
        layer([shortcut, residual], training=False), shortcut + 0.8 * residual, rtol=1e-6
    )


def test_training_keeps_whole_branches_per_example_independently():
    shortcut, residual = _inputs()
    out = StochasticDepth(0.7, seed=1)([shortcut, residual], training=True).numpy()
    kept = np.round(out - shortcut, 5)  # 1 where the branch was kept, 0 where dropped, for the whole example
    assert np.all(np.isclose(kept, 0, atol=1e-6) | np.isclose(kept, 1, atol=1e-6))
    per_example = kept[:, 0]
    np.testing.assert_array_equal(kept, np.repeat(per_example[:, None], 3, axis=1))
    assert abs(per_example.mean() - 0.7) < 0.025  # 4,000 draws: std 0.007
    # independence: examples are not all kept or all dropped together, and neighbours do not correlate
    assert 0 < per_example.sum() < len(per_example)
    assert abs(np.corrcoef(per_example[:-1], per_example[1:])[0, 1]) < 0.06


def test_monte_carlo_mean_matches_inference():
    shortcut, residual = _inputs(16)
    layer = StochasticDepth(0.6, seed=2)
    samples = np.stack([layer([shortcut, residual], training=True).numpy() for _ in range(3000)])
    np.testing.assert_allclose(samples.mean(0), layer([shortcut, residual], training=False), atol=0.04)


def test_linear_rule():
    assert linear_survival_probabilities(4, 0.5) == pytest.approx([0.875, 0.75, 0.625, 0.5])
    assert linear_survival_probabilities(3, 1.0) == [1.0, 1.0, 1.0]


def test_gradient_check():
    rng = np.random.default_rng(3)
    pair = [rng.standard_normal((6, 3)), rng.standard_normal((6, 3))]
    assert gradcheck(StochasticDepth(0.5, seed=4), pair, training=True).passed(1e-6)
    assert gradcheck(StochasticDepth(0.5), pair, training=False).passed(1e-6)


def test_saves_and_loads_in_a_model(tmp_path):
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], StochasticDepth(0.9, name="sd")([a, b]))
    x = [np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32)]
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.get_layer("sd").survival_probability == 0.9


def test_bad_probability():
    with pytest.raises(ValueError, match="survival_probability=0"):
        StochasticDepth(0)

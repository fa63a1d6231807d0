"""PatchWhitening: the outputs on training patches have identity covariance; the bias gate; saving."""

import keras
import numpy as np
import pytest

from layers import PatchWhitening, adapt_whitening


@pytest.fixture
def normalized_images(sample_arrays):
    x = sample_arrays[0][:600].astype(np.float32)
    return (x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))


def _patches(images, k):
    """Every k x k patch, flattened as (row, column, channel), built with explicit loops."""
    n, h, w, c = images.shape
    out = [images[:, i : i + h - k + 1, j : j + w - k + 1, :] for i in range(k) for j in range(k)]
    return np.stack(out, axis=3).reshape(-1, k * k * c)


def test_outputs_on_training_patches_have_identity_covariance(normalized_images):
    eps = 1e-9  # the smallest eigenvalue of real 2x2 patches is about 1e-4
    layer = PatchWhitening(2, eps=eps)
    layer.adapt(normalized_images)
    out = keras.ops.convert_to_numpy(layer(normalized_images)).astype(np.float64)
    d = 12
    assert out.shape == (600, 31, 31, 2 * d)
    positive = out[..., :d].reshape(-1, d)
    np.testing.assert_allclose(positive.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(positive, rowvar=False), np.eye(d), atol=2e-3)
    np.testing.assert_allclose(out[..., d:], -out[..., :d], atol=1e-4)  # the negated copies


def test_eps_caps_the_gain_of_weak_directions(normalized_images):
    eps = 5e-4
    layer = PatchWhitening(2, eps=eps)
    layer.adapt(normalized_images)
    patches = _patches(normalized_images.astype(np.float64), 2)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(patches, rowvar=False)))[::-1]
    out = keras.ops.convert_to_numpy(layer(normalized_images)).astype(np.float64)[..., :12].reshape(-1, 12)
    # each output's variance is lambda / (lambda + eps), strongest direction first
    np.testing.assert_allclose(out.var(axis=0), eigenvalues / (eigenvalues + eps), rtol=5e-3, atol=1e-4)
    assert eigenvalues[-1] / (eigenvalues[-1] + eps) < 0.99  # the cap does act on real patches


def test_bias_gate_stops_the_gradient_but_not_the_value(normalized_images):
    import tensorflow as tf

    layer = PatchWhitening(2)
    layer.adapt(normalized_images[:50])
    x = tf.constant(normalized_images[:4])
    layer.bias.assign(np.arange(24, dtype=np.float32))
    outputs = {}
    for gate in (1.0, 0.0):
        layer.bias_gate.assign(gate)
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(y)
        grad = tape.gradient(loss, layer.bias.value)
        grad = np.zeros(24) if grad is None else keras.ops.convert_to_numpy(grad)
        # d sum(y) / d bias = the number of output positions (4 images x 31 x 31) when the gate is open
        np.testing.assert_allclose(grad, np.full(24, 4 * 31 * 31 * gate))
        outputs[gate] = keras.ops.convert_to_numpy(y)
    np.testing.assert_allclose(outputs[0.0], outputs[1.0])  # the gate changes gradients, not values
    assert layer.trainable_weights == [layer.bias]


def test_model_with_whitening_saves_and_loads(tmp_path, normalized_images):
    inputs = keras.Input((32, 32, 3))
    x = PatchWhitening(2, eps=1e-3, name="whiten")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    assert adapt_whitening(model, normalized_images) == 1
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(normalized_images[:8], verbose=0),
        model.predict(normalized_images[:8], verbose=0),
        atol=1e-5,
    )
    assert loaded.get_layer("whiten").get_config()["eps"] == 1e-3


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kernel_size"):
        PatchWhitening(0)
    with pytest.raises(ValueError, match="eps"):
        PatchWhitening(2, eps=-1.0)

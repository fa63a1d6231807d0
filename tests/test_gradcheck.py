import keras
import numpy as np
import tensorflow as tf

from layers import Maxout, gradcheck


@keras.saving.register_keras_serializable(package="tests")
class WrongGradient(keras.layers.Layer):
    """y = x^3 with a hand-written gradient that forgets the factor 3."""

    def call(self, x):
        @tf.custom_gradient
        def cube(v):
            return v**3, lambda dy: dy * v**2

        return cube(x)


def test_finds_a_wrong_hand_written_gradient():
    x = np.random.default_rng(0).standard_normal((4, 3)) + 2.0
    result = gradcheck(WrongGradient(), x)
    assert result.max_relative_error > 0.5  # |g - 3g| / |3g| = 2/3


def test_small_functional_model_passes_in_float64():
    inputs = keras.Input((5,))
    x = Maxout(4, pieces=2)(inputs)
    outputs = keras.layers.Dense(3, activation="tanh")(x)
    model = keras.Model(inputs, outputs)
    result = gradcheck(model, np.random.default_rng(1).standard_normal((6, 5)))
    assert result.max_relative_error < 1e-6
    assert {"input_0"} < set(result.errors) and result.checked > 20

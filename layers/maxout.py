"""Maxout units (Goodfellow et al. 2013)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="layers")
class Maxout(keras.layers.Layer):
    """Each output unit is the max of ``pieces`` affine maps of the input: ``max_k (x W_k + b_k)``.

    Acts on the last axis, so it works on any rank: after a Dense layer (N, D) or per pixel after a conv
    layer (N, H, W, C). Every piece has its own weights and bias. A maxout unit is a convex, piecewise
    linear function of its input; with two pieces it can represent ReLU and leaky ReLU, without dead units.

    Args:
        units: output units.
        pieces: affine pieces per unit (``k`` in the paper), >= 2 for a nonlinearity.
        kernel_initializer, bias_initializer, kernel_regularizer: as for ``Dense``.

    Example:
        >>> x = keras.layers.Dense(256)(x)
        >>> x = Maxout(128, pieces=2)(x)

    Reference:
        Goodfellow et al. 2013, "Maxout Networks".
    """

    def __init__(
        self,
        units: int,
        pieces: int = 2,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(units) != units or units < 1:
            raise ValueError(f"`units` must be a positive integer. Received: units={units}")
        if int(pieces) != pieces or pieces < 1:
            raise ValueError(f"`pieces` must be a positive integer. Received: pieces={pieces}")
        self.units = int(units)
        self.pieces = int(pieces)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"Maxout needs a known last dimension. Received: input_shape={input_shape}")
        # one column per (unit, piece), pieces varying fastest
        self.kernel = self.add_weight(
            name="kernel",
            shape=(dim, self.units * self.pieces),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.units * self.pieces,), initializer=self.bias_initializer
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: dim})

    def call(self, inputs):
        z = ops.matmul(inputs, self.kernel) + self.bias
        shape = ops.shape(z)
        z = ops.reshape(z, tuple(shape[:-1]) + (self.units, self.pieces))
        return ops.max(z, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "pieces": self.pieces,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }

"""DropConnect (Wan et al. 2013): a Dense layer whose weights, not activations, are dropped."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="layers")
class DropConnect(keras.layers.Layer):
    """``activation(x (W * M) / (1 - rate) + b)`` in training, ``activation(x W + b)`` at inference.

    During training each kernel weight is zeroed with probability ``rate`` (a Bernoulli mask ``M``); the
    kept weights are scaled by ``1 / (1 - rate)`` (inverted scaling), so the expected pre-activation in
    training equals the inference pre-activation exactly, and inference is deterministic and free. With
    ``activation=None`` the inference output is therefore the exact expectation of the training output;
    with a nonlinearity it is the mean-field approximation (Wan et al.'s inference instead samples a
    Gaussian moment match, which costs extra passes). One mask is drawn per batch, not per example:
    per-example masks need a ``batch x inputs x units`` tensor, which is too large for real layers.
    The bias is not dropped.

    Args:
        units: output units.
        rate: probability of dropping each weight, in [0, 1).
        activation: activation applied after the affine map.
        seed: optional integer seed.
        kernel_initializer, bias_initializer, kernel_regularizer: as for ``Dense``.

    Example:
        >>> x = DropConnect(512, rate=0.5, activation="relu")(x)

    Reference:
        Wan et al. 2013, "Regularization of Neural Networks using DropConnect".
    """

    def __init__(
        self,
        units: int,
        rate: float = 0.5,
        activation=None,
        seed: int | None = None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(units) != units or units < 1:
            raise ValueError(f"`units` must be a positive integer. Received: units={units}")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1). Received: rate={rate}")
        self.units = int(units)
        self.rate = float(rate)
        self.activation = keras.activations.get(activation)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"DropConnect needs a known last dimension. Received: input_shape={input_shape}")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(dim, self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: dim})

    def call(self, inputs, training=None):
        kernel = self.kernel
        if training and self.rate > 0:
            keep = keras.random.uniform(ops.shape(kernel), seed=self.seed_generator) >= self.rate
            kernel = ops.where(keep, kernel / ops.cast(1.0 - self.rate, kernel.dtype), ops.zeros_like(kernel))
        return self.activation(ops.matmul(inputs, kernel) + self.bias)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "rate": self.rate,
            "activation": keras.activations.serialize(self.activation),
            "seed": self.seed,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }

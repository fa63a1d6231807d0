"""Stochastic depth (drop-path): randomly skip a residual branch per example during training.

Naming: this drops a whole residual *branch* for an example; DropConnect (``layers.DropConnect``) drops
individual *weights*. The two are distinct and kept apart.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="layers")
class StochasticDepth(keras.layers.Layer):
    """``shortcut + b * residual`` with ``b ~ Bernoulli(survival_probability)`` per example in training.

    Called on ``[shortcut, residual]``. During training each example keeps its residual branch with
    probability ``p = survival_probability``, independently of the other examples in the batch. At
    inference the branch is scaled by ``p`` (Huang et al.'s rule), which is the expectation of the training
    output: ``shortcut + p * residual``.

    Args:
        survival_probability: probability ``p`` in (0, 1] of keeping the residual branch.
        seed: optional integer seed.

    Example:
        >>> x = StochasticDepth(0.8)([shortcut, residual])

    Reference:
        Huang et al. 2016, "Deep Networks with Stochastic Depth".
    """

    def __init__(self, survival_probability: float = 0.5, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < survival_probability <= 1.0:
            raise ValueError(
                "`survival_probability` must be in (0, 1]. "
                f"Received: survival_probability={survival_probability}"
            )
        self.survival_probability = float(survival_probability)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(
                f"StochasticDepth is called on [shortcut, residual]. Received input_shape={input_shape}"
            )
        if tuple(input_shape[0]) != tuple(input_shape[1]):
            raise ValueError(
                "shortcut and residual must have the same shape. "
                f"Received: {input_shape[0]} and {input_shape[1]}"
            )
        self.built = True

    def call(self, inputs, training=None, mask=None):
        shortcut, residual = inputs
        p = self.survival_probability
        if not training or p == 1.0:
            return shortcut + ops.cast(p, residual.dtype) * residual
        batch = ops.shape(residual)[0]
        keep_shape = (batch,) + (1,) * (len(residual.shape) - 1)
        keep = keras.random.uniform(keep_shape, seed=self.seed_generator) < p
        return shortcut + ops.cast(keep, residual.dtype) * residual

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "survival_probability": self.survival_probability, "seed": self.seed}


def linear_survival_probabilities(num_blocks: int, final: float) -> list[float]:
    """Huang et al.'s linear decay rule: block ``l`` of ``L`` (1-based) survives with
    ``1 - l / L * (1 - final)``, so the first block keeps almost always and the last keeps with ``final``."""
    if num_blocks < 1:
        raise ValueError(f"`num_blocks` must be >= 1. Received: num_blocks={num_blocks}")
    if not 0.0 < final <= 1.0:
        raise ValueError(f"`final` must be in (0, 1]. Received: final={final}")
    return [1.0 - (i + 1) / num_blocks * (1.0 - final) for i in range(num_blocks)]

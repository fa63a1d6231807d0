"""Which layers apply which activation, for the activation monitors."""

from __future__ import annotations

import keras

from callbacks._probe import tracked_layers

RELU_FAMILY = ("relu", "relu6")  # activations that output exact zeros, so units can die
SATURATING = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0)}


def activation_name(layer: keras.layers.Layer) -> str | None:
    """The name of the nonlinearity a layer applies last, or None for a linear layer."""
    if isinstance(layer, keras.layers.ReLU):
        if float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0:
            return "relu6" if layer.max_value == 6 else "relu"
        return "leaky_relu"
    if isinstance(layer, keras.layers.LeakyReLU):
        return "leaky_relu"
    if isinstance(layer, keras.layers.PReLU):
        return "prelu"
    if isinstance(layer, keras.layers.ELU):
        return "elu"
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None or isinstance(activation, keras.layers.Layer):
        return None
    name = getattr(activation, "__name__", None)
    return None if name in (None, "linear") else name


def activation_layers(model: keras.Model, names: tuple[str, ...] | None = None) -> list:
    """Layers of ``model``, nested ones included, whose output passed through an activation (``names``:
    only those); softmax outputs are left out (a distribution, not hidden units)."""
    found = []
    for layer in tracked_layers(model):
        name = activation_name(layer)
        if name is not None and name != "softmax" and (names is None or name in names):
            found.append(layer)
    return found

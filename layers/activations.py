"""Activation functions that Keras does not name: the tanh approximation of GELU.

``keras.layers.Activation("gelu")`` computes the exact GELU, ``x * Phi(x)`` through ``erf``; its tanh
approximation (Hendrycks and Gimpel's ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, within 1e-3 of
it everywhere) avoids ``erf``, which may be cheaper or not: on one 2-vCPU EPYC it trained ``fast`` at
0.94-1.11x exact GELU's speed in bfloat16, depending on the hour (benchmarks/RESULTS.md). Registered, so a
model that uses it by name saves to ``.keras`` and loads back.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="layers")
def gelu_tanh(x):
    """GELU through its tanh approximation (``keras.activations.gelu(x, approximate=True)``)."""
    return keras.activations.gelu(x, approximate=True)


ACTIVATIONS = {"gelu_tanh": gelu_tanh}


def get_activation(name: str):
    """Keras's activation called ``name``, or one of ours (``gelu_tanh``)."""
    return ACTIVATIONS.get(name) or keras.activations.get(name)

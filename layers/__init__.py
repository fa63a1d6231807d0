"""Custom Keras 3 layers (``from layers import ...``): Maxout, DropConnect, stochastic depth, patch
whitening, the tanh approximation of GELU, and a gradient checker for them."""

from layers.activations import gelu_tanh, get_activation
from layers.drop_connect import DropConnect
from layers.gradcheck import GradCheckResult, gradcheck
from layers.maxout import Maxout
from layers.patch_whitening import PatchWhitening, adapt_whitening
from layers.stochastic_depth import StochasticDepth, linear_survival_probabilities

__all__ = [
    "DropConnect",
    "GradCheckResult",
    "Maxout",
    "PatchWhitening",
    "StochasticDepth",
    "adapt_whitening",
    "gelu_tanh",
    "get_activation",
    "gradcheck",
    "linear_survival_probabilities",
]

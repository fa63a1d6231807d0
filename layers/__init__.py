"""Custom Keras 3 layers (``from layers import ...``): Maxout, DropConnect, stochastic depth, and a
gradient checker for them."""

from layers.drop_connect import DropConnect
from layers.gradcheck import GradCheckResult, gradcheck
from layers.maxout import Maxout
from layers.stochastic_depth import StochasticDepth, linear_survival_probabilities

__all__ = [
    "DropConnect",
    "GradCheckResult",
    "Maxout",
    "StochasticDepth",
    "gradcheck",
    "linear_survival_probabilities",
]

"""keras-tuner search spaces for the recipes, coarse-to-fine search, and trial tables
(``from tuners import ...``)."""

from tuners.coarse_to_fine import CoarseToFineResult, coarse_to_fine, narrow_space
from tuners.hypermodel import RecipeHyperModel, hypermodel
from tuners.results import plot_scores, trials_frame

__all__ = [
    "CoarseToFineResult",
    "RecipeHyperModel",
    "coarse_to_fine",
    "hypermodel",
    "narrow_space",
    "plot_scores",
    "trials_frame",
]

"""keras-tuner search spaces for the recipes, coarse-to-fine search, trial tables and resuming a killed
search (``from tuners import ...``)."""

from tuners import atomic_state
from tuners.coarse_to_fine import CoarseToFineResult, coarse_to_fine, narrow_space
from tuners.hypermodel import RecipeHyperModel, hypermodel
from tuners.results import plot_scores, trials_frame
from tuners.resume import reconcile

atomic_state.install()  # a killed search must leave state files it can resume from

__all__ = [
    "CoarseToFineResult",
    "RecipeHyperModel",
    "coarse_to_fine",
    "hypermodel",
    "narrow_space",
    "plot_scores",
    "reconcile",
    "trials_frame",
]

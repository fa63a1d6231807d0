"""Keras 3 callbacks and schedules for watching a training run (``from callbacks import ...``).

A leaf library: it imports Keras, NumPy and matplotlib's object API, nothing of ``recipes``, ``tuners`` or
``cli.py``. Importing it registers the schedules (``callbacks>Warmup``, ``callbacks>PlateauSchedule``,
``recipes>Replannable``) that saved optimizers name, so ``.keras`` files load after ``import callbacks``.
"""

from callbacks.activation_stats import ActivationStats
from callbacks.clean_accuracy import CleanTrainAccuracy, fit_diagnosis
from callbacks.dead_unit_monitor import DeadUnitMonitor
from callbacks.ema_validation import (
    EMAValidation,
    ema_pairs,
    recompute_batch_norm,
    use_averaged_weights,
)
from callbacks.first_layer_filters import FirstLayerFilters
from callbacks.gradient_stats import GradientStats
from callbacks.learning_rate_logger import LearningRateLogger
from callbacks.lr_finder import LRFinderResult, find_lr
from callbacks.nan_guard import NaNGuard, TrainingDiverged
from callbacks.optimizer_utils import (
    current_learning_rate,
    learning_rate_rising,
    plain_update,
    rate_sized_update,
    unwrap_optimizer,
)
from callbacks.schedules import (
    DECAYS,
    PlateauDecay,
    PlateauSchedule,
    Replannable,
    Warmup,
    decay_schedule,
    find_schedule,
    schedule_position,
    warmup_schedule,
)
from callbacks.update_ratio_logger import UpdateRatioLogger

__all__ = [
    "DECAYS",
    "ActivationStats",
    "CleanTrainAccuracy",
    "DeadUnitMonitor",
    "EMAValidation",
    "FirstLayerFilters",
    "GradientStats",
    "LRFinderResult",
    "LearningRateLogger",
    "NaNGuard",
    "PlateauDecay",
    "PlateauSchedule",
    "Replannable",
    "TrainingDiverged",
    "UpdateRatioLogger",
    "Warmup",
    "current_learning_rate",
    "decay_schedule",
    "ema_pairs",
    "find_lr",
    "find_schedule",
    "fit_diagnosis",
    "learning_rate_rising",
    "plain_update",
    "rate_sized_update",
    "recompute_batch_norm",
    "schedule_position",
    "unwrap_optimizer",
    "use_averaged_weights",
    "warmup_schedule",
]

"""Keras 3 callbacks and schedules for watching a training run (``from callbacks import ...``)."""

from callbacks.activation_stats import ActivationStats
from callbacks.dead_unit_monitor import DeadUnitMonitor
from callbacks.learning_rate_logger import LearningRateLogger
from callbacks.lr_finder import ExponentialRange, LRFinderResult, find_lr
from callbacks.nan_guard import NaNGuard, TrainingDiverged
from callbacks.update_ratio_logger import UpdateRatioLogger
from callbacks.warmup import Warmup, decay_schedule, warmup_schedule

__all__ = [
    "ActivationStats",
    "ExponentialRange",
    "LRFinderResult",
    "find_lr",
    "DeadUnitMonitor",
    "LearningRateLogger",
    "NaNGuard",
    "TrainingDiverged",
    "UpdateRatioLogger",
    "Warmup",
    "decay_schedule",
    "warmup_schedule",
]

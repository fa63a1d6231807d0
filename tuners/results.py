"""Trials as a table and the lecture's figure: the score against each hyperparameter."""

from __future__ import annotations

import math
from pathlib import Path

import keras_tuner as kt
import pandas as pd


def _objective_name(tuner: kt.Tuner) -> str:
    objective = tuner.oracle.objective
    return getattr(objective, "name", None) or objective[0].name


def trials_frame(tuner: kt.Tuner, stage: int | None = None) -> pd.DataFrame:
    """One row per trial: ``trial_id``, ``stage``, ``status``, every hyperparameter (named after its config
    key), the score (named after the objective, e.g. ``val_accuracy``), ``best_epoch`` and ``wall_seconds``.
    """
    score = _objective_name(tuner)
    names = [hp.name for hp in tuner.oracle.get_space().space]
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        row = {"trial_id": trial_id, "stage": stage, "status": trial.status}
        for name in names:
            row[name] = trial.hyperparameters.values.get(name)
        row[score] = trial.score
        row["best_epoch"] = None if trial.best_step is None else int(trial.best_step) + 1
        seconds = None
        if trial.metrics.exists("trial_seconds"):
            seconds = trial.metrics.get_last_value("trial_seconds")
        row["wall_seconds"] = seconds
        row["message"] = getattr(trial, "message", None)
        rows.append(row)
    columns = ["trial_id", "stage", "status", *names, score, "best_epoch", "wall_seconds", "message"]
    return pd.DataFrame(rows, columns=columns)


def best_row(frame: pd.DataFrame, objective: kt.Objective) -> pd.Series | None:
    """The row of :func:`trials_frame` whose score is best in the objective's own direction (lowest
    ``val_loss``, highest ``val_accuracy``), or None when no trial has a score."""
    scores = frame[objective.name].dropna()
    if scores.empty:
        return None
    return frame.loc[scores.idxmin() if objective.direction == "min" else scores.idxmax()]


def log_scaled(tuner: kt.Tuner) -> set[str]:
    return {hp.name for hp in tuner.oracle.get_space().space if getattr(hp, "sampling", None) == "log"}


def plot_scores(frame: pd.DataFrame, score: str, log_names: set[str], path: str | Path) -> Path | None:
    """Score against every numeric hyperparameter, one panel each, log x-axis where sampling was log."""
    from recipes.engine.plots import new_figure, save_figure

    skip = {"trial_id", "stage", "status", score, "best_epoch", "wall_seconds", "message"}
    numeric = [
        c
        for c in frame.columns
        if c not in skip and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].nunique() > 1
    ]
    done = frame[frame[score].notna()]
    if not numeric or done.empty:
        return None
    cols = min(3, len(numeric))
    rows = math.ceil(len(numeric) / cols)
    fig, axes = new_figure(rows, cols, figsize=(4 * cols, 3.2 * rows), dpi=90)
    stages = sorted(done["stage"].dropna().unique()) if done["stage"].notna().any() else [None]
    for ax, name in zip(axes.flat, numeric):
        for stage in stages:
            part = done if stage is None else done[done["stage"] == stage]
            ax.scatter(part[name], part[score], s=18, label=None if stage is None else f"stage {int(stage)}")
        if name in log_names:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(score)
        ax.grid(alpha=0.3)
        if stages != [None]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(numeric) :]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)

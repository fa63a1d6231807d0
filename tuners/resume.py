"""Resuming a keras-tuner search without rerunning finished trials or losing started ones.

keras-tuner writes a trial's ``trial.json`` and then the oracle's ``oracle.json`` both when it starts a trial
and when it ends one, and a kill can fall between the two writes:

- at the end, the trial's own file records it as finished while the oracle still lists it as running; on
  reload keras-tuner queues it for a retry and trains it again. :func:`reconcile` drops such trials from the
  retry queue and records them as ended, as the oracle would have.
- at the start, a ``trial.json`` says "running" for a trial the oracle never recorded. keras-tuner reloads it
  as a trial that counts towards ``max_trials`` but that nothing will ever run, so the search ends one trial
  short. It had not started training (that begins after the oracle's write), so :func:`reconcile` removes
  it; the oracle's saved state is from before that trial was drawn, and it draws it again.

Trials that really were interrupted stay queued: keras-tuner restarts them from epoch 0.
"""

from __future__ import annotations

from pathlib import Path

import keras_tuner as kt

from recipes.engine.atomic import sweep_temporaries

FINISHED = (kt.engine.trial.TrialStatus.COMPLETED, kt.engine.trial.TrialStatus.FAILED)


def reconcile(oracle) -> list[str]:
    """Set right the trials a kill between keras-tuner's two writes left wrong; returns their ids.

    Call it on a freshly reloaded oracle, before the search starts. Oracles without local state (a
    distributed worker's client) are left alone.
    """
    if not hasattr(oracle, "start_order") or not hasattr(oracle, "trials"):
        return []
    project = getattr(oracle, "_project_dir", None)
    if project and Path(project).is_dir():  # the temporaries a kill mid-write left (atomic_state.py)
        for folder in [Path(project), *(p for p in Path(project).rglob("*") if p.is_dir())]:
            sweep_temporaries(folder)
    fixed = _forget_unrecorded(oracle) + _end_finished(oracle)
    if fixed:
        oracle.save()
    return fixed


def _forget_unrecorded(oracle) -> list[str]:
    """Remove trials whose ``trial.json`` was written but that ``oracle.json`` never recorded starting."""
    recorded = set(oracle.start_order)
    orphans = [tid for tid in oracle.trials if tid not in recorded]
    for tid in orphans:
        del oracle.trials[tid]
        trial_dir = Path(oracle._get_trial_dir(tid))
        (trial_dir / "trial.json").unlink(missing_ok=True)
        if not any(trial_dir.iterdir()):
            trial_dir.rmdir()
    return orphans


def _end_finished(oracle) -> list[str]:
    """Un-queue trials whose own files say they finished, and record them as ended."""
    queue = getattr(oracle, "_retry_queue", None)
    if not queue:
        return []
    done = [tid for tid in queue if oracle.trials[tid].status in FINISHED]
    if not done:
        return []
    oracle._retry_queue = [tid for tid in queue if tid not in done]
    for tid in done:
        if tid not in oracle.end_order:
            oracle.end_order.append(tid)
        populate_next = getattr(oracle, "_populate_next", None)  # grid search continues from ended trials
        if populate_next is not None and tid not in populate_next:
            populate_next.append(tid)
    return done

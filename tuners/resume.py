"""Resuming a keras-tuner search without rerunning trials that had already finished.

keras-tuner ends a trial by writing its ``trial.json`` and then the oracle's ``oracle.json``. A kill between
the two leaves a trial that its own file records as finished while the oracle still lists it as running;
on reload keras-tuner queues it for a retry and trains it again. :func:`reconcile` drops such trials from the
retry queue and records them as ended, as the oracle would have. Trials that really were interrupted stay
queued: keras-tuner restarts them from epoch 0.
"""

from __future__ import annotations

import keras_tuner as kt

FINISHED = (kt.engine.trial.TrialStatus.COMPLETED, kt.engine.trial.TrialStatus.FAILED)


def reconcile(oracle) -> list[str]:
    """Un-queue trials whose own files say they finished; returns their ids."""
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
    oracle.save()
    return done

"""Training under ``MultiWorkerMirroredStrategy``, which Keras 3's ``model.fit`` cannot do.

keras-team/keras#20585 (open since TF 2.16; measured on Keras 3.15.1 / TF 2.21): ``fit`` under
``MultiWorkerMirroredStrategy`` fails in ``_maybe_symbolic_build`` (an eager ``strategy.reduce`` of a
``PerReplica`` batch: "Attempt to convert a value (PerReplica...) to a Tensor"), and with that skipped,
in ``reduce_per_replica`` (a ``reduce(..., axis=0)`` of scalar metrics). Patching two private functions
would be fragile, so :func:`fit_distributed` is the smallest sound route: the model's own
``train_step`` / ``test_step`` (the loss scaling and the gradient all-reduce are Keras's) run with
``strategy.run`` in a ``tf.function``, and the callbacks are driven through ``keras.callbacks.CallbackList``
in the order ``fit`` drives them, with the logs ``fit`` gives them. The metrics are read in cross-replica
context, where each metric's totals and counts are summed over every replica of every worker: the
values of one device on the same global batches. ``tests/test_distribute.py`` keeps a test that fails
when Keras fixes the bug, so that this route can be dropped.

Only the chief writes the run directory; the other workers run the same code into
``<out_dir>/workertemp_<index>`` (Keras's multi-worker guide) and delete it when the run ends.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from recipes.engine.checkpoint import numbered_checkpoints
from recipes.engine.distribute import Distribution


def worker_dir(out_dir: Path, task_index: int) -> Path:
    """Where a non-chief worker writes: ``out_dir/workertemp_<index>`` (Keras's multi-worker guide)."""
    return Path(out_dir) / f"workertemp_{task_index}"


def run_directory(dist: Distribution, out_dir: Path) -> Path:
    """``out_dir`` for the chief (and for every run that is not multi-worker), else :func:`worker_dir`."""
    return Path(out_dir) if dist.is_chief else worker_dir(out_dir, dist.task_index)


def finish_worker(dist: Distribution, result):
    """A non-chief worker's folder is deleted once its run has ended; its result names the chief's."""
    if not dist.is_chief:
        shutil.rmtree(result.out_dir, ignore_errors=True)
        result.out_dir = result.out_dir.parent
    return result


def agreed_state(dist: Distribution, out_dir: Path, state: dict | None, epochs: int) -> dict | None:
    """The run state every worker resumes from (multi-worker; others keep ``state``): trimmed to
    :func:`agreed_epoch`, or None (start afresh) when some worker holds no checkpoint."""
    if not dist.custom_loop:
        return state
    saved = state["epochs_completed"] if state else 0
    epoch = agreed_epoch(dist.strategy, out_dir, saved, epochs)
    if epoch == 0:
        return None
    history = state["history"][:epoch]
    vals = [row["val_accuracy"] for row in history if "val_accuracy" in row]
    best = max(vals) if vals else None
    return dict(state, epochs_completed=epoch, history=history, best_val_accuracy=best)


def fit_function(dist: Distribution, model: keras.Model):
    """``model.fit``, or :func:`fit_distributed` under ``MultiWorkerMirroredStrategy`` (keras#20585)."""
    if not dist.custom_loop:
        return model.fit
    return functools.partial(fit_distributed, model, dist.strategy)


def agreed_epoch(strategy: tf.distribute.Strategy, out_dir: Path, saved: int, most: int) -> int:
    """The newest epoch whose checkpoint every worker holds (0: none, start afresh).

    Workers are killed at slightly different moments, so one may have saved epoch k and another only
    k-1 (epoch ends are in lockstep: at most one apart); two checkpoints are kept, so all hold k-1.
    Each worker marks the epochs it holds (up to ``saved``, its state's) in a vector of ``most + 1``
    entries; the sum over workers says which all hold."""
    held = np.zeros(most + 1, np.float32)
    held[0] = 1.0
    for epoch, _ in numbered_checkpoints(Path(out_dir) / "checkpoints"):
        if epoch <= min(saved, most):
            held[epoch] = 1.0
    total = _sum_over_workers(strategy, held)
    everywhere = np.flatnonzero(total >= strategy.num_replicas_in_sync - 0.5)
    return int(everywhere.max())


def _sum_over_workers(strategy: tf.distribute.Strategy, values: np.ndarray) -> np.ndarray:
    @tf.function
    def summed():
        local = strategy.run(lambda: tf.constant(values))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None)

    return summed().numpy()


def any_worker(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """Whether ``flag`` is set on any worker: a stop decided on one (a time budget, a user's callback)
    must stop all, or the others wait for it forever at the next all-reduce."""
    return bool(_sum_over_workers(strategy, np.array([float(flag)], np.float32))[0] > 0)


def _step_function(model: keras.Model, strategy: tf.distribute.Strategy, step):
    """One distributed step of ``step`` (``model.train_step`` or ``test_step``) on the next batch; returns
    the metrics read in cross-replica context (totals and counts summed over all replicas)."""

    @tf.function
    def function(iterator):
        strategy.run(step, args=(next(iterator),))
        return model.get_metrics_result()

    return function


def _distributed(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """Each global batch split over the replicas (every worker reads the whole pipeline and keeps its
    share, so the global batches are those one device sees)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _floats(logs: dict) -> dict:
    return {k: float(v) for k, v in logs.items()}


def _evaluate(model, strategy, test_fn, dataset, callbacks: keras.callbacks.CallbackList) -> dict:
    """``fit``'s validation pass: the test hooks, then the metrics over the whole validation set."""
    model.reset_metrics()
    callbacks.on_test_begin()
    logs: dict = {}
    iterator = iter(_distributed(strategy, dataset))
    for step in range(_cardinality(dataset)):
        callbacks.on_test_batch_begin(step)
        logs = test_fn(iterator)
        callbacks.on_test_batch_end(step, logs)
    logs = _floats(logs)
    callbacks.on_test_end(logs)
    return logs


def _cardinality(dataset: tf.data.Dataset) -> int:
    n = int(dataset.cardinality())
    return n if n >= 0 else sum(1 for _ in dataset)


def fit_distributed(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    train_ds: tf.data.Dataset,
    *,
    epochs: int,
    steps_per_epoch: int,
    initial_epoch: int = 0,
    validation_data: tf.data.Dataset | None = None,
    callbacks: list | tuple = (),
    verbose: int = 0,
    shuffle: bool = False,
) -> keras.callbacks.History:
    """``model.fit(train_ds, validation_data=..., epochs=..., initial_epoch=..., steps_per_epoch=...,
    callbacks=..., verbose=...)`` under ``strategy``: the same hooks in the same order with the same
    logs (see the module's docstring). ``train_ds`` yields global batches, ``steps_per_epoch`` of them
    an epoch; ``shuffle`` is accepted as ``fit`` accepts it for a dataset, and ignored."""
    hooks = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps_per_epoch,
        model=model,
    )
    with strategy.scope():  # what fit does first: the optimizer's and the metrics' variables, not traced
        model._symbolic_build(data_batch=next(iter(train_ds)))
    train_fn = _step_function(model, strategy, model.train_step)
    test_fn = _step_function(model, strategy, model.test_step)
    iterator = iter(_distributed(strategy, train_ds))
    model.stop_training = False
    hooks.on_train_begin()
    epoch_logs: dict | None = None
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        hooks.on_epoch_begin(epoch)
        logs: dict = {}
        for step in range(steps_per_epoch):
            hooks.on_train_batch_begin(step)
            logs = train_fn(iterator)
            hooks.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = _floats(logs)
        if validation_data is not None:
            val = _evaluate(model, strategy, test_fn, validation_data, hooks)
            epoch_logs.update({f"val_{k}": v for k, v in val.items()})
        hooks.on_epoch_end(epoch, epoch_logs)
        model.stop_training = any_worker(strategy, model.stop_training)
        if model.stop_training:
            break
    if epochs > initial_epoch:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    hooks.on_train_end(logs=epoch_logs)
    return model.history

"""A process that trains under a ``tf.distribute`` strategy, for ``tests/test_distribute.py``.

    python tests/distributed_worker.py steps OUT.npz RECIPE key=value ...  # first steps' losses, weights
    python tests/distributed_worker.py nan OUT.npz        # NaNGuard under mirrored, two logical CPUs
    python tests/distributed_worker.py keras_fit OUT.json  # keras#20585: fit under multi-worker

A strategy over logical CPU devices, or a multi-worker one (``TF_CONFIG``), must be set up before
TensorFlow initialises its devices, which pytest's process has done long before: hence a fresh process.
:func:`train_steps` is also what the tests run in their own process for the one-device reference.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402


class BatchLosses(keras.callbacks.Callback):
    """Each step's own loss, recovered from Keras's running mean (``k*m_k - (k-1)*m_{k-1}``)."""

    def __init__(self):
        super().__init__()
        self.losses: list[float] = []
        self._mean = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self.losses.append((batch + 1) * mean - batch * self._mean)
        self._mean = mean


def train_steps(recipe_name: str, overrides: list[str]) -> tuple[np.ndarray, list[np.ndarray], list[list]]:
    """One epoch of ``recipe_name`` under ``trainer.strategy`` (as ``run`` trains it: the strategy made
    first, the model built and compiled in its scope), then the run's end (:func:`finish_weights`: batch
    norm's statistics measured again where ``trainer.bn_refresh`` says); each step's loss, the weights
    after it, and each weight's copy on every replica."""
    from recipes.data import load_data
    from recipes.engine.averaging import finish_weights
    from recipes.engine.distribute import distribution
    from recipes.engine.multi_worker import fit_function
    from recipes.engine.training import build_training, setup_determinism
    from recipes.registry import get_recipe

    recipe = get_recipe(recipe_name)
    cfg = recipe.config(overrides)
    dist = distribution(cfg)  # before any TensorFlow op: the CPU split, the collectives
    data = load_data(cfg.data, seed=cfg.trainer.seed)
    setup_determinism(cfg.trainer.seed, False)
    training = build_training(recipe, cfg, data, monitors=False)
    losses = BatchLosses()
    fit_function(dist, training.model)(
        training.train_ds,
        epochs=1,
        steps_per_epoch=training.steps_per_epoch,
        callbacks=[losses],
        verbose=0,
        shuffle=False,
    )
    finish_weights(training.model, cfg, data, training.batch_size)
    model = training.model
    copies = [
        [np.asarray(c) for c in dist.strategy.experimental_local_results(v.value)] for v in model.weights
    ]
    return np.array(losses.losses), [np.asarray(w) for w in model.get_weights()], copies


def nan_guard_run(strategy=None) -> tuple[dict, list[list[np.ndarray]]]:
    """A linear model fitted with ``NaNGuard`` on 40 examples whose 26th target is NaN (batch 2 of 10; under
    two replicas, the second replica's half): the guard's ``stop_info`` and each replica's weights."""
    import tensorflow as tf

    from callbacks import NaNGuard

    strategy = strategy or tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    y[25] = np.nan
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    guard = NaNGuard(snapshot_every_n_steps=1)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    model.fit(ds, epochs=2, shuffle=False, verbose=0, callbacks=[guard])
    copies = [[np.asarray(c) for c in strategy.experimental_local_results(v.value)] for v in model.weights]
    info = {k: v for k, v in guard.stop_info.items() if k in ("epoch", "step", "reason")}
    return info, copies


def keras_fit_under_multi_worker() -> dict:
    """``model.fit`` of a one-layer model under ``MultiWorkerMirroredStrategy``: what it raises, if any."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).random((32, 4)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, x[:, :3])).batch(8)
    try:
        model.fit(ds, epochs=1, verbose=0)
    except Exception as e:  # the bug's symptom is a ValueError; any failure is recorded for the test
        return {"error": type(e).__name__, "message": str(e)[:300]}
    return {"error": None, "message": ""}


if __name__ == "__main__":
    mode, out, *rest = sys.argv[1:]
    if mode == "steps":
        step_losses, weights, copies = train_steps(rest[0], rest[1:])
        replicas = {f"w{i}_replica{r}": c for i, per in enumerate(copies) for r, c in enumerate(per)}
        np.savez(out, losses=step_losses, **{f"w{i}": w for i, w in enumerate(weights)}, **replicas)
    elif mode == "nan":
        import tensorflow as tf

        from recipes.engine.distribute import cpu_devices

        info, copies = nan_guard_run(tf.distribute.MirroredStrategy(cpu_devices(2)))
        weights = {f"w{i}_replica{r}": c for i, per in enumerate(copies) for r, c in enumerate(per)}
        np.savez(out, info=json.dumps(info), **weights)
    else:
        Path(out).write_text(json.dumps(keras_fit_under_multi_worker()))

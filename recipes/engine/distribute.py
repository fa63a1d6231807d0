"""``trainer.strategy`` and ``trainer.cpu_replicas``: the ``tf.distribute`` strategy a run trains under.

``auto`` is ``MirroredStrategy`` over every GPU when more than one is visible (or over the
``trainer.cpu_replicas`` logical CPU devices when that is above 1), else one device; ``one_device`` is
TensorFlow's default strategy (the first GPU, else the CPU: the path every single-device run takes);
``mirrored`` is ``MirroredStrategy`` over the GPUs, or over the logical CPU devices when there are none;
``multi_worker`` is ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.

``trainer.batch_size`` is the global batch: each of R replicas gets ``batch_size / R`` images and the
gradients are summed over replicas, so a run's learning rate means the same on any number of devices.
Logical CPU devices must be configured before TensorFlow initialises its devices, and
``MultiWorkerMirroredStrategy`` must be created before the first collective: :func:`distribution` is
called first thing by ``run`` (and the tuner), and caches one strategy per process.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import tensorflow as tf

from recipes.config import STRATEGIES, ConfigError

TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
)


@dataclass
class Distribution:
    """A strategy and what a run records about it."""

    strategy: tf.distribute.Strategy
    name: str  # resolved: one_device, mirrored or multi_worker
    replicas: int
    task_type: str | None = None  # multi_worker: this process's TF_CONFIG task
    task_index: int = 0
    is_chief: bool = True

    @property
    def custom_loop(self) -> bool:
        """Whether ``model.fit`` cannot train under this strategy (keras#20585: multi-worker)."""
        return self.name == "multi_worker"

    def scope(self) -> contextlib.AbstractContextManager:
        """The strategy's scope (nothing for the default strategy), for building models and optimizers."""
        return contextlib.nullcontext() if self.name == "one_device" else self.strategy.scope()

    def describe(self, batch_size: int) -> str:
        """``mirrored, 2 replicas, global batch 128 (64 per replica)`` for the start-of-run line."""
        if self.replicas == 1:
            return f"{self.name}, 1 replica, global batch {batch_size}"
        return (
            f"{self.name}, {self.replicas} replicas, global batch {batch_size} "
            f"({batch_size // self.replicas} per replica)"
        )

    def record(self, batch_size: int) -> dict:
        """``metrics.json``'s fields."""
        return {"strategy": self.name, "replicas": self.replicas, "global_batch_size": batch_size}


_MADE: dict[tuple[str, int], Distribution] = {}


def distribution(cfg) -> Distribution:
    """The strategy of ``cfg.trainer.strategy`` / ``cpu_replicas`` (one per process: made once, reused),
    its global batch checked to split evenly over the replicas. Call it before anything else runs
    TensorFlow; a bad setting is a one-line :class:`ConfigError`."""
    t = cfg.trainer
    key = (t.strategy, t.cpu_replicas)
    if key not in _MADE:
        _MADE[key] = _make(t.strategy, t.cpu_replicas)
    dist = _MADE[key]
    check_batch(t.batch_size, dist)
    return dist


def check_batch(batch_size: int, dist: Distribution) -> None:
    """Refuse a global batch that does not split evenly: unequal shares would weight examples unequally."""
    r = dist.replicas
    if batch_size % r:
        lower, upper = batch_size // r * r, (batch_size // r + 1) * r
        fix = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(
            f"trainer.batch_size={batch_size} does not split evenly over the {r} replicas of "
            f"trainer.strategy={dist.name}: it is the global batch; use a multiple of {r} such as {fix}"
        )


def _make(name: str, cpu_replicas: int) -> Distribution:
    if name not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={name}: expected one of {', '.join(STRATEGIES)}")
    gpus = tf.config.list_physical_devices("GPU")
    if cpu_replicas > 1 and gpus:
        raise ConfigError(
            f"trainer.cpu_replicas={cpu_replicas} splits a CPU to rehearse a multi-device run, but "
            f"{len(gpus)} GPU(s) are visible: drop trainer.cpu_replicas (the GPUs are the replicas)"
        )
    if name == "multi_worker":
        return _multi_worker(cpu_replicas)
    if name == "mirrored" or (name == "auto" and (len(gpus) > 1 or cpu_replicas > 1)):
        devices = (
            [d.name for d in tf.config.list_logical_devices("GPU")] if gpus else cpu_devices(cpu_replicas)
        )
        strategy = tf.distribute.MirroredStrategy(devices)
        return Distribution(strategy, "mirrored", strategy.num_replicas_in_sync)
    if cpu_replicas > 1:
        raise ConfigError(
            f"trainer.cpu_replicas={cpu_replicas} with trainer.strategy=one_device trains on one device "
            "only: set trainer.strategy=mirrored (or auto) to use the logical devices"
        )
    return Distribution(tf.distribute.get_strategy(), "one_device", 1)


def cpu_devices(n: int) -> list[str]:
    """The names of ``n`` logical CPU devices, splitting the CPU into ``n`` when TensorFlow has not yet
    initialised its devices (afterwards the split cannot change: a one-line error says so)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if n > 1 and len(tf.config.get_logical_device_configuration(cpu) or [None]) != n:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            raise ConfigError(
                f"trainer.cpu_replicas={n}: TensorFlow already initialised its devices in this process "
                f"({have} CPU device(s)), and the CPU can only be split before that; start a new process "
                "(python cli.py run ... does it first thing), or in your own script call "
                "recipes.engine.distribute.cpu_devices(n) before anything else uses TensorFlow"
            ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")[:n]]


def read_tf_config(text: str | None) -> tuple[dict, str, int]:
    """``TF_CONFIG``'s cluster, task type and index, or a one-line :class:`ConfigError` naming what is
    wrong and showing the expected form."""
    show = f"; expected, on every worker with its own index: TF_CONFIG='{TF_CONFIG_EXAMPLE}'"
    if not text or not text.strip():
        raise ConfigError("trainer.strategy=multi_worker needs the TF_CONFIG environment variable" + show)
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e})" + show) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise ConfigError("TF_CONFIG has no cluster with a worker list" + show)
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(_is_address(a) for a in addresses):
            raise ConfigError(
                f"TF_CONFIG cluster.{kind}={addresses!r}: expected a list of 'host:port'" + show
            )
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ConfigError(f"TF_CONFIG task={task!r}: expected a type among {sorted(cluster)}" + show)
    index, kind = task.get("index"), task["type"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(
            f"TF_CONFIG task.index={index!r}: expected 0..{len(cluster[kind]) - 1} ({kind}s listed)" + show
        )
    return cluster, kind, index


def _is_address(text) -> bool:
    host, _, port = str(text).rpartition(":")
    return isinstance(text, str) and bool(host) and port.isdigit() and 0 < int(port) < 65536


def _multi_worker(cpu_replicas: int) -> Distribution:
    cluster, kind, index = read_tf_config(os.environ.get("TF_CONFIG"))
    if cpu_replicas > 1:
        raise ConfigError(
            f"trainer.cpu_replicas={cpu_replicas} does not apply to trainer.strategy=multi_worker (each "
            "worker trains on its GPUs or on one CPU): start more worker processes instead"
        )
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return Distribution(strategy, "multi_worker", strategy.num_replicas_in_sync, kind, index, chief)


def distribution_for_run(cfg) -> Distribution:
    """:func:`distribution` for ``run``, refusing what a multi-worker run cannot do: a run directory
    that each worker would name differently, and a time budget (each worker's clock would re-plan the
    schedule its own way, and the mirrored weights would drift apart)."""
    t = cfg.trainer
    if t.strategy == "multi_worker" and not t.out_dir:
        raise ConfigError(
            "trainer.strategy=multi_worker needs trainer.out_dir=DIR, the same on every worker, so that a "
            "restarted job finds its run"
        )
    if t.strategy == "multi_worker" and t.budget is not None:
        raise ConfigError(
            f"trainer.budget={t.budget} with trainer.strategy=multi_worker: each worker would re-plan on "
            "its own clock; drop trainer.budget and set trainer.epochs"
        )
    return distribution(cfg)

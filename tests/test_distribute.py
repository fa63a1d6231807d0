"""``trainer.strategy`` / ``trainer.cpu_replicas``: data-parallel training gives what one device gives.

A split CPU or a multi-worker strategy must be set up before TensorFlow initialises its devices, so the
distributed side of each comparison runs in a fresh process (``tests/distributed_worker.py``, or
``cli.py``); the one-device reference runs here, in pytest's process.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from recipes import run
from recipes.config import ConfigError
from recipes.engine import distribute
from recipes.engine.distribute import Distribution, check_batch, cpu_devices, read_tf_config
from tests import processes
from tests.conftest import ROOT
from tests.distributed_worker import nan_guard_run, train_steps

WORKER = str(ROOT / "tests" / "distributed_worker.py")
TINY = ["data.name=sample", "data.train_limit=256", "data.val_size=100", "trainer.verbose=silent"]
MLP = [*TINY, "model.width=16", "trainer.batch_size=64", "trainer.epochs=2"]
MIRRORED = ["trainer.strategy=mirrored", "trainer.cpu_replicas=2"]
RTOL = ATOL = 1e-5  # float32: the replicas sum their gradients in another order than one device does


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _finish(procs: list[processes.Process], timeout: int = 240) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        try:
            done = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((done.returncode, done.stdout, done.stderr))
    return results


def _start(args: list[str], env: dict, cwd=ROOT) -> processes.Process:
    """``python ARGS``: a new process, whose TensorFlow has not initialised its devices."""
    return processes.Process(args[0], args[1:], env=env, cwd=cwd)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"localhost:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _on_workers(args: list[str], ports: list[int], cwd=ROOT) -> list[tuple[int, str, str]]:
    """``python ARGS`` on every worker of a loopback cluster at once; their exit codes and output."""
    return _finish([_start(args, _env(TF_CONFIG=_tf_config(ports, i)), cwd) for i in range(len(ports))])


def _history(path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) if v else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


# Monitors that skip an epoch when measuring would cost too much of it (``EpochCadence``): an epoch's
# cell is empty (nan) or not by the clock, on one device as on several.
CADENCED = ("dead_fraction", "grad_norm", "act_mean/", "act_std/", "saturated/")


def _assert_same_history(got: list[dict], expected: list[dict]) -> None:
    """Each key of each epoch equal within tolerance (the epoch's seconds aside); a cadenced monitor's
    value wherever both runs measured it, which each did at least once."""
    assert len(got) == len(expected)
    for key in expected[0]:
        if key == "epoch_seconds":
            continue
        a = np.array([row[key] for row in got])
        b = np.array([row[key] for row in expected])
        if key.startswith(CADENCED):
            both = np.isfinite(a) & np.isfinite(b)
            assert both.any(), f"{key} never measured by both runs"
            a, b = a[both], b[both]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=key)
    assert set(got[0]) == set(expected[0])


# -------------------------------------------------------------------------------------------------
# Bad settings: one line naming the problem and the fix
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, problem",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("  ", "needs the TF_CONFIG environment variable"),
        ("{cluster: 1}", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "no cluster with a worker list"),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "'host:port'"),
        ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', "'host:port'"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "ps", "index": 0}}', "expected a type"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "expected 0..1"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}', "task.index='0'"),
    ],
)
def test_a_bad_tf_config_is_one_line_with_the_expected_form(text, problem):
    with pytest.raises(ConfigError, match="TF_CONFIG") as e:
        read_tf_config(text)
    message = str(e.value)
    assert problem in message and "\n" not in message
    assert distribute.TF_CONFIG_EXAMPLE in message  # the fix: what to set


def test_a_good_tf_config_names_the_chief():
    cluster, kind, index = read_tf_config(_tf_config([1234, 1235], 1))
    assert (kind, index, len(cluster["worker"])) == ("worker", 1, 2)


@pytest.mark.parametrize(
    "batch, replicas, fix",
    [(129, 2, "128 or 130"), (130, 4, "128 or 132"), (1, 2, "such as 2"), (10, 3, "9 or 12")],
)
def test_a_global_batch_that_does_not_split_is_refused(batch, replicas, fix):
    with pytest.raises(ConfigError, match=f"trainer.batch_size={batch} does not split evenly") as e:
        check_batch(batch, Distribution(None, "mirrored", replicas))
    assert fix in str(e.value) and f"multiple of {replicas}" in str(e.value)
    check_batch(batch * replicas, Distribution(None, "mirrored", replicas))  # a multiple passes


@pytest.mark.parametrize(
    "strategy, replicas, env, problem",
    [
        ("auto", 2, {}, "2 GPU(s) are visible: drop trainer.cpu_replicas"),
        ("mirrored", 4, {}, "2 GPU(s) are visible"),
        ("multi_worker", 1, {}, "needs the TF_CONFIG environment variable"),
        ("multi_worker", 1, {"TF_CONFIG": "[]"}, "no cluster"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_any_strategy(
    monkeypatch, strategy, replicas, env, problem
):
    gpus = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")] * 2 if replicas > 1 else []
    real = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else real(kind)
    )
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as e:
        distribute._make(strategy, replicas)
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_multi_worker_with_cpu_replicas_and_one_device_with_cpu_replicas_are_refused(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config([1234, 1235], 0))
    with pytest.raises(ConfigError, match="start more worker processes instead"):
        distribute._make("multi_worker", 2)
    with pytest.raises(ConfigError, match="set trainer.strategy=mirrored"):
        distribute._make("one_device", 2)


def test_splitting_the_cpu_after_tensorflow_started_is_one_line():
    tf.constant(1.0) + 1.0  # TensorFlow's devices are initialised in this process now
    with pytest.raises(ConfigError, match="already initialised its devices") as e:
        cpu_devices(len(tf.config.list_logical_devices("CPU")) + 1)
    assert "start a new process" in str(e.value) and "\n" not in str(e.value)


def test_the_cli_refuses_a_batch_that_does_not_split_in_one_line(tmp_path):
    # a fresh process: the CPU is split before TensorFlow starts
    args = [str(ROOT / "cli.py"), "run", "recipe=mlp", *TINY, f"trainer.out_dir={tmp_path / 'r'}"]
    proc = subprocess.run(
        [sys.executable, *args, *MIRRORED, "trainer.batch_size=65"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.batch_size=65 does not split evenly" in lines[0], lines


@pytest.mark.parametrize(
    "overrides, tf_config, problem",
    [
        (["trainer.strategy=multi_worker"], None, "needs the TF_CONFIG environment variable"),
        (["trainer.strategy=multi_worker", "trainer.budget=60"], "x", "trainer.budget=60"),
    ],
)
def test_the_cli_refuses_bad_multi_worker_settings_in_one_line(
    tmp_path, capsys, monkeypatch, overrides, tf_config, problem
):
    import cli

    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    assert cli.main(["run", "recipe=mlp", *TINY, f"trainer.out_dir={tmp_path / 'r'}", *overrides]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], lines


# -------------------------------------------------------------------------------------------------
# Mirrored over two logical CPU devices against one device
# -------------------------------------------------------------------------------------------------


def test_mirrored_steps_match_one_device(tmp_path):
    """Same global batch and seed: the first steps' losses and the weights after them agree, for a model
    without batch norm, for one with synchronised batch norm (statistics over the global batch) and for
    ``fast``, whose conv kernels take Muon steps. The first augments its images in the train step on the
    replicas (``data.augment_on=device``), its reference in the input pipeline: each replica crops and
    flips its half of the batch as one device does. ``fast`` ends on its lookahead's slow weights, whose
    batch-norm statistics the run measures again (``trainer.bn_refresh=auto``): each replica holds the
    one-device statistics."""
    steps = [*MLP, "schedule.warmup_epochs=0", "optimizer.lr=0.05"]  # steps that change the loss
    augmented = [*steps, "data.augment=true", "data.cutout=8"]
    # fast's conv kernels take Muon steps (their update a function of the whole kernel's momentum)
    muon = [*TINY, "model.width1=8", "model.width2=8", "model.width3=8", "model.sync_batch_norm=true"]
    muon += ["trainer.batch_size=64", "trainer.precision=float32", "data.augment=false"]
    variants = {  # name: (mirrored's overrides, the one-device reference's)
        "augmented": ([*augmented, "data.augment_on=device"], [*augmented, "data.augment_on=host"]),
        "sync_bn": ([*steps, "model.batch_norm=true", "model.sync_batch_norm=true"],) * 2,
        "fast_muon": (muon,) * 2,
    }
    recipe_of = {"fast_muon": "fast"}  # the others are mlp
    procs = {
        name: _start(
            [WORKER, "steps", str(tmp_path / f"{name}.npz"), recipe_of.get(name, "mlp"), *o, *MIRRORED],
            _env(),
        )
        for name, (o, _) in variants.items()
    }
    results = dict(zip(procs, _finish(list(procs.values()))))
    for name, (_, overrides) in variants.items():
        code, _, err = results[name]
        assert code == 0, err[-3000:]
        losses, weights, _ = train_steps(recipe_of.get(name, "mlp"), overrides)  # one device, here
        got = np.load(tmp_path / f"{name}.npz")
        assert len(losses) == 4 and np.all(np.isfinite(losses)) and np.ptp(losses) > 1e-3  # it learns
        np.testing.assert_allclose(got["losses"], losses, rtol=RTOL, atol=ATOL, err_msg=name)
        assert len(got.files) - 1 == 3 * len(weights)  # the weights, and their copy on each replica
        for i, w in enumerate(weights):
            for key in (f"w{i}", f"w{i}_replica0", f"w{i}_replica1"):
                np.testing.assert_allclose(got[key], w, rtol=RTOL, atol=ATOL, err_msg=f"{name} {key}")


def test_every_callback_under_mirrored_gives_the_one_device_history(tmp_path):
    """A whole ``run`` with every monitor on (learning rate, dead units, update ratio, activation and
    gradient statistics, clean accuracy, the NaN guard, checkpoints): each key of ``history.csv``."""
    monitors = [*MLP, "callbacks.activation_stats=true"]
    proc = _start(
        [
            str(ROOT / "cli.py"),
            "run",
            "recipe=mlp",
            *monitors,
            *MIRRORED,
            f"trainer.out_dir={tmp_path / 'm'}",
        ],
        _env(),
    )
    reference = run("mlp", [*monitors, f"trainer.out_dir={tmp_path / 'one'}"])
    [(code, out, err)] = _finish([proc])
    assert code == 0, err[-3000:]
    assert "mirrored, 2 replicas, global batch 64 (32 per replica)" in out  # the start-of-run line
    _assert_same_history(
        _history(tmp_path / "m" / "history.csv"), _history(reference.out_dir / "history.csv")
    )
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert (metrics["strategy"], metrics["replicas"], metrics["global_batch_size"]) == ("mirrored", 2, 64)
    assert reference.metrics["strategy"] == "one_device" and reference.metrics["replicas"] == 1
    assert metrics["test_accuracy"] == pytest.approx(reference.metrics["test_accuracy"], abs=2e-3)


def test_a_nan_on_one_replica_stops_both_and_restores_the_same_weights_everywhere(tmp_path):
    code, _, err = _finish([_start([WORKER, "nan", str(tmp_path / "nan.npz")], _env())])[0]
    assert code == 0, err[-3000:]
    got = np.load(tmp_path / "nan.npz")
    info, copies = nan_guard_run()  # one device, in this process
    assert json.loads(str(got["info"])) == info == {"epoch": 0, "step": 2, "reason": "nan"}
    for i, (reference,) in enumerate(copies):
        for replica in (0, 1):
            restored = got[f"w{i}_replica{replica}"]
            assert np.all(np.isfinite(restored))
            np.testing.assert_allclose(restored, reference, rtol=RTOL, atol=ATOL)


# -------------------------------------------------------------------------------------------------
# Multi-worker on loopback
# -------------------------------------------------------------------------------------------------


@pytest.mark.keras_bug
def test_keras_fit_still_fails_under_multi_worker(tmp_path):
    """keras-team/keras#20585. When this test fails, Keras's fit runs under MultiWorkerMirroredStrategy:
    drop recipes/engine/multi_worker.py's fit_distributed and train with model.fit everywhere."""
    ports = _free_ports(2)
    outs = [tmp_path / f"fit{i}.json" for i in range(2)]
    results = _finish(
        [
            _start([WORKER, "keras_fit", str(o)], _env(TF_CONFIG=_tf_config(ports, i)))
            for i, o in enumerate(outs)
        ],
        timeout=120,
    )
    for code, _, err in results:
        assert code == 0, err[-3000:]
    for out in outs:
        got = json.loads(out.read_text())
        assert got["error"] is not None, (
            "keras#20585 is fixed: model.fit ran under MultiWorkerMirroredStrategy; drop the custom loop "
            "(recipes/engine/multi_worker.py: fit_distributed) and this test"
        )
        assert got["error"] == "ValueError" and "PerReplica" in got["message"]


def test_two_workers_train_like_one_device_and_resume_after_sigkill(tmp_path):
    """Both workers SIGKILLed after epoch 1's first step, then started again with the same command: the run
    resumes at epoch 1 and ends with one device's history and weights; the chief's run directory is
    complete and the other worker's temporary folder is gone. The run ends by measuring batch norm's
    statistics again (``trainer.bn_refresh=true``): the saved model holds one device's."""
    out = tmp_path / "mw"
    # the workers crop and flip in their train step (data.augment_on=device), the reference in its pipeline;
    # batch norm over the global batch, its statistics measured again at the end on every worker
    augmented = [*MLP, "data.augment=true", "model.batch_norm=true", "model.sync_batch_norm=true"]
    augmented += ["trainer.bn_refresh=true"]
    overrides = [
        *augmented,
        "data.augment_on=device",
        "trainer.strategy=multi_worker",
        f"trainer.out_dir={out}",
    ]
    ports = _free_ports(2)
    killed = _on_workers([str(ROOT / "tests" / "kill_points.py"), "step", "1:0", "mlp", *overrides], ports)
    # Each kills itself after the same step, but a worker still finishing that step's collective (the
    # metrics' cross-worker read) when its peer dies fails on the closed socket instead: the cluster is
    # down either way, as when one machine of a real one dies.
    assert -signal.SIGKILL in [code for code, _, _ in killed], killed[0][2][-3000:]
    for code, _, err in killed:
        assert code == -signal.SIGKILL or (code == 1 and "UnavailableError" in err), err[-3000:]
    assert (out / "checkpoints" / "epoch-001.keras").exists() and (out / "workertemp_1").is_dir()

    reference = run("mlp", [*augmented, f"trainer.out_dir={tmp_path / 'one'}"])  # while the ports settle
    resumed = _on_workers([str(ROOT / "cli.py"), "run", "recipe=mlp", *overrides], _free_ports(2))
    for code, _, err in resumed:
        assert code == 0, err[-3000:]
    chief_out = resumed[0][1]
    assert (
        f"Resumed {out} from epoch 1/2" in chief_out
        and "multi_worker, 2 replicas, global batch 64" in chief_out
    )
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in reference.out_dir.iterdir() if not p.name.startswith(".")
    )  # complete, and nothing of the other worker's
    _assert_same_history(_history(out / "history.csv"), _history(reference.out_dir / "history.csv"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["strategy"], metrics["replicas"], metrics["global_batch_size"]) == ("multi_worker", 2, 64)
    assert metrics["augment_on"] == "device" and metrics["bn_refresh_images"] == 256  # data.train_limit
    import keras

    import recipes

    got = recipes.load_model(out / "model.keras").get_weights()
    for w, ref in zip(got, keras.saving.load_model(reference.out_dir / "model.keras").get_weights()):
        np.testing.assert_allclose(w, ref, rtol=1e-4, atol=1e-6)


def test_a_search_trains_its_trials_under_tune_strategy(tmp_path):
    """``tune.strategy=mirrored`` on two logical CPUs: keras-tuner's distribution_strategy and the trials'
    own scope are one strategy, and the trial completes (the hypermodel's fit is ``model.fit``)."""
    args = ["recipe=mlp", *MLP, "tune.max_trials=1", "tune.coarse_epochs=1", f"trainer.out_dir={tmp_path}"]
    proc = processes.run(
        ROOT / "cli.py", "tune", *args, "tune.strategy=mirrored", "trainer.cpu_replicas=2", env=_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "COMPLETED" and float(rows[0]["val_accuracy"]) > 0
    assert "trainer.strategy" not in proc.stdout.split("reproduce the best trial with:")[1]

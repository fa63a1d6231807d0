"""Checks that need an NVIDIA GPU (``benchmarks/gpu_check.sh`` runs them); skipped on a CPU-only machine."""

import json

import pytest
import tensorflow as tf

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="no GPU visible"),
]

TINY = [
    "data.name=sample",
    "data.train_limit=1024",
    "data.val_size=100",
    "trainer.epochs=1",
    "trainer.verbose=silent",
]


def test_auto_precision_and_xla_on_the_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_RECIPES_CPU_PRECISION", raising=False)
    from recipes import run
    from recipes.engine.precision import resolve_precision

    policy, _ = resolve_precision("auto")
    assert policy in {"mixed_float16", "float32"}
    result = run("resnet_small", [*TINY, f"trainer.out_dir={tmp_path}"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["precision"] == policy
    assert metrics["augment_on"] == "device"  # data.augment_on=auto: crops and flips in the train step
    assert result.model.jit_compile  # trainer.jit_compile=auto: XLA on a GPU
    assert "GPU" in result.model.weights[0].value.device


def test_a_mirrored_run_over_every_gpu(tmp_path):
    from recipes import run

    gpus = len(tf.config.list_physical_devices("GPU"))
    run("mlp", [*TINY, "trainer.strategy=mirrored", "trainer.batch_size=128", f"trainer.out_dir={tmp_path}"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["strategy"], metrics["replicas"]) == ("mirrored", gpus)

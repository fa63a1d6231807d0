"""Shared fixtures: quiet TensorFlow, a fresh Keras session and seed per test, tiny data sets."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# trainer.precision=auto would pick bfloat16 on CPUs with bf16 units: results must not depend on the runner
os.environ.setdefault("KERAS_RECIPES_CPU_PRECISION", "float32")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"


@pytest.fixture(autouse=True)
def fresh_keras():
    # free_memory=False: Keras's gc.collect() costs about a second per call once TensorFlow has loaded;
    # the module-scoped fixture below collects once per test file instead
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session(free_memory=False)


@pytest.fixture(autouse=True, scope="module")
def collect_garbage_per_module():
    yield
    gc.collect()


@pytest.fixture(scope="session")
def sample_arrays():
    """The bundled CIFAR-10 sample: (x_train, y_train, x_test, y_test) of real images."""
    from recipes.data import read_sample

    return read_sample()


@pytest.fixture
def tiny_images():
    """64 random 32x32 RGB uint8 images with labels 0..9 (for shape-only tests)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 64).astype(np.int32)


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300):
    """Run ``python cli.py ARGS`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

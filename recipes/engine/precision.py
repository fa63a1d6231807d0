"""``trainer.precision=auto``: the fastest precision this machine trains in, decided once per machine.

- A GPU of compute capability 7.0 or more (tensor cores): ``mixed_float16``; Keras's ``fit`` then scales
  the loss (``LossScaleOptimizer``) so that small float16 gradients do not underflow.
- A CPU with bfloat16 units (AVX512_BF16 or AMX): ``mixed_bfloat16`` when a bfloat16 convolution measures
  at least :data:`MIN_SPEEDUP` times faster than a float32 one on it, else ``float32``. The measurement
  (about a second) is kept in ``~/.cache/keras-recipes/precision.json`` keyed by the CPU, its core count
  and the TensorFlow version, so every run on one machine, resumed ones included, makes the same choice.
- Anything else: ``float32``.

``KERAS_RECIPES_CPU_PRECISION=float32`` (or ``mixed_bfloat16``) in the environment fixes the CPU choice
without measuring: the test suite pins float32 so that its results do not depend on the runner's CPU.

bfloat16 keeps float32's exponent range, so it needs no loss scaling; the variables stay float32 under
Keras's mixed policies, and the recipes' logits are float32.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import tensorflow as tf

from recipes.config import ConfigError
from recipes.engine.atomic import write_json

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_SPEEDUP = 1.15  # below this, bfloat16's rounding is not worth it
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "keras-recipes" / "precision.json"


def cpu_identity() -> tuple[str, set[str]]:
    """The CPU's model name and its flags, from ``/proc/cpuinfo`` (empty where there is none)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def _conv(x, kernel):
    """A compiled 3x3 convolution of ``x`` by ``kernel``, without arguments."""
    return tf.function(lambda: tf.nn.conv2d(x, kernel, 1, "SAME"))


def bf16_speedup(seconds: float = 0.25) -> float:
    """float32 time / bfloat16 time of a 3x3 convolution (64 -> 64 channels, 32x32, batch 64), the two
    interleaved over three rounds; the median ratio."""
    ratios = []
    x32 = tf.random.normal((64, 32, 32, 64))
    k32 = tf.random.normal((3, 3, 64, 64)) * 0.05
    convs = {dtype: _conv(tf.cast(x32, dtype), tf.cast(k32, dtype)) for dtype in (tf.float32, tf.bfloat16)}
    for conv in convs.values():
        conv().numpy()  # trace and warm up
    for _ in range(3):
        times = {}
        for dtype, conv in convs.items():
            runs, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds / 3:
                conv().numpy()
                runs += 1
            times[dtype] = (time.perf_counter() - began) / runs
        ratios.append(times[tf.float32] / times[tf.bfloat16])
    return sorted(ratios)[1]


PIN = "KERAS_RECIPES_CPU_PRECISION"
CPU_POLICIES = ("float32", "mixed_bfloat16")


def _cpu_choice() -> tuple[str, str]:
    pinned = os.environ.get(PIN)
    if pinned:
        if pinned not in CPU_POLICIES:
            raise ConfigError(f"{PIN}={pinned}: expected one of {', '.join(CPU_POLICIES)}, or unset it")
        return pinned, f"{pinned}: pinned by {PIN}"
    model, flags = cpu_identity()
    units = [f for f in BF16_FLAGS if f in flags]
    if not units:
        return "float32", f"float32: this CPU ({model}) has no bfloat16 units"
    speedup = known_speedup(f"{model} | {os.cpu_count()} cores | TensorFlow {tf.__version__}")
    if speedup >= MIN_SPEEDUP:
        return "mixed_bfloat16", f"mixed_bfloat16: bfloat16 convolutions measured {speedup:.2f}x float32 here"
    return "float32", f"float32: bfloat16 convolutions measured only {speedup:.2f}x float32 here"


_MEASURED: dict[str, float] = {}  # this process's measurements, should the cache be unwritable


def known_speedup(key: str) -> float:
    """The bfloat16 speed-up of the machine ``key`` names: from the cache file, else measured and kept."""
    try:
        known = json.loads(CACHE.read_text())
    except (OSError, ValueError):  # none yet, or torn by hand: measure again
        known = {}
    known = known if isinstance(known, dict) else {}
    speedup = known.get(key, _MEASURED.get(key))
    if isinstance(speedup, (int, float)) and not isinstance(speedup, bool):
        return float(speedup)
    speedup = _MEASURED[key] = round(bf16_speedup(), 3)
    try:
        write_json(CACHE, {**known, key: speedup})
    except OSError:  # a read-only home: this process remembers it
        pass
    return speedup


def resolve_precision(name: str) -> tuple[str, str]:
    """``(Keras dtype policy, why)`` for ``trainer.precision``; ``auto`` is decided as the module says."""
    if name != "auto":
        return name, f"{name}: set by trainer.precision"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
        if tuple(capability) >= (7, 0):
            return "mixed_float16", "mixed_float16: a GPU with tensor cores (loss scaling on)"
        return "float32", f"float32: a GPU of compute capability {capability} (no tensor cores)"
    return _cpu_choice()

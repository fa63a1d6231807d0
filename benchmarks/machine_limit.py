"""The machine's own arithmetic limit, measured in TensorFlow: the yardstick for every RESULTS figure.

    python benchmarks/machine_limit.py [--seconds 3] [--json OUT.json]

Times, in one process and on the CPU (or the first GPU when one is visible), a float32 and a bfloat16
4096x4096 matmul and a 3x3 convolution 128 -> 128 channels on a batch of 256 32x32 images (the shape of
the middle of a CIFAR-10 ResNet), forward only, each repeated for ``--seconds`` after a warm-up, and
prints GFLOP/s (a multiply-add counts 2 FLOPs). A training run's rate (``metrics.json``'s
``train_gflops_per_second``) divided by the float32 convolution rate here is the fraction of the machine's
limit it reached. The CPU's model and its AVX-512 / bf16 / AMX flags are printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> dict:
    """The CPU's model name, core count and the vector/matrix flags that decide float32 and bf16 speed."""
    from recipes.engine.precision import cpu_identity

    model, flags = cpu_identity()
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS_OF_INTEREST if f in flags]}


def rate(fn, flops: float, seconds: float) -> float:
    """GFLOP/s of ``fn()`` (which returns a tensor), repeated for about ``seconds`` after a warm-up."""
    fn().numpy()  # trace and warm up
    fn().numpy()
    runs, began = 0, time.perf_counter()
    while True:
        out = fn()
        runs += 1
        if time.perf_counter() - began >= seconds:
            break
    out.numpy()
    return runs * flops / (time.perf_counter() - began) / 1e9


def measure(seconds: float) -> dict[str, float]:
    import tensorflow as tf

    results = {}
    n = 4096
    batch, side, channels = 256, 32, 128
    for dtype in ("float32", "bfloat16"):
        a = tf.random.normal((n, n), dtype=tf.float32)
        b = tf.random.normal((n, n), dtype=tf.float32)
        a, b = tf.cast(a, dtype), tf.cast(b, dtype)
        matmul = tf.function(lambda a=a, b=b: tf.matmul(a, b))
        results[f"matmul_{dtype}"] = rate(matmul, 2.0 * n**3, seconds)
        x = tf.cast(tf.random.normal((batch, side, side, channels)), dtype)
        k = tf.cast(tf.random.normal((3, 3, channels, channels)) * 0.05, dtype)
        conv = tf.function(lambda x=x, k=k: tf.nn.conv2d(x, k, strides=1, padding="SAME"))
        results[f"conv3x3_{dtype}"] = rate(conv, 2.0 * batch * side * side * channels * channels * 9, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    import tensorflow as tf

    report = {**cpu_description(), "tensorflow": tf.__version__}
    gpus = tf.config.list_physical_devices("GPU")
    report["device"] = "GPU" if gpus else "CPU"
    report["gflops_per_second"] = measure(args.seconds)
    print(
        f"{report['cpu']} ({report['cores']} cores; {', '.join(report['flags']) or 'no AVX2'}), "
        f"TensorFlow {report['tensorflow']}, on the {report['device']}"
    )
    for name, value in report["gflops_per_second"].items():
        print(f"  {name:18s} {value:8.0f} GFLOP/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""A/B the ``fast`` recipe's speed settings in one process: images per second of training steps.

    python benchmarks/fast_speed.py                      # every variant, 30 timed steps each
    python benchmarks/fast_speed.py --variants base,relu --steps 50

Each variant is a set of overrides of the ``fast`` config (or a speed setting: ``steps_per_execution``,
bf16 mixed precision, thread counts, where the augmentation runs). Variants run round-robin,
``--rounds`` times, so slow drifts of a shared machine hit them alike; the table reports the median
images/s and the ratio to ``base``. Data is random (speed does not depend on it); accuracy effects are
for the time-to-accuracy benchmark.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS: dict[str, dict] = {
    "base": {},
    "plain_sgd": {
        "overrides": ["optimizer.bias_lr_scale=1", "optimizer.lookahead_every=0", "optimizer.muon_lr=0"]
    },
    "relu": {"overrides": ["model.activation=relu"]},
    "batch128": {"overrides": ["trainer.batch_size=128"]},
    "batch512": {"overrides": ["trainer.batch_size=512"]},
    "spe4": {"steps_per_execution": 4},
    "bf16": {"policy": "mixed_bfloat16"},
    "gelu_tanh": {"overrides": ["model.activation=gelu_tanh"]},
    "bf16_gelu_tanh": {"overrides": ["model.activation=gelu_tanh"], "policy": "mixed_bfloat16"},
    "bf16_relu": {"overrides": ["model.activation=relu"], "policy": "mixed_bfloat16"},
    "bf16_sgd_kernels": {"overrides": ["optimizer.muon_lr=0"], "policy": "mixed_bfloat16"},
    "bf16_swish": {"overrides": ["model.activation=swish"], "policy": "mixed_bfloat16"},
    "airbench94": {"overrides": ["model.width1=64", "model.width2=256", "model.width3=256"]},
    "airbench94_bf16": {
        "overrides": ["model.width1=64", "model.width2=256", "model.width3=256"],
        "policy": "mixed_bfloat16",
    },
    "airbench94_relu": {
        "overrides": ["model.width1=64", "model.width2=256", "model.width3=256", "model.activation=relu"]
    },
    "augment_device": {"overrides": ["data.augment_on=device"]},
    "bf16_augment_device": {"overrides": ["data.augment_on=device"], "policy": "mixed_bfloat16"},
    "bf16_gelu_tanh_augment_device": {
        "overrides": ["model.activation=gelu_tanh", "data.augment_on=device"],
        "policy": "mixed_bfloat16",
    },
    "bf16_airbench93": {
        "overrides": ["model.width1=64", "model.width2=128", "model.width3=128"],
        "policy": "mixed_bfloat16",
    },
    "bf16_w64_192": {
        "overrides": ["model.width1=64", "model.width2=192", "model.width3=192"],
        "policy": "mixed_bfloat16",
    },
    "bf16_w48_128": {
        "overrides": ["model.width1=48", "model.width2=128", "model.width3=128"],
        "policy": "mixed_bfloat16",
    },
    "mid": {"overrides": ["model.width1=48", "model.width2=160", "model.width3=160"]},
    "narrow": {"overrides": ["model.width1=16", "model.width2=64", "model.width3=64"]},
}


def build(spec: dict, steps: int):
    import keras
    import numpy as np

    from recipes.data.pipeline import recipe_train_dataset
    from recipes.engine.device_augment import augments_on_device, set_train_augmentation
    from recipes.engine.training import compile_model
    from recipes.registry import get_recipe

    keras.mixed_precision.set_global_policy(spec.get("policy", "float32"))
    recipe = get_recipe("fast")
    cfg = recipe.config(spec.get("overrides", []))
    rng = np.random.default_rng(0)
    n = cfg.trainer.batch_size * 8
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int32)
    stats = {
        "mean": [125.0] * 3,
        "variance": [4000.0] * 3,
        "num_classes": 10,
        "input_shape": (32, 32, 3),
        "images": x[:500],
    }
    model = recipe.build_model(cfg, stats)
    compile_model(model, cfg, steps_per_epoch=steps)
    model.compile(
        optimizer=model.optimizer,
        loss=model.loss,
        metrics=["accuracy"],
        steps_per_execution=spec.get("steps_per_execution", 1),
    )
    on_device = augments_on_device(cfg)
    set_train_augmentation(model, cfg, on_device)
    ds = recipe_train_dataset(
        cfg, x, y, num_classes=10, batch_size=cfg.trainer.batch_size, on_device=on_device
    )
    keras.mixed_precision.set_global_policy("float32")
    return model, ds.repeat(), cfg.trainer.batch_size


def time_steps(model, ds, steps: int) -> float:
    """Seconds per step from the end of the first execution of ``steps`` to the end of the last, by a
    batch hook (host-synchronised steps, as a CPU trains anyway): ``fit``'s set-up and teardown left
    out (an iterator's teardown once waited seconds for tf.data's autotuner, which made every variant's
    figure a multiple of one period; see pipeline.without_autotune_wait)."""
    import keras

    ends: list[tuple[int, float]] = []  # (the step a hook ended, when): one per execution (spe4: 4 steps)

    def stamp(batch, logs):
        ends.append((batch, time.perf_counter()))

    clock = keras.callbacks.LambdaCallback(on_train_batch_end=stamp)
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[clock])
    (first_step, first), (last_step, last) = ends[0], ends[-1]
    if last_step == first_step:
        raise SystemExit(f"{steps} steps give one timed execution: raise --steps")
    return (last - first) / (last_step - first_step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    built = {n: build(VARIANTS[n], args.steps) for n in names}
    for model, ds, _ in built.values():
        time_steps(model, ds, 8)  # trace and warm up
    rates: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            model, ds, batch = built[n]
            rates[n].append(batch / time_steps(model, ds, args.steps))
    from recipes.engine.compute import train_flops_per_example

    base = statistics.median(rates[names[0]])
    print(f"{'variant':<30} {'images/s':>9} {'ratio':>6} {'GFLOP/s':>8}")
    for n in names:
        r = statistics.median(rates[n])
        gflops = r * train_flops_per_example(built[n][0]) / 1e9  # recipes.engine.compute's count
        print(f"{n:<30} {r:9.0f} {r / base:6.2f} {gflops:8.0f}")


if __name__ == "__main__":
    main()

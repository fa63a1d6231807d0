"""What the monitors cost at a recipe's defaults: an interleaved A/B in one process, short and long epochs.

    python benchmarks/callback_overhead.py [--recipe resnet_small] [--rounds 2]
        [--short 32x6] [--long 128x2]

Trains one model with fits that alternate between no callbacks (A) and every monitor the recipe switches on
by default (B: ``recipes.engine.training.make_monitors``, exactly what ``cli.py run`` attaches: the
learning-rate logger, dead units, update ratio, gradient norms, clean training accuracy, the filter image
and the NaN guard for ``resnet_small``), for short epochs (32 steps, the shortest the project budgets for:
2% at most) and long ones. Each fit is several epochs long, as in a real run, so the monitors' epoch cadence
(``max_overhead``) works as it does there. The cost is measured in process CPU time (robust to other load on
a shared machine) and in wall time; the report gives each pair's B/A ratio and their median. Uses the full
CIFAR-10 copy when found, else the bundled sample.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"


def shape(text: str) -> tuple[int, int]:
    """``"32x6"`` -> (32 steps per epoch, 6 epochs per fit)."""
    steps, epochs = (int(v) for v in text.lower().split("x"))
    return steps, epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="resnet_small")
    parser.add_argument("--rounds", type=int, default=2, help="A/B pairs of fits per epoch length")
    parser.add_argument("--short", type=shape, default=(32, 6), help="STEPSxEPOCHS of a short-epoch fit")
    parser.add_argument("--long", type=shape, default=(128, 2), help="STEPSxEPOCHS of a long-epoch fit")
    args = parser.parse_args()

    from recipes.data import load_data
    from recipes.engine.training import build_training, make_monitors
    from recipes.registry import get_recipe

    data_args = (
        ["data.name=cifar10", f"data.path={DEFAULT_DATA}"] if DEFAULT_DATA.exists() else ["data.name=sample"]
    )
    recipe = get_recipe(args.recipe)
    longest = max(args.short[0] * args.short[1], args.long[0] * args.long[1])
    cfg = recipe.config([*data_args, f"trainer.epochs={2 * args.rounds * 2 * longest + 4}"])
    data = load_data(cfg.data, allow_download=False)
    out_dir = Path(tempfile.mkdtemp(prefix="callback-overhead-"))
    training = build_training(recipe, cfg, data, monitors=False)
    model, train = training.model, training.train_ds
    monitors, _ = make_monitors(cfg, data, model, out_dir)
    names = ", ".join(type(m).__name__ for m in monitors)
    print(f"{args.recipe} on {data.source}, batch {training.batch_size}; B arm: {names}", flush=True)

    def fit(steps: int, epochs: int, callbacks: list) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(train, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=callbacks)
        return time.process_time() - cpu, time.perf_counter() - wall

    fit(8, 1, [])  # trace the training step, then every monitor's measurement
    fit(8, 1, monitors)
    for label, (steps, epochs) in (("short", args.short), ("long", args.long)):
        cpu_ratios, wall_ratios = [], []
        for _ in range(args.rounds):
            cpu_a, wall_a = fit(steps, epochs, [])
            cpu_b, wall_b = fit(steps, epochs, monitors)
            cpu_ratios.append(cpu_b / cpu_a)
            wall_ratios.append(wall_b / wall_a)
            print(
                f"{label} ({steps} steps x {epochs} epochs): A {cpu_a:.1f} s CPU / {wall_a:.1f} s wall, "
                f"B {cpu_b:.1f} / {wall_b:.1f}: B/A {cpu_b / cpu_a:.3f} CPU, {wall_b / wall_a:.3f} wall",
                flush=True,
            )
        print(
            f"{label} epochs: monitors' cost, median B/A - 1: {statistics.median(cpu_ratios) - 1:+.1%} CPU, "
            f"{statistics.median(wall_ratios) - 1:+.1%} wall (limit +2%)",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Time to accuracy on one machine: ``fast``, ``resnet_small`` and Keras's ``cifar10_resnet.py`` peer.

    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10/cifar-10-python.tar.gz --budget 10min

Each contender trains in this process, one after the other, under the same ``trainer.budget`` (the run
plans its steps and fits its schedule to the budget) on the same data: all 50,000 training images
(``data.val_size=0``), the monitors off. After every epoch the test accuracy (no test-time augmentation)
is measured; that measurement is left out of the clock. The last row of each contender is its run's
final score (with the recipe's TTA) at the run's total wall time. Writes ``time_to_accuracy.csv``,
``time_to_accuracy.png`` and ``summary.json`` to ``--out`` and prints, for each contender, the time it
needs to reach the peer's final accuracy and the ratio to the peer's time.

The peer is the configuration of Keras's ``examples/cifar10_resnet.py`` (ResNet-20 v1, Adam at 1e-3,
batch 32, shifts of 0.1 and horizontal flips, L2 1e-4) expressed as overrides of ``resnet_small``. Two
approximations: its L2 term becomes decoupled weight decay 1e-4 (at a rate of 1e-3 either is tiny over
minutes), and its per-pixel mean subtraction our per-channel standardisation.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

COMMON = [
    "data.val_size=0",
    "callbacks.dead_units=false",
    "callbacks.update_ratio=false",
    "trainer.verbose=epoch",
]
PEER = [
    "optimizer.name=adam",
    "optimizer.lr=0.001",
    "optimizer.momentum=0.9",
    "optimizer.weight_decay=1e-4",
    "schedule.name=constant",
    "schedule.warmup_epochs=0",
    "loss.label_smoothing=0",
    "trainer.batch_size=32",
    "data.crop_padding=3",
    "trainer.tta=false",
]
CONTENDERS = {
    "fast": ("fast", []),
    "resnet_small": ("resnet_small", []),
    "keras_cifar10_resnet": ("resnet_small", PEER),
}


class TestAccuracyLogger(keras.callbacks.Callback):
    """After every epoch: test accuracy without TTA and the run's wall time so far, the measurement's own
    time excluded (``overhead_seconds``, which the run leaves out of its budget accounting)."""

    def __init__(self, x_test: np.ndarray, y_test: np.ndarray):
        super().__init__()
        self.x_test, self.y_test = x_test.astype(np.float32), y_test
        self.rows: list[dict] = []
        self.overhead_seconds = 0.0
        self.clock = time.perf_counter()

    def start_clock(self, clock: float) -> None:
        self.clock = clock

    def on_epoch_end(self, epoch, logs=None):
        start = time.perf_counter()
        logits = self.model.predict(self.x_test, batch_size=500, verbose=0)
        accuracy = float(np.mean(np.argmax(logits, axis=1) == self.y_test))
        wall = start - self.clock - self.overhead_seconds
        self.rows.append({"epoch": epoch + 1, "wall_seconds": round(wall, 2), "test_accuracy": accuracy})
        self.overhead_seconds += time.perf_counter() - start


def time_to_reach(rows: list[dict], target: float) -> float | None:
    for row in rows:
        if row["test_accuracy"] >= target:
            return row["wall_seconds"]
    return None


def plot(rows: list[dict], path: Path, title: str) -> None:
    from recipes.engine.plots import new_figure, save_figure

    fig, axes = new_figure(figsize=(7, 4.5))
    ax = axes[0, 0]
    for name in dict.fromkeys(r["contender"] for r in rows):
        mine = [r for r in rows if r["contender"] == name]
        ax.plot(
            [r["wall_seconds"] / 60 for r in mine], [r["test_accuracy"] for r in mine], marker="o", label=name
        )
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=None, help="CIFAR-10 archive or folder (data.path)")
    parser.add_argument("--budget", default="10min", help="trainer.budget of every contender")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--out", default="runs/time_to_accuracy")
    parser.add_argument("--override", action="append", default=[], help="extra key=value for every contender")
    parser.add_argument("--target", type=float, help="also print each contender's time to this test accuracy")
    args = parser.parse_args(argv)

    from recipes import run
    from recipes.config import ConfigError
    from recipes.data import load_data
    from recipes.registry import get_recipe

    names = args.contenders.split(",")
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {unknown}; known: {', '.join(CONTENDERS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_overrides = [f"data.path={args.data}"] if args.data else []
    cfg = get_recipe("fast").config([*data_overrides, *(o for o in args.override if o.startswith("data."))])
    data = load_data(cfg.data, seed=0)
    rows: list[dict] = []
    finals: dict[str, dict] = {}
    for name in names:
        recipe, extra = CONTENDERS[name]
        overrides = [
            *COMMON,
            *data_overrides,
            *extra,
            *args.override,
            f"trainer.budget={args.budget}",
            f"trainer.out_dir={out / name}",
        ]
        logger = TestAccuracyLogger(data.x_test, data.y_test)
        print(f"== {name}: {recipe} {' '.join(extra)}", flush=True)
        try:
            result = run(recipe, overrides, extra_callbacks=[logger])
        except ConfigError as e:
            sys.exit(f"error: {e}")
        metrics = result.metrics
        rows += [{"contender": name, **r} for r in logger.rows]
        final = {
            "epoch": "final",
            "wall_seconds": metrics["wall_seconds"],
            "test_accuracy": metrics["test_accuracy"],
        }
        rows.append({"contender": name, **final})
        finals[name] = {
            "test_accuracy": metrics["test_accuracy"],
            "test_accuracy_no_tta": metrics["test_accuracy_no_tta"],
            "wall_seconds": metrics["wall_seconds"],
            "images_per_second": metrics["images_per_second"],
            "epochs": metrics["epochs_completed"],
            "budget": metrics.get("budget"),
        }
        with open(out / "time_to_accuracy.csv", "w", newline="") as f:  # rewritten after each contender
            writer = csv.DictWriter(f, fieldnames=["contender", "epoch", "wall_seconds", "test_accuracy"])
            writer.writeheader()
            writer.writerows(rows)

    peer = "keras_cifar10_resnet"
    summary: dict = {"budget": args.budget, "data": data.source, "contenders": finals}
    if peer in finals:
        target = finals[peer]["test_accuracy"]
        peer_time = time_to_reach([r for r in rows if r["contender"] == peer], target)
        summary["peer_final_accuracy"] = target
        print(f"\ntime to the peer's final accuracy {target:.4f} (budget {args.budget}, {data.source}):")
        for name in names:
            t = time_to_reach([r for r in rows if r["contender"] == name], target)
            ratio = peer_time / t if t and peer_time else None
            finals[name]["seconds_to_peer_accuracy"] = t
            finals[name]["speedup_vs_peer"] = ratio
            reached = f"{t:7.0f} s" if t is not None else "   never"
            print(
                f"  {name:<22} {reached}  speed-up {ratio:.1f}x" if ratio else f"  {name:<22} {reached}",
                f"  final {finals[name]['test_accuracy']:.4f} in {finals[name]['wall_seconds']:.0f} s",
            )
    if args.target is not None:
        for name in names:
            t = time_to_reach([r for r in rows if r["contender"] == name], args.target)
            finals[name]["seconds_to_target"] = t
            reached = f"{t:.0f} s" if t is not None else "never (within the budget)"
            print(f"time to {args.target:.2%} test accuracy, {name}: {reached}")
        summary["target"] = args.target
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(
        rows, out / "time_to_accuracy.png", f"CIFAR-10 test accuracy against wall time (budget {args.budget})"
    )
    print(f"outputs in {out}/")


if __name__ == "__main__":
    main()

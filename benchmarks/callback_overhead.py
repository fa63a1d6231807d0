"""Throughput cost of the monitoring callbacks at their defaults, measured A/B in one process.

    python benchmarks/callback_overhead.py [--images 22500] [--rounds 3]

Trains the ``resnet_small`` model for alternating epochs without callbacks (A) and with every monitor at
its defaults (B: LearningRateLogger, DeadUnitMonitor, UpdateRatioLogger, NaNGuard, ActivationStats), on
the same weights and data, and prints images/second for each epoch and the median B/A ratio. Alternating
cancels most of the drift of a shared machine. Uses the full CIFAR-10 copy when found, else the sample.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=22500, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs of epochs")
    args = parser.parse_args()

    import numpy as np

    from callbacks import ActivationStats, DeadUnitMonitor, LearningRateLogger, NaNGuard, UpdateRatioLogger
    from recipes import pipeline
    from recipes.data import load_data
    from recipes.engine.training import compile_model, data_stats
    from recipes.registry import get_recipe

    data_args = (
        ["data.name=cifar10", f"data.path={DEFAULT_DATA}"] if DEFAULT_DATA.exists() else ["data.name=sample"]
    )
    recipe = get_recipe("resnet_small")
    cfg = recipe.config([*data_args, f"data.train_limit={args.images}"])
    data = load_data(cfg.data, allow_download=False)
    batch = cfg.trainer.batch_size
    spe = pipeline.steps_per_epoch(len(data.x_train), batch)
    model = recipe.build_model(cfg, data_stats(data))
    compile_model(model, cfg, spe)
    epochs = 2 * args.rounds + 1
    train = pipeline.train_dataset(
        data.x_train, data.y_train, num_classes=10, batch_size=batch, seed=0, first_epoch=0, epochs=epochs
    )
    probe = data.x_train[:256].astype(np.float32)
    monitors = [
        LearningRateLogger(),
        DeadUnitMonitor(probe),
        UpdateRatioLogger(),
        NaNGuard(),
        ActivationStats(probe),
    ]
    print(f"data: {data.source}, {spe * batch} images per epoch, batch {batch}")
    model.fit(train, epochs=1, steps_per_epoch=spe, verbose=0, shuffle=False)  # compile and warm up
    rates = {"A": [], "B": []}
    for epoch in range(1, epochs):
        arm = "A" if epoch % 2 else "B"
        start = time.perf_counter()
        model.fit(
            train,
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=spe,
            verbose=0,
            shuffle=False,
            callbacks=monitors if arm == "B" else [],
        )
        rate = spe * batch / (time.perf_counter() - start)
        rates[arm].append(rate)
        print(
            f"epoch {epoch}: {'no callbacks' if arm == 'A' else 'all monitors'}: {rate:.0f} images/s",
            flush=True,
        )
    ratios = [b / a for a, b in zip(rates["A"], rates["B"])]
    print(
        f"throughput with monitors / without: median {statistics.median(ratios):.3f} "
        f"(pairs: {', '.join(f'{r:.3f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()

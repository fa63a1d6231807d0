"""Train ``resnet_small`` and print epoch time, images/second and test accuracy after every epoch.

    python benchmarks/train_resnet_small.py --epochs 3 [--data ../shared/data/cifar10/cifar-10-python.tar.gz]
        [key=value ...]

A benchmark, not a test: it uses the full CIFAR-10 copy when it can find one and prints where the
images came from. Test accuracy is measured on the test set after each epoch purely for this report;
the recipe itself evaluates the test set once, at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10" / "cifar-10-python.tar.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.exists() else None)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = parser.parse_args()

    import keras
    import numpy as np

    from recipes import pipeline
    from recipes.config import merge_overrides
    from recipes.data import load_data
    from recipes.engine.evaluate import predict_tta
    from recipes.engine.training import compile_model, data_stats, setup_determinism
    from recipes.registry import get_recipe

    data_overrides = [f"data.path={args.data}", "data.name=cifar10"] if args.data else ["data.name=sample"]
    recipe = get_recipe("resnet_small")
    cfg = recipe.config(merge_overrides([*data_overrides, f"trainer.epochs={args.epochs}"], args.overrides))
    data = load_data(cfg.data, seed=cfg.trainer.seed, allow_download=False)
    setup_determinism(cfg.trainer.seed, cfg.trainer.deterministic)
    batch = cfg.trainer.batch_size
    spe = pipeline.steps_per_epoch(len(data.x_train), batch)
    model = recipe.build_model(cfg, data_stats(data))
    compile_model(model, cfg, spe)
    train = pipeline.recipe_train_dataset(
        cfg, data.x_train, data.y_train, num_classes=data.num_classes, batch_size=batch
    )
    print(
        f"data: {data.source}, {len(data.x_train)} training images; {keras.__version__=}; "
        f"cores: {os.cpu_count()}"
    )
    print(
        f"{'epoch':>5} {'seconds':>8} {'images/s':>9} {'train_acc':>9} {'test_acc':>8} {'test_acc_tta':>12}"
    )
    iterator = iter(range(args.epochs))
    for epoch in iterator:
        start = time.perf_counter()
        history = model.fit(
            train, epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=spe, verbose=0, shuffle=False
        )
        seconds = time.perf_counter() - start
        x_test = data.x_test.astype(np.float32)
        plain = np.mean(predict_tta(model, x_test, 512, False).argmax(-1) == data.y_test)
        tta = np.mean(predict_tta(model, x_test, 512, True).argmax(-1) == data.y_test)
        print(
            f"{epoch + 1:>5} {seconds:>8.1f} {spe * batch / seconds:>9.0f} "
            f"{history.history['accuracy'][-1]:>9.4f} {plain:>8.4f} {tta:>12.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

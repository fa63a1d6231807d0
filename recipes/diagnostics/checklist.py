"""``python cli.py check recipe=NAME [key=value ...]``: run the babysitting checklist on a recipe.

Builds fresh models of the recipe (with the user's overrides) through the engine's training set-up, runs
the checks of :mod:`recipes.diagnostics.checks` on a slice of the training data, prints a table, and
writes ``check.json`` plus the plots (``lr_range.png``, ``activations.png``) into ``trainer.out_dir``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from recipes.config import ConfigError, apply_overrides, flat_dict
from recipes.data import load_data
from recipes.diagnostics import checks
from recipes.engine.atomic import write_json
from recipes.engine.run_dir import resolve_out_dir
from recipes.engine.training import build_optimizer, build_training, data_stats, setup_determinism
from recipes.registry import get_recipe

# What "regularisation and augmentation off" means, for the keys a recipe has.
REGULARISATION_OFF = {
    "optimizer.weight_decay": "0",
    "model.l1": "0",  # kernel penalties added to the loss, where a recipe declares them
    "model.l2": "0",
    "loss.label_smoothing": "0",
    "model.dropout": "0",
    "model.drop_rate": "0",
    "model.stochastic_depth": "1",
    "data.augment": "false",
}
CONSTANT_RATE = {"schedule.name": "constant", "schedule.warmup_epochs": "0"}


def _with(cfg, settings: dict[str, str]):
    keys = flat_dict(cfg)
    return apply_overrides(cfg, [f"{k}={v}" for k, v in settings.items() if k in keys])


def run_checks(
    recipe_name: str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    echo=print,
    overfit_examples: int = 20,
    overfit_steps: int = 300,
) -> tuple[list[checks.CheckResult], Path]:
    recipe = get_recipe(recipe_name)
    cfg = recipe.config(overrides)
    if cfg.trainer.budget is not None:
        raise ConfigError(
            f"trainer.budget={cfg.trainer.budget} applies to 'run' only (it plans one training's steps); "
            "the checks train for fixed short probes: drop trainer.budget"
        )
    out_dir = resolve_out_dir(cfg, f"check-{recipe.name}")
    out_dir.mkdir(parents=True, exist_ok=True)

    data = load_data(cfg.data, seed=cfg.trainer.seed)
    setup_determinism(cfg.trainer.seed, False)
    n = min(len(data.x_train), 2048)
    x = data.x_train[:n].astype(np.float32)
    y = keras.ops.convert_to_numpy(keras.ops.one_hot(data.y_train[:n], data.num_classes))
    plain = _with(cfg, {**REGULARISATION_OFF, **CONSTANT_RATE})
    constant = _with(cfg, CONSTANT_RATE)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)

    stats = data_stats(data)

    def build(c):  # the model and optimizer a run of config c trains, as run and the tuner build them
        return build_training(recipe, c, data, stats=stats, monitors=False, datasets=False).model

    echo(f"Checking {recipe.name} on {n} training images ({data.source})")
    results = []

    def record(result: checks.CheckResult) -> None:
        results.append(result)
        echo(f"  {result.status:4s}  {result.name}: {result.message}")

    record(checks.check_initial_loss(build(plain), loss, x[:256], y[:256], data.num_classes))
    record(
        checks.check_regularisation(
            lambda: build(plain),
            lambda wd: build_optimizer(_with(plain, {"optimizer.weight_decay": str(wd)}), 1),
            loss,
            x[:64],
            y[:64],
            cfg.optimizer.weight_decay,
        )
    )
    k = min(overfit_examples, n)
    record(checks.check_overfit(build(plain), x[:k], y[:k], max_steps=overfit_steps))
    record(checks.check_learning_rate(build(cfg), x, y, cfg.optimizer.lr, plot_path=out_dir / "lr_range.png"))
    record(checks.check_gradients(build(cfg)))
    record(checks.check_activations(build(cfg), x[:256], plot_path=out_dir / "activations.png"))
    record(checks.check_update_ratio(build(constant), x, y, batch_size=cfg.trainer.batch_size))

    write_json(
        out_dir / "check.json",
        {
            "recipe": recipe.name,
            "overrides": list(overrides),
            "data_source": data.source,
            "passed": not any(r.status == checks.FAIL for r in results),
            "results": [r.to_dict() for r in results],
        },
    )
    return results, out_dir


def format_table(results: list[checks.CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'check':{width}s}  status  result", f"{'-' * width}  ------  ------"]
    for r in results:
        lines.append(f"{r.name:{width}s}  {r.status:6s}  {r.message}")
    advice = [
        f"- {r.name}: {r.advice}" for r in results if r.status in (checks.WARN, checks.FAIL) and r.advice
    ]
    if advice:
        lines += ["", "advice:", *advice]
    return "\n".join(lines)

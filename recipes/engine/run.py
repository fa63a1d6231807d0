"""Run any recipe the same way, in named phases: prepare, build or resume, plan, fit, evaluate, report.

A run directory receives ``config.yaml``, ``run_info.json`` (seed, overrides, versions, git revision),
``history.csv``, ``metrics.json``, ``model.keras`` (for inference), ``tensorboard/``, ``checkpoints/``
(for resuming) and PNG curves. Started again on the same directory, an interrupted run resumes from its
last completed epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keras

from callbacks import fit_diagnosis
from callbacks.optimizer_utils import optimizer_steps
from recipes.config import ConfigError, parse_duration, to_yaml
from recipes.data import ImageData, load_data
from recipes.engine.atomic import write_json, write_text
from recipes.engine.averaging import finish_weights, refresh_images, save_final_checkpoint
from recipes.engine.budget import (
    BudgetKeeper,
    BudgetPlan,
    FixedPlan,
    budget_report,
    calibrate,
    fit_schedule_to_plan,
)
from recipes.engine.checkpoint import (
    RunCheckpoint,
    history_csv,
    load_checkpoint,
    load_state,
    save_inference_model,
)
from recipes.engine.compute import compute_report
from recipes.engine.device_augment import augments_on_device
from recipes.engine.distribute import distribution, distribution_for_run
from recipes.engine.evaluate import allowed_views, evaluate_test
from recipes.engine.keep_best import keep_best_callbacks, kept_report
from recipes.engine.multi_worker import agreed_state, finish_worker, fit_function, run_directory
from recipes.engine.precision import resolve_precision
from recipes.engine.progress import SAMPLE_BANNER, CompactProgbar, EtaPrinter, ReplanReporter, plan_line
from recipes.engine.run_dir import (
    RunError,
    check_resume,
    library_versions,
    open_run_dir,
    resolve_out_dir,
    run_info,
    write_failure,
)
from recipes.engine.training import (
    Training,
    build_training,
    calibration_dataset,
    data_stats,
    setup_determinism,
)
from recipes.registry import Recipe, get_recipe

EXIT_DIVERGED = 3


@dataclass
class RunResult:
    """What :func:`run` returns: the run directory, ``metrics.json``'s content and the trained model."""

    out_dir: Path
    metrics: dict
    diverged: bool = False
    resumed_from: int = 0
    messages: list[str] = field(default_factory=list)
    model: keras.Model | None = None


@dataclass
class _Run:
    """The state the phases hand on: filled in as the run goes."""

    recipe: Recipe
    cfg: object
    overrides: list[str]
    echo: Callable[[str], None]
    extra_callbacks: list
    out_dir: Path
    data: ImageData
    clock: float  # time.perf_counter() when the budget started: after the data is in memory
    saved_state: dict | None
    budget_seconds: float | None
    model: keras.Model | None = None
    plan: BudgetPlan | FixedPlan | None = None
    first_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_val_accuracy: float | None = None
    train_seconds: float = 0.0


def run(
    recipe_name: str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    echo: Callable[[str], None] = print,
    extra_callbacks: list | tuple = (),
) -> RunResult:
    """Train and evaluate a recipe; resumes when ``trainer.out_dir`` holds an interrupted run.

    ``extra_callbacks`` join the run's callbacks; one with an ``overhead_seconds`` attribute (a
    measurement a benchmark makes) has that time left out of the budget accounting, and one with a
    ``start_clock(t)`` method is told when the budget's clock started.
    """
    recipe = get_recipe(recipe_name)
    cfg = recipe.config(overrides)
    dist = distribution_for_run(cfg)  # first: the CPU split and the collectives, before TensorFlow runs
    out_dir = run_directory(dist, resolve_out_dir(cfg, recipe.name))  # a non-chief worker's is temporary
    with precision_policy(cfg.trainer.precision), open_run_dir(out_dir):
        r = prepare(recipe, cfg, out_dir, list(overrides), echo, list(extra_callbacks))
        r.saved_state = agreed_state(dist, out_dir, r.saved_state, cfg.trainer.epochs)  # multi-worker
        if r.saved_state is not None:
            resume(r)
        else:
            record_start(r)  # first: the folder is marked as this run's before anything else is written
            plan(r, build(r))
        budget_plan = r.plan if isinstance(r.plan, BudgetPlan) else None
        training = build_training(
            recipe, cfg, r.data, model=r.model, plan=budget_plan, first_epoch=r.first_epoch, out_dir=r.out_dir
        )
        try:
            checkpoint = fit(r, training)
            return finish_worker(dist, report(r, training, checkpoint))
        except OSError as e:  # a full disk, a folder made read-only mid-run: the old files are whole
            raise RunError(write_failure(e, out_dir)) from None


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy set to ``name`` (``auto``: :func:`resolve_precision`'s choice) for the
    layers built inside, and restored after."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(resolve_precision(name)[0])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def prepare(recipe: Recipe, cfg, out_dir: Path, overrides: list[str], echo, extra_callbacks: list) -> _Run:
    """The saved state (refusing a run of another recipe or config), the data, the clock and the seeds."""
    budget_seconds = parse_duration(cfg.trainer.budget)
    saved_state = load_state(out_dir)
    if saved_state is not None:
        check_resume(out_dir, recipe, cfg)
    data = load_data(cfg.data, seed=cfg.trainer.seed)
    clock = time.perf_counter()  # the budget covers everything from here on
    for cb in extra_callbacks:
        if hasattr(cb, "start_clock"):
            cb.start_clock(clock)
    setup_determinism(cfg.trainer.seed, cfg.trainer.deterministic)
    if data.is_sample:
        echo(SAMPLE_BANNER.format(n_train=len(data.x_train), reason=(data.notes or ["data.name=sample"])[0]))
    return _Run(
        recipe, cfg, overrides, echo, extra_callbacks, out_dir, data, clock, saved_state, budget_seconds
    )


def resume(r: _Run) -> None:
    """The newest loadable checkpoint (model and optimizer state), its history, and the saved plan."""
    with distribution(r.cfg).scope():
        r.model, state = load_checkpoint(r.out_dir, r.saved_state)
    if r.budget_seconds is not None:
        r.plan = BudgetPlan.from_dict(json.loads((r.out_dir / "plan.json").read_text()))
    else:
        r.plan = FixedPlan(r.cfg.trainer.epochs)
    r.first_epoch = state["epochs_completed"]
    r.history, r.best_val_accuracy = state["history"], state["best_val_accuracy"]
    r.train_seconds = state["train_seconds"]
    r.echo(
        f"Resumed {r.out_dir} from epoch {r.first_epoch}/{r.plan.stop_epoch} "
        f"(checkpoint {state['checkpoint']}, best val_accuracy {r.best_val_accuracy})"
    )


def build(r: _Run) -> Training:
    """A fresh model of the recipe, compiled with its optimizer over the configured schedule (the one
    that trains: a budget's plan sets the pace it is read at)."""
    setup = build_training(r.recipe, r.cfg, r.data, monitors=False, datasets=False)
    r.model = setup.model
    return setup


def plan(r: _Run, probe: Training) -> None:
    """Without a budget, the configured epochs. With one, train and time the model's first steps (on
    batches of an epoch no run reaches; they stay trained) and plan the steps that fit, and the final
    evaluation's views; the optimizer's schedule is then read at the pace that ends it with the plan."""
    if r.budget_seconds is None:
        r.plan = FixedPlan(r.cfg.trainer.epochs)
        return
    try:
        r.plan = calibrate(
            r.model,
            calibration_dataset(r.cfg, r.data, probe.batch_size),
            budget_seconds=r.budget_seconds,
            elapsed_seconds=time.perf_counter() - r.clock,
            steps_per_epoch=probe.steps_per_epoch,
            configured_epochs=r.cfg.trainer.epochs,
            eval_images=r.data.x_test,
            eval_batch_size=probe.eval_batch_size,
            val_examples=len(r.data.x_val),
            eval_views=allowed_views(r.cfg),
            refresh_images=refresh_images(r.cfg, r.data),
            refresh_batch_size=probe.batch_size,
        )
    except ValueError as e:
        raise ConfigError(f"trainer.budget={r.cfg.trainer.budget}: {e}") from None
    fit_schedule_to_plan(r.model.optimizer, r.plan)
    write_json(r.out_dir / "plan.json", r.plan.as_dict())
    r.echo(plan_line(r.plan, probe.batch_size))


def record_start(r: _Run) -> None:
    """``config.yaml`` and ``run_info.json``: what this run is, before it trains."""
    write_text(r.out_dir / "config.yaml", to_yaml(r.cfg))
    write_json(r.out_dir / "run_info.json", run_info(r.recipe, r.cfg, r.overrides, r.data))


def run_callbacks(r: _Run, training: Training, checkpoint: RunCheckpoint) -> list:
    """The recipe's callbacks and monitors, the budget's keeper, the caller's, then the writers and the
    progress output (after every logger, so that they see its keys)."""
    keeper = []
    if isinstance(r.plan, BudgetPlan):  # before the checkpoint, which then saves the re-planned schedule
        clock = None if r.first_epoch else r.clock
        # the keeper tells them when the last epoch ends early (UpdateRatioLogger's epoch-end measurement)
        listeners = [*training.callbacks, *r.extra_callbacks]
        keeper = [
            BudgetKeeper(r.plan, clock, listeners=listeners),
            ReplanReporter(r.plan, r.out_dir / "plan.json", r.echo),
        ]
    tensorboard = keras.callbacks.TensorBoard(
        log_dir=str(r.out_dir / "tensorboard"), update_freq="epoch", profile_batch=0, write_graph=False
    )
    return [
        *keeper,
        *training.callbacks,
        *r.extra_callbacks,
        tensorboard,
        *keep_best_callbacks(r.cfg, r.out_dir, r.history, training.guard),  # before the state
        checkpoint,
        EtaPrinter(r.plan, r.first_epoch, r.echo),
        CompactProgbar(r.plan),
    ]


def fit(r: _Run, training: Training) -> RunCheckpoint:
    """``model.fit`` from the first epoch not yet done; every epoch end checkpoints the run."""
    checkpoint = RunCheckpoint(r.out_dir, r.history, r.best_val_accuracy, r.train_seconds)
    stop = r.plan.stop_epoch
    if r.first_epoch >= stop:
        return checkpoint
    data = r.data
    r.echo(
        f"Training {r.recipe.name} on {len(data.x_train):,} images ({data.source}), validating on "
        f"{len(data.x_val):,}: epochs {r.first_epoch + 1}..{stop}, {training.steps_per_epoch} steps of "
        f"{training.batch_size}; {training.model.count_params():,} parameters; run directory {r.out_dir}; "
        f"{distribution(r.cfg).describe(training.batch_size)}; precision "
        f"{resolve_precision(r.cfg.trainer.precision)[1]}"
    )
    verbose = {"auto": 1 if sys.stdout.isatty() else 2, "bar": 1, "epoch": 2, "silent": 0}
    fit_model = fit_function(distribution(r.cfg), training.model)  # model.fit, or keras#20585's route
    fit_model(
        training.train_ds,
        validation_data=training.val_ds,
        epochs=training.epochs,
        initial_epoch=r.first_epoch,
        steps_per_epoch=training.steps_per_epoch,
        callbacks=run_callbacks(r, training, checkpoint),
        verbose=verbose[r.cfg.trainer.verbose],
        shuffle=False,
    )
    return checkpoint


def report(r: _Run, training: Training, checkpoint: RunCheckpoint) -> RunResult:
    """``history.csv``, the test evaluation (unless the NaN guard stopped the run), ``model.keras`` and
    ``metrics.json``, all of the weights the run ends on (:func:`finish_weights`: ``optimizer.ema``'s
    average, batch-norm statistics measured for them)."""
    model, rows, batch = training.model, checkpoint.rows, training.batch_size
    guard = training.guard
    final = finish_weights(model, r.cfg, r.data, batch, diverged=guard is not None and guard.stopped)
    write_text(r.out_dir / "history.csv", history_csv(rows))
    seconds = checkpoint.session_seconds
    images_per_second = checkpoint.session_steps * batch / seconds if seconds else None
    metrics = {
        "recipe": r.recipe.name,
        "epochs_completed": len(rows),
        "best_val_accuracy": checkpoint.best_val_accuracy,
        "train_seconds": round(checkpoint.train_seconds, 2),
        "images_per_second": round(images_per_second, 1) if images_per_second else None,
        "compute": compute_report(model, optimizer_steps(model.optimizer) * batch, images_per_second),
        "train_examples": len(r.data.x_train),
        "data_source": r.data.source,
        "data_is_sample": r.data.is_sample,
        "seed": r.cfg.trainer.seed,
        **distribution(r.cfg).record(batch),  # strategy, replicas, global_batch_size
        "ema": r.cfg.optimizer.ema,  # the decay of the averaged weights evaluated and saved; 0: the raw ones
        "bn_refresh_images": final["bn_refresh_images"],  # 0: the statistics as training left them
        "precision": keras.mixed_precision.global_policy().name,  # trainer.precision, auto resolved
        "augment_on": "device" if augments_on_device(r.cfg) else "host",  # data.augment_on, auto resolved
        "versions": library_versions(),
    }
    result = RunResult(out_dir=r.out_dir, metrics=metrics, resumed_from=r.first_epoch, model=model)
    if guard is not None and guard.stopped:
        info = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in guard.stop_info.items()
        }
        metrics.update(status="diverged", nan_guard=info)
        result.diverged = True
        result.messages.append(guard.stop_info["advice"])
    else:
        views = r.plan.final_eval_passes or None  # None: the configured views
        metrics.update(evaluate_test(model, r.data, r.cfg, training.eval_batch_size, views))
        diagnosis = diagnose_fit(rows, r.data.num_classes)
        if diagnosis:
            metrics["fit_diagnosis"] = diagnosis
    save_inference_model(model, r.out_dir / "model.keras")
    if (final["averaged"] or final["bn_refresh_images"]) and not result.diverged:
        save_final_checkpoint(model, r.out_dir, len(rows))
    if not result.diverged:
        overhead = sum(getattr(cb, "overhead_seconds", 0.0) for cb in r.extra_callbacks)
        metrics["wall_seconds"] = round(time.perf_counter() - r.clock - overhead, 2)
        if isinstance(r.plan, BudgetPlan):
            metrics["budget"] = budget_report(
                model, r.plan, metrics["wall_seconds"], resumed=r.first_epoch > 0
            )
    metrics.update(kept_report(r.cfg, r.out_dir, rows))
    write_json(r.out_dir / "metrics.json", metrics)
    return result


def diagnose_fit(rows: list[dict], num_classes: int) -> dict | None:
    """:func:`callbacks.fit_diagnosis` of the last epoch that measured both the clean training accuracy
    and the validation accuracy (the monitor skips epochs to stay within its share of the time: their
    value is NaN), with that ``epoch`` (1-based); None when none did (``callbacks.clean_accuracy=false``,
    no validation)."""
    for row in reversed(rows):
        clean, val = row.get("train_clean_accuracy"), row.get("val_accuracy")
        if clean is not None and val is not None and math.isfinite(clean) and math.isfinite(val):
            diagnosis = fit_diagnosis(clean, val, chance=1 / num_classes)
            return {**diagnosis, "epoch": int(row["epoch"])}
    return None


def load_metrics(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "metrics.json").read_text())


__all__ = ["EXIT_DIVERGED", "RunResult", "data_stats", "load_metrics", "run"]

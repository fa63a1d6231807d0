"""Run any recipe the same way: data, model, optimizer, callbacks, resume, evaluation and outputs.

A run directory receives ``config.yaml``, ``run_info.json`` (seed, overrides, versions, git revision),
``history.csv``, ``metrics.json``, ``model.keras``, ``tensorboard/``, ``checkpoints/`` and PNG curves.
Started again on the same directory, an interrupted run resumes from its last completed epoch.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

import callbacks  # noqa: F401  (registers the schedules a checkpoint's optimizer uses)
import layers  # noqa: F401  (registers the custom layers a checkpoint may hold)
from callbacks._util import unwrap_optimizer
from recipes import optimizers, pipeline  # noqa: F401  (optimizers: registers LookaheadSGD for checkpoints)
from recipes.atomic import write_json, write_text
from recipes.budget import (
    BudgetKeeper,
    BudgetPlan,
    Replannable,
    calibrate,
    planned_config,
    schedule_position,
)
from recipes.checkpoint import RunCheckpoint, history_csv, load_checkpoint, load_state, save_model
from recipes.compute import TRAIN_FLOPS_PER_MAC, forward_macs
from recipes.config import ConfigError, diff, from_dict, parse_duration, to_yaml
from recipes.data import load_data
from recipes.registry import Recipe, get_recipe

SAMPLE_BANNER = """\
==============================================================================
 Training on the BUNDLED CIFAR-10 SAMPLE ({n_train} training images), not the
 full data set: accuracy will be far below full-CIFAR-10 figures. Point at
 the real data with data.path=/path/to/cifar-10-python.tar.gz (or put it in
 ~/.keras/datasets/). Reason: {reason}
=============================================================================="""

EXIT_DIVERGED = 3


@dataclass
class RunResult:
    out_dir: Path
    metrics: dict
    diverged: bool = False
    resumed_from: int = 0
    messages: list[str] = field(default_factory=list)


def default_out_dir(run_name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{run_name}-{stamp}"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "numpy", "keras-tuner", "pandas"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def git_revision() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def setup_determinism(seed: int, deterministic: bool) -> None:
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def build_optimizer(cfg, steps_per_epoch: int):
    """The configured optimizer over a warmup + decay schedule spanning ``trainer.epochs``."""
    from callbacks import warmup_schedule

    o, s = cfg.optimizer, cfg.schedule
    schedule = warmup_schedule(
        s.name,
        o.lr,
        epochs=cfg.trainer.epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=s.warmup_epochs,
        initial_lr_fraction=s.initial_lr_fraction,
        final_lr_fraction=s.final_lr_fraction,
        step_epochs=s.step_epochs,
        decay_factor=s.decay_factor,
        inverse_time_k=s.inverse_time_k,
    )
    if cfg.trainer.budget is not None:
        schedule = Replannable(schedule)  # BudgetKeeper may compress its end into fewer steps
    common = dict(learning_rate=schedule, weight_decay=o.weight_decay or None, clipnorm=o.clipnorm)
    if o.name == "sgd" and (o.bias_lr_scale != 1.0 or o.lookahead_every):
        from recipes.optimizers import LookaheadSGD

        opt = LookaheadSGD(
            momentum=o.momentum,
            nesterov=o.nesterov,
            lr_multipliers={"beta": o.bias_lr_scale} if o.bias_lr_scale != 1.0 else None,
            lookahead_every=o.lookahead_every,
            lookahead_decay=o.lookahead_decay,
            total_steps=max(1, round(cfg.trainer.epochs * steps_per_epoch)),
            **common,
        )
    elif o.name == "sgd":
        opt = keras.optimizers.SGD(momentum=o.momentum, nesterov=o.nesterov, **common)
    elif o.name == "adam":
        opt = keras.optimizers.Adam(beta_1=o.momentum, **common)
    elif o.name == "adamw":
        opt = keras.optimizers.AdamW(beta_1=o.momentum, **{**common, "weight_decay": o.weight_decay})
    else:
        opt = keras.optimizers.RMSprop(momentum=o.momentum, **common)
    # Decay shrinks kernels only: biases, batch-norm scales and shifts are not weights to regularise.
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


def compile_model(model, cfg, steps_per_epoch: int) -> None:
    model.compile(
        optimizer=build_optimizer(cfg, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.loss.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile={"auto": "auto", "true": True, "false": False}[cfg.trainer.jit_compile],
    )


def data_stats(data) -> dict:
    mean, var = data.channel_stats()
    return {
        "mean": mean.tolist(),
        "variance": var.tolist(),
        "num_classes": data.num_classes,
        "input_shape": tuple(int(d) for d in data.x_train.shape[1:]),
        "images": data.x_train[:5000],  # for layers fitted to the data at build time (patch whitening)
    }


def tta_views(x: np.ndarray, translate: int = 0) -> list[np.ndarray]:
    """The image batch and its mirror image; with ``translate``, also both shifted by ``translate`` pixels
    up-left and down-right (reflection fills the border), each with its mirror image."""
    views = [x, x[:, :, ::-1]]
    if translate:
        t = translate
        padded = np.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        h, w = x.shape[1:3]
        for dy, dx in ((0, 0), (2 * t, 2 * t)):
            shifted = padded[:, dy : dy + h, dx : dx + w]
            views += [shifted, shifted[:, :, ::-1]]
    return views


def predict_views(model, x: np.ndarray, batch_size: int, tta: bool, translate: int = 0) -> list[np.ndarray]:
    """The logits of each of :func:`tta_views` (only of ``x`` without ``tta``); the first is ``x``'s."""
    views = tta_views(x, translate) if tta else [x]
    return [
        keras.ops.convert_to_numpy(model.predict(np.ascontiguousarray(v), batch_size=batch_size, verbose=0))
        for v in views
    ]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def predict_tta(model, x: np.ndarray, batch_size: int, tta: bool, translate: int = 0) -> np.ndarray:
    """Class probabilities; with ``tta``, the mean over :func:`tta_views` of the softmax outputs."""
    return np.mean([softmax(z) for z in predict_views(model, x, batch_size, tta, translate)], axis=0)


def make_callbacks(cfg, data) -> tuple[list, object | None]:
    """The monitors the config switches on, in logging order, and the NaN guard among them (or None)."""
    from callbacks import ActivationStats, DeadUnitMonitor, LearningRateLogger, NaNGuard, UpdateRatioLogger

    c = cfg.callbacks
    probe = data.x_train[:256].astype(np.float32)
    cbs = []
    if c.learning_rate:
        cbs.append(LearningRateLogger())
    if c.dead_units:
        cbs.append(DeadUnitMonitor(probe))
    if c.update_ratio:
        cbs.append(UpdateRatioLogger())
    if c.activation_stats:
        cbs.append(ActivationStats(probe, plot_dir=Path(cfg.trainer.out_dir) / "activations"))
    guard = NaNGuard(explosion_factor=c.explosion_factor) if c.nan_guard else None
    if guard is not None:
        cbs.append(guard)
    return cbs, guard


def resolve_out_dir(cfg, run_name: str) -> Path:
    """``trainer.out_dir``, defaulting (and recorded in the config) to ``runs/<run_name>-<timestamp>``."""
    if not cfg.trainer.out_dir:
        cfg.trainer.out_dir = str(default_out_dir(run_name))
    return Path(cfg.trainer.out_dir)


def check_resume_config(out_dir: Path, recipe: Recipe, cfg) -> None:
    """Refuse to resume a run directory with a different config, naming the keys that differ."""
    import yaml

    saved_path = out_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved_dict = yaml.safe_load(saved_path.read_text())
    saved = from_dict(recipe.config_class, saved_dict)
    changed = {k: v for k, v in diff(saved, cfg).items() if k not in ("trainer.verbose",)}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(
            f"{out_dir} holds a run with a different config ({detail}); use the same "
            "overrides to resume it, or another trainer.out_dir for a new run"
        )


def run(
    recipe_name: str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    echo=print,
    extra_callbacks: list | tuple = (),
) -> RunResult:
    """Train and evaluate a recipe; resumes when ``trainer.out_dir`` holds an interrupted run.

    ``extra_callbacks`` join the run's callbacks; one with an ``overhead_seconds`` attribute (a
    measurement a benchmark makes) has that time left out of the budget accounting.
    """
    recipe = get_recipe(recipe_name)
    cfg = recipe.config(overrides)
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(cfg.trainer.precision)  # layers built from here take it
    try:
        return _run(recipe, cfg, overrides, echo, extra_callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _run(recipe: Recipe, cfg, overrides, echo, extra_callbacks) -> RunResult:
    budget_seconds = parse_duration(cfg.trainer.budget)
    out_dir = resolve_out_dir(cfg, recipe.name)
    state = load_state(out_dir)
    if state is not None:
        check_resume_config(out_dir, recipe, cfg)

    data = load_data(cfg.data, seed=cfg.trainer.seed)
    clock = time.perf_counter()  # the budget covers everything from here on
    for cb in extra_callbacks:
        if hasattr(cb, "start_clock"):
            cb.start_clock(clock)

    setup_determinism(cfg.trainer.seed, cfg.trainer.deterministic)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(out_dir=out_dir, metrics={})
    if data.is_sample:
        echo(SAMPLE_BANNER.format(n_train=len(data.x_train), reason=(data.notes or ["data.name=sample"])[0]))
    batch = min(cfg.trainer.batch_size, len(data.x_train))
    spe = pipeline.steps_per_epoch(len(data.x_train), batch)
    eval_batch = max(batch, 256)
    eval_passes = len(tta_views(data.x_test[:1], cfg.trainer.tta_translate)) if cfg.trainer.tta else 1
    plan = None
    run_cfg = cfg

    if state is not None:
        if budget_seconds is not None:
            plan = BudgetPlan.from_dict(json.loads((out_dir / "plan.json").read_text()))
            run_cfg, spe = planned_config(cfg, plan), plan.steps_per_epoch
        model, state = load_checkpoint(out_dir, state)
        first_epoch = state["epochs_completed"]
        result.resumed_from = first_epoch
        echo(
            f"Resumed {out_dir} from epoch {first_epoch}/{run_cfg.trainer.epochs} "
            f"(checkpoint {state['checkpoint']}, best val_accuracy {state['best_val_accuracy']})"
        )
        rows, best, seconds = state["history"], state["best_val_accuracy"], state["train_seconds"]
    else:
        model = recipe.build_model(cfg, data_stats(data))
        compile_model(model, cfg, spe)
        first_epoch, rows, best, seconds = 0, [], None, 0.0
        if budget_seconds is not None:
            try:
                plan = calibrate(
                    model,
                    pipeline.recipe_train_dataset(
                        cfg, data.x_train, data.y_train, num_classes=data.num_classes, batch_size=batch
                    ),
                    budget_seconds=budget_seconds,
                    elapsed_seconds=time.perf_counter() - clock,
                    steps_per_epoch=spe,
                    configured_epochs=cfg.trainer.epochs,
                    eval_images=data.x_test,
                    eval_batch_size=eval_batch,
                    val_examples=len(data.x_val),
                    final_eval_passes=eval_passes,
                )
            except ValueError as e:
                raise ConfigError(f"trainer.budget={cfg.trainer.budget}: {e}") from None
            run_cfg, spe = planned_config(cfg, plan), plan.steps_per_epoch
            compile_model(model, run_cfg, spe)  # a fresh optimizer over the planned schedule
            write_json(out_dir / "plan.json", plan.as_dict())
            echo(
                f"Budget {budget_seconds:.0f}s: {plan.seconds_per_step * 1000:.0f} ms per step of {batch}, "
                f"planned {plan.total_steps} steps ({plan.epochs} epochs of {plan.steps_per_epoch}, "
                f"{plan.epoch_scale:.2f}x the configured schedule), {plan.reserved_seconds:.0f}s kept for "
                "compiling, validation, checkpoints and the final evaluation"
            )
        write_text(out_dir / "config.yaml", to_yaml(cfg))
        write_json(
            out_dir / "run_info.json",
            {
                "recipe": recipe.name,
                "overrides": list(overrides),
                "seed": cfg.trainer.seed,
                "git_revision": git_revision(),
                "versions": library_versions(),
                "command": sys.argv,
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "data_source": data.source,
                "train_examples": len(data.x_train),
                "val_examples": len(data.x_val),
                "test_examples": len(data.x_test),
            },
        )

    epochs = plan.stop_epoch if plan else run_cfg.trainer.epochs
    fit_epochs = plan.max_epochs if plan else epochs  # a budget's BudgetKeeper stops fit at plan.stop_epoch

    def stop_epoch() -> int:  # a budget's BudgetKeeper may move it
        return plan.stop_epoch if plan else epochs

    checkpoint = RunCheckpoint(out_dir, rows, best, seconds)
    monitors, guard = make_callbacks(cfg, data)
    if recipe.train_callbacks is not None:
        monitors = recipe.train_callbacks(run_cfg, plan.epoch_length_scale if plan else 1.0) + monitors
    if plan is not None:

        def replanned(record: dict) -> None:
            write_json(out_dir / "plan.json", plan.as_dict())
            speed = "slower" if record["slower"] else "faster"
            pace = f"\nBudget: epochs now take {record['seconds_per_epoch']:.0f}s, {speed} than planned"
            if record["epochs"] == record["after_epoch"]:
                echo(f"{pace}; no further epoch fits: stopping now, schedule incomplete")
            else:
                how = "compressed" if record["slower"] else "stretched"
                echo(
                    f"{pace}; re-planned to end after epoch {record['epochs']} ({record['total_steps']} "
                    f"steps) with the rest of the schedule {how} to fit"
                )

        # before the checkpoint, which then saves the re-planned schedule
        monitors = [BudgetKeeper(plan, None if result.resumed_from else clock, replanned), *monitors]
    run_callbacks = (
        monitors
        + list(extra_callbacks)
        + [
            keras.callbacks.TensorBoard(
                log_dir=str(out_dir / "tensorboard"), update_freq="epoch", profile_batch=0, write_graph=False
            ),
            checkpoint,
            EtaPrinter(first_epoch, stop_epoch, echo),
            CompactProgbar(stop_epoch),
        ]
    )
    verbose = {"auto": 1 if sys.stdout.isatty() else 2, "bar": 1, "epoch": 2, "silent": 0}[
        cfg.trainer.verbose
    ]
    if first_epoch < epochs:
        echo(
            f"Training {recipe.name} on {len(data.x_train):,} images ({data.source}), validating on "
            f"{len(data.x_val):,}: epochs {first_epoch + 1}..{epochs}, {spe} steps of {batch}; "
            f"{model.count_params():,} parameters; run directory {out_dir}"
        )
        train_ds = pipeline.recipe_train_dataset(
            run_cfg,
            data.x_train,
            data.y_train,
            num_classes=data.num_classes,
            batch_size=batch,
            first_epoch=first_epoch,
            steps_per_epoch=spe if plan else None,
            epochs=fit_epochs,
        )
        val_ds = None
        if len(data.x_val):
            val_ds = pipeline.eval_dataset(
                data.x_val, data.y_val, num_classes=data.num_classes, batch_size=eval_batch
            )
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=fit_epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=spe,
            callbacks=run_callbacks,
            verbose=verbose,
            shuffle=False,
        )

    rows = checkpoint.rows
    write_text(out_dir / "history.csv", history_csv(rows))
    images_per_second = (
        checkpoint.session_epochs * spe * batch / checkpoint.session_seconds
        if checkpoint.session_seconds
        else None
    )
    metrics = {
        "recipe": recipe.name,
        "epochs_completed": len(rows),
        "best_val_accuracy": checkpoint.best_val_accuracy,
        "train_seconds": round(checkpoint.train_seconds, 2),
        "images_per_second": round(images_per_second, 1) if images_per_second else None,
        "compute": compute_report(model, len(rows) * spe * batch, images_per_second),
        "train_examples": len(data.x_train),
        "data_source": data.source,
        "data_is_sample": data.is_sample,
        "seed": cfg.trainer.seed,
        "versions": library_versions(),
    }
    if guard is not None and guard.stopped:
        info = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in guard.stop_info.items()
        }
        metrics.update(status="diverged", nan_guard=info)
        save_model(model, out_dir / "model.keras")
        write_json(out_dir / "metrics.json", metrics)
        result.metrics, result.diverged = metrics, True
        result.messages.append(guard.stop_info["advice"])
        return result

    start = time.perf_counter()
    x_test = data.x_test.astype(np.float32)
    logits = predict_views(model, x_test, eval_batch, cfg.trainer.tta, cfg.trainer.tta_translate)
    probs = np.mean([softmax(z) for z in logits], axis=0)
    plain = softmax(logits[0])
    onehot = keras.ops.one_hot(data.y_test, data.num_classes)
    test_loss = float(keras.ops.convert_to_numpy(model.loss(onehot, logits[0])))
    metrics.update(
        status="completed",
        test_accuracy=float(np.mean(probs.argmax(-1) == data.y_test)),
        test_accuracy_no_tta=float(np.mean(plain.argmax(-1) == data.y_test)),
        test_loss=test_loss,
        test_examples=len(data.x_test),
        tta=cfg.trainer.tta,
        tta_translate=cfg.trainer.tta_translate if cfg.trainer.tta else 0,
        eval_seconds=round(time.perf_counter() - start, 2),
    )
    save_model(model, out_dir / "model.keras")
    overhead = sum(getattr(cb, "overhead_seconds", 0.0) for cb in extra_callbacks)
    metrics["wall_seconds"] = round(time.perf_counter() - clock - overhead, 2)
    if budget_seconds is not None:
        metrics["budget"] = budget_report(
            model, plan, metrics["wall_seconds"], resumed=result.resumed_from > 0
        )
    write_json(out_dir / "metrics.json", metrics)
    result.metrics = metrics
    return result


def compute_report(model, images_trained: int, images_per_second: float | None) -> dict:
    """The arithmetic of the training (see :mod:`recipes.compute`): per image, in all, and the rate this
    session's training reached (``images_per_second`` of training time; None when it trained no epoch)."""
    macs = forward_macs(model)
    per_image = TRAIN_FLOPS_PER_MAC * macs
    rate = images_per_second * per_image if images_per_second else None
    return {
        "forward_macs_per_image": macs,
        "train_flops_per_image": per_image,
        "train_pflops": float(f"{images_trained * per_image / 1e15:.4g}"),
        "train_gflops_per_second": float(f"{rate / 1e9:.4g}") if rate else None,
    }


def budget_report(model, plan: BudgetPlan, used_seconds: float, resumed: bool) -> dict:
    """How a budget was used: the plan, the seconds spent, and whether the schedule ran to its end."""
    steps_done, position = schedule_position(model.optimizer)
    return {
        **plan.as_dict(),
        "used_seconds": used_seconds if not resumed else None,  # a resumed run's clock restarted
        "within_budget": used_seconds <= plan.budget_seconds if not resumed else None,
        "steps_done": steps_done,
        "schedule_completed": position >= plan.total_steps - 1e-3 * plan.total_steps,
        "final_learning_rate": float(
            keras.ops.convert_to_numpy(unwrap_optimizer(model.optimizer).learning_rate)
        ),
    }


def _eta_text(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class CompactProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar without the per-layer monitor keys (``dead_fraction/<layer>`` and the like),
    which stay in History, history.csv and TensorBoard; its "Epoch k/N" shows ``stop_epoch()``, the run's
    last epoch, which a budget's re-plan may move while ``fit`` runs to an upper bound."""

    def __init__(self, stop_epoch: Callable[[], int]):
        super().__init__()
        self.stop_epoch = stop_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs = self.stop_epoch()
        super().on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items() if "/" not in k})


class EtaPrinter(keras.callbacks.Callback):
    """After the first epoch of a session, print how long the remaining epochs should take."""

    def __init__(self, first_epoch: int, stop_epoch: Callable[[], int], echo):
        super().__init__()
        self.first_epoch, self.stop_epoch, self.echo = first_epoch, stop_epoch, echo
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        left = self.stop_epoch() - epoch - 1
        if epoch == self.first_epoch and left > 0:
            took = time.perf_counter() - self._start
            self.echo(
                f"epoch {epoch + 1} took {_eta_text(took)}: about {_eta_text(took * left)} left for "
                f"the remaining {left} epochs"
            )


def load_metrics(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "metrics.json").read_text())

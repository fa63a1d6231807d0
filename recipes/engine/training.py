"""One training set-up for every job: ``run``, the tuner's hypermodel and ``check`` all call
:func:`build_training`, which turns a resolved config and the data into a compiled model (its optimizer
over the configured schedule, the ``model.l1`` / ``model.l2`` / ``model.max_norm`` kernel penalties), the
datasets, the steps per epoch and the callbacks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from callbacks import (
    ActivationStats,
    CleanTrainAccuracy,
    DeadUnitMonitor,
    FirstLayerFilters,
    GradientStats,
    LearningRateLogger,
    NaNGuard,
    PlateauDecay,
    Replannable,
    UpdateRatioLogger,
    warmup_schedule,
)
from recipes.config import ConfigError
from recipes.data import pipeline
from recipes.engine.averaging import ema_validation
from recipes.engine.device_augment import augments_on_device, set_train_augmentation
from recipes.engine.distribute import check_batch, distribution
from recipes.engine.optimizers import LookaheadSGD
from recipes.registry import Recipe

EVAL_BATCH_MIN = 256  # inference runs fastest at 256 or more images per batch on a CPU


def setup_determinism(seed: int, deterministic: bool) -> None:
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def build_schedule(cfg, steps_per_epoch: int):
    """The configured warmup + decay over ``trainer.epochs``; under a budget wrapped in a
    :class:`callbacks.Replannable`, so that the plan can set (and re-set) the pace it is read at.

    ``schedule.name=plateau`` gives ``Warmup(PlateauSchedule(lr))``: the rate after warmup is ``lr``
    times a factor that :func:`plateau_callback` lowers. Under a budget the warmup stretches with the
    plan like any other schedule; the plateau counts the epochs that actually run (each validated)."""
    s = cfg.schedule
    schedule = warmup_schedule(
        s.name,
        cfg.optimizer.lr,
        epochs=cfg.trainer.epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=s.warmup_epochs,
        initial_lr_fraction=s.initial_lr_fraction,
        final_lr_fraction=s.final_lr_fraction,
        step_epochs=s.step_epochs,
        decay_factor=s.decay_factor,
        inverse_time_k=s.inverse_time_k,
    )
    return Replannable(schedule) if cfg.trainer.budget is not None else schedule


def plateau_callback(cfg) -> PlateauDecay | None:
    """The :class:`callbacks.PlateauDecay` that drives ``schedule.name=plateau`` (None for other
    schedules): Keras's ``ReduceLROnPlateau`` rule on ``val_accuracy``, the rate never below
    ``final_lr_fraction`` of ``optimizer.lr``."""
    s = cfg.schedule
    if s.name != "plateau":
        return None
    return PlateauDecay(
        factor=s.decay_factor,
        patience=s.patience,
        min_delta=s.min_delta,
        cooldown=s.cooldown,
        min_factor=s.final_lr_fraction,
        monitor="val_accuracy",
        mode="max",
    )


def build_optimizer(cfg, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The configured optimizer over :func:`build_schedule`. Keys that do not apply to an optimizer are
    ignored (``momentum`` by adagrad and adadelta); what no key sets keeps Keras's default.
    ``optimizer.ema`` is Keras's ``use_ema`` (every optimizer has it): ``fit`` ends with the averaged
    weights in the model."""
    o = cfg.optimizer
    common = dict(
        learning_rate=build_schedule(cfg, steps_per_epoch),
        weight_decay=o.weight_decay or None,
        clipnorm=o.clipnorm,
        **(dict(use_ema=True, ema_momentum=o.ema) if o.ema else {}),
    )
    if o.name == "sgd" and (o.bias_lr_scale != 1.0 or o.lookahead_every or o.muon_lr):
        opt = LookaheadSGD(
            momentum=o.momentum,
            nesterov=o.nesterov,
            lr_multipliers={"beta": o.bias_lr_scale} if o.bias_lr_scale != 1.0 else None,
            lookahead_every=o.lookahead_every,
            lookahead_decay=o.lookahead_decay,
            total_steps=max(1, round(cfg.trainer.epochs * steps_per_epoch)),
            muon_lr_scale=o.muon_lr / o.lr,
            muon_momentum=o.muon_momentum,
            **common,
        )
    elif o.name == "sgd":
        opt = keras.optimizers.SGD(momentum=o.momentum, nesterov=o.nesterov, **common)
    elif o.name == "adam":
        opt = keras.optimizers.Adam(beta_1=o.momentum, **common)
    elif o.name == "adamw":
        opt = keras.optimizers.AdamW(beta_1=o.momentum, **{**common, "weight_decay": o.weight_decay})
    elif o.name == "rmsprop":
        opt = keras.optimizers.RMSprop(momentum=o.momentum, **common)
    elif o.name == "adagrad":
        opt = keras.optimizers.Adagrad(**common)
    elif o.name == "adadelta":
        opt = keras.optimizers.Adadelta(**common)
    else:
        raise ConfigError(f"optimizer.name={o.name}: no such optimizer")
    # Decay shrinks kernels only: biases, batch-norm scales and shifts are not weights to regularise.
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


def apply_kernel_penalties(
    model: keras.Model, *, l1: float = 0.0, l2: float = 0.0, max_norm: float = 0.0
) -> list[str]:
    """Put an ``L1L2(l1, l2)`` penalty and a ``MaxNorm(max_norm)`` constraint on every trainable kernel of
    ``model`` (each layer with a ``kernel`` variable, nested ones included); returns their paths.

    Keras reads a weight's penalty and constraint from the variable (``variable.regularizer`` is summed
    into ``model.losses``, and the optimizer applies ``variable.constraint`` after each update), so they
    are set there: a layer's ``kernel_regularizer`` set after the layer is built is never read. The layer
    configs are left as they are: the penalties are training settings, applied again from the config by
    every :func:`build_training` (a resumed checkpoint's model included). The max-norm axes are all
    but the last, the output units: a Dense kernel's columns, a convolution's whole filters. Zero turns
    each off, and leaves what a recipe set itself in place.
    """
    regularizer = keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None
    paths = []
    for layer in model._flatten_layers(include_self=False):
        kernel = getattr(layer, "kernel", None)
        if not isinstance(kernel, keras.Variable) or not kernel.trainable:
            continue  # no kernel, a computed one (LoRA), or a frozen one (patch whitening)
        if regularizer is not None:
            kernel.regularizer = regularizer
        if max_norm:
            kernel.constraint = keras.constraints.MaxNorm(max_norm, axis=list(range(len(kernel.shape) - 1)))
        paths.append(kernel.path)
    return paths


def compile_model(model: keras.Model, cfg, steps_per_epoch: int) -> None:
    model.compile(
        optimizer=build_optimizer(cfg, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.loss.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile={"auto": "auto", "true": True, "false": False}[cfg.trainer.jit_compile],
    )


def data_stats(data) -> dict:
    """What a recipe's model builder may fit to the data: channel statistics, classes, input shape, and
    a slice of the training images (for layers fitted at build time, such as patch whitening)."""
    mean, var = data.channel_stats()
    return {
        "mean": mean.tolist(),
        "variance": var.tolist(),
        "num_classes": data.num_classes,
        "input_shape": tuple(int(d) for d in data.x_train.shape[1:]),
        "images": data.x_train[:5000],
    }


# Probe sizes: each monitor measures at most 0.5% of the training time (callbacks._cadence), so a smaller
# probe is measured at more epochs. A forward pass of a ResNet-20 on 2 cores predicts only 2-3x faster
# than it trains; 1,000 images give the clean accuracy to about +-1.5 points (binomial standard error).
CLEAN_SLICE = 1000  # training images whose non-augmented accuracy is measured
GRADIENT_PROBE = 128  # images of the gradient-norm probe (one compiled forward and backward pass)


def make_monitors(cfg, data, model: keras.Model, out_dir: Path | None) -> tuple[list, NaNGuard | None]:
    """The monitors ``callbacks.*`` switches on, in logging order, and the NaN guard among them (or None).
    Their TensorBoard histograms and images go to ``out_dir/tensorboard/monitors``."""
    c = cfg.callbacks
    probe = data.x_train[:256].astype(np.float32)
    board = Path(out_dir) / "tensorboard" / "monitors" if out_dir else None
    cbs: list = []
    if c.learning_rate:
        cbs.append(LearningRateLogger())
    if c.dead_units:
        cbs.append(DeadUnitMonitor(probe))
    if c.update_ratio:
        cbs.append(UpdateRatioLogger())
    if c.activation_stats:
        cbs.append(
            ActivationStats(probe, plot_dir=Path(out_dir) / "activations" if out_dir else None, log_dir=board)
        )
    if c.gradient_stats:
        onehot = np.eye(data.num_classes, dtype=np.float32)[data.y_train[:GRADIENT_PROBE]]
        cbs.append(GradientStats(probe[:GRADIENT_PROBE], onehot, log_dir=board))
    if c.clean_accuracy:
        cbs.append(
            CleanTrainAccuracy(data.x_train[:CLEAN_SLICE].astype(np.float32), data.y_train[:CLEAN_SLICE])
        )
    if (
        c.first_layer_filters
        and out_dir
        and any(isinstance(x, keras.layers.Conv2D) for x in model._flatten_layers())
    ):
        cbs.append(FirstLayerFilters(path=Path(out_dir) / "filters.png", log_dir=board))
    guard = NaNGuard(explosion_factor=c.explosion_factor) if c.nan_guard else None
    if guard is not None:
        cbs.append(guard)
    return cbs, guard


def _has_convolution(layer) -> bool:
    """Whether a Conv2D is among ``layer``'s layers, nested models included (an mlp draws no filters)."""
    return any(
        isinstance(sub, keras.layers.Conv2D) or _has_convolution(sub) for sub in getattr(layer, "layers", [])
    )


@dataclass
class Training:
    """Everything a ``model.fit`` of a recipe needs; ``callbacks`` holds the recipe's own callbacks, then
    the monitors, then the NaN guard (also in ``guard``), then ``val_accuracy_ema`` (``optimizer.ema``; only
    with the monitors), then the plateau decay of
    ``schedule.name=plateau`` (after the learning-rate logger: an epoch's row shows the rate it trained at,
    the next row the decayed one)."""

    model: keras.Model
    batch_size: int
    steps_per_epoch: int
    epochs: int  # the upper bound fit runs to (a budget's keeper may stop it earlier)
    train_ds: object
    val_ds: object | None
    eval_batch_size: int
    callbacks: list = field(default_factory=list)
    guard: NaNGuard | None = None


def build_training(
    recipe: Recipe,
    cfg,
    data,
    *,
    model: keras.Model | None = None,
    stats: dict | None = None,
    plan=None,
    first_epoch: int = 0,
    monitors: bool = True,
    out_dir: Path | None = None,
    recompile: bool = False,
    datasets: bool = True,
) -> Training:
    """The set-up to train ``recipe`` with ``cfg`` on ``data`` (an :class:`recipes.data.ImageData`).

    ``stats``: :func:`data_stats` of ``data``, when the caller has them already.
    ``model``: a model to train instead of a fresh one (a checkpoint's, or the tuner's); it is compiled
    here unless it already is (or always, with ``recompile``: a schedule that must span this training).
    ``plan`` (a :class:`recipes.engine.budget.BudgetPlan`) sets the steps per epoch, fit's epoch bound
    and the recipe callbacks' epoch scale. ``monitors=False`` keeps only the
    recipe's callbacks and the NaN guard (a tuner trial). ``datasets=False`` leaves ``train_ds`` and
    ``val_ds`` None (a model that is not trained yet).
    """
    batch = min(cfg.trainer.batch_size, len(data.x_train))
    configured_spe = pipeline.steps_per_epoch(len(data.x_train), batch)
    plateau = plateau_callback(cfg)
    if plateau is not None and not len(data.x_val):
        raise ConfigError(
            "schedule.name=plateau watches val_accuracy, but there are no validation images; "
            "set data.val_size above 0 or choose another schedule.name"
        )
    dist = distribution(cfg)  # trainer.strategy: the model, optimizer, schedule and metrics in its scope
    if datasets:  # the batch it trains on (a model built before its data sees a placeholder)
        check_batch(batch, dist)
    with dist.scope():
        if model is None:
            model = recipe.build_model(cfg, stats if stats is not None else data_stats(data))
        m = getattr(cfg, "model", None)  # a user's recipe may declare none of the penalty keys
        apply_kernel_penalties(
            model,
            l1=getattr(m, "l1", 0.0),
            l2=getattr(m, "l2", 0.0),
            max_norm=getattr(m, "max_norm", 0.0),
        )
        if recompile or not model.compiled:
            compile_model(model, cfg, configured_spe)
        set_train_augmentation(model, cfg, augments_on_device(cfg))
    spe = plan.steps_per_epoch if plan else configured_spe
    epochs = plan.max_epochs if plan else cfg.trainer.epochs
    eval_batch = max(batch, EVAL_BATCH_MIN)
    train_ds = val_ds = None
    if datasets:
        train_ds, val_ds = _datasets(cfg, data, batch, eval_batch, first_epoch, spe if plan else None, epochs)
    scale = plan.epoch_length_scale if plan else 1.0
    cbs = recipe.train_callbacks(cfg, scale) if recipe.train_callbacks is not None else []
    if monitors:
        watch, guard = make_monitors(cfg, data, model, out_dir)
        watch += ema_validation(cfg, data, batch, eval_batch)
    else:
        watch = []
        guard = NaNGuard(explosion_factor=cfg.callbacks.explosion_factor) if cfg.callbacks.nan_guard else None
        if guard is not None:
            watch.append(guard)
    if plateau is not None:
        watch.append(plateau)
    return Training(model, batch, spe, epochs, train_ds, val_ds, eval_batch, [*cbs, *watch], guard)


CALIBRATION_EPOCH = 1 << 20  # an epoch index no run reaches: its seeded batches are the calibration's


def calibration_dataset(cfg, data, batch_size: int):
    """Augmented training batches a budget's calibration trains on: the permutations and augmentation of
    epochs no run reaches (from ``CALIBRATION_EPOCH`` on, enough of them for ``CALIBRATION_STEPS``), so
    that the steps it keeps do not repeat the first epoch's first batches."""
    from recipes.engine.budget import CALIBRATION_STEPS

    check_batch(batch_size, distribution(cfg))
    epochs = math.ceil(CALIBRATION_STEPS / pipeline.steps_per_epoch(len(data.x_train), batch_size))
    return _train_dataset(cfg, data, batch_size, CALIBRATION_EPOCH, None, CALIBRATION_EPOCH + epochs)


def _train_dataset(cfg, data, batch: int, first_epoch: int, steps: int | None, epochs: int):
    """``data``'s training batches for epochs ``first_epoch .. epochs-1`` (``steps`` per epoch, None: all)."""
    return pipeline.recipe_train_dataset(
        cfg,
        data.x_train,
        data.y_train,
        num_classes=data.num_classes,
        batch_size=batch,
        first_epoch=first_epoch,
        steps_per_epoch=steps,
        epochs=epochs,
        on_device=augments_on_device(cfg),
    )


def _datasets(cfg, data, batch: int, eval_batch: int, first_epoch: int, steps: int | None, epochs: int):
    train = _train_dataset(cfg, data, batch, first_epoch, steps, epochs)
    val = None
    if len(data.x_val):
        val = pipeline.eval_dataset(
            data.x_val, data.y_val, num_classes=data.num_classes, batch_size=eval_batch
        )
    return train, val

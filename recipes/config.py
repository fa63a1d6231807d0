"""Typed recipe configs and Hydra-style ``key=value`` overrides.

A recipe's config is a tree of dataclasses. Overrides such as ``optimizer.lr=0.05`` are parsed by the
declared type of the field (never evaluated), checked against the field's ``choices`` / ``min`` / ``max``
metadata, and any mistake raises :class:`ConfigError` with one line that names the key, the value, what is
expected and the nearest valid spelling. A key given twice on one command line is refused (which value was
meant?); code that layers overrides merges them first (:func:`merge_overrides`).

Why not Hydra/OmegaConf: ``@hydra.main`` cannot take a ``run`` verb before the overrides, and OmegaConf's
structured configs would give us typing but not range checks or "did you mean" hints for values. The parser
below is ~200 lines over the standard library, so the config layer has no dependency beyond PyYAML for
``show``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad recipe name, config key or value. The message is one line, fit to show a user."""


def spec(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    check: typing.Callable[[Any], None] | None = None,
) -> Any:
    """A dataclass field with its documentation and validation rules.

    An int or float key declares both ``min`` and ``max`` (see the ranges below). ``check(value)`` may add
    a rule of its own: it raises ``ValueError`` with what is expected.
    """
    meta = {
        "help": help,
        "choices": choices,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "check": check,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------------
# Ranges: every int and float key declares a min and a max (tests/test_config_ranges.py checks it), so
# a value that NumPy or TensorFlow would refuse, or that float32 cannot hold, fails here with one line
# instead of deep inside a run (a rate in range that still diverges is the NaN guard's). The maxima are
# generous: far beyond any sensible setting, well inside what the libraries accept. Model sections
# (recipes/zoo) bound their widths and depths the same way.
# --------------------------------------------------------------------------------------------------

MAX_SEED = 2**32 - 1  # numpy.random.seed (inside keras.utils.set_random_seed) takes 0..2**32-1
MAX_EPOCHS = 100_000  # also bounds step and warmup counts given in epochs
MAX_IMAGES = 2**31 - 1  # image counts: TensorFlow indexes and shapes with int32
MAX_BATCH = 2**20
MAX_STEPS = 10**9  # counts of optimizer steps
MAX_LR = 1e6  # lr times any multiplier (bias_lr_scale <= 1e4) stays far below float32's 3.4e38
MAX_PIXELS = 1_024  # image sides, paddings, shifts and cutouts
CIFAR_SIDE = 32  # the side of CIFAR-10 images (data.name auto, cifar10, sample)
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")  # trainer.strategy


def nearest(word: str, options: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or an empty string."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


# --------------------------------------------------------------------------------------------------
# Sections shared by every recipe
# --------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    name: str = spec(
        "auto",
        "auto: full CIFAR-10 if found, else the bundled sample; cifar10; folder",
        choices=("auto", "cifar10", "folder", "sample"),
    )
    path: str | None = spec(None, "CIFAR-10 archive / cifar-10-batches-py folder, or an image folder")
    train_limit: int | None = spec(
        None, "train on the first N training images (smoke runs)", min=1, max=MAX_IMAGES
    )
    val_size: int = spec(
        5000, "validation images held out of training (capped at 10% of them)", min=0, max=MAX_IMAGES
    )
    image_size: int = spec(32, "images are resized to this square size (folder data)", min=8, max=MAX_PIXELS)
    augment: bool = spec(True, "random crop + horizontal flip for training")
    crop_padding: int = spec(4, "pixels of padding for the random crop", min=0, max=MAX_PIXELS)
    flip: bool = spec(True, "random horizontal flip")
    alternate_flip: bool = spec(
        False, "flip each image on alternate epochs (at random in the first) instead of at random"
    )
    pad_mode: str = spec("zeros", "padding for the random crop", choices=("zeros", "reflect"))
    augment_on: str = spec(
        "auto",
        "where the crops, flips and cutout are applied: host (the input pipeline), device (the train step: "
        "keeps a GPU fed), auto (device when a GPU is visible)",
        choices=("auto", "host", "device"),
    )
    cutout: int = spec(
        0, "side of a random square cut out of each training image (0 = off)", min=0, max=MAX_PIXELS
    )


@dataclass
class OptimizerConfig:
    name: str = spec(
        "sgd",
        "optimizer (Keras's defaults for what no key sets: adam/adamw beta_2 0.999, rmsprop rho 0.9, adagrad "
        "initial accumulator 0.1, adadelta rho 0.95; adadelta is usually run at lr 1.0)",
        choices=("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"),
    )
    lr: float = spec(0.1, "peak learning rate (after warmup)", min=0.0, max=MAX_LR, min_exclusive=True)
    momentum: float = spec(
        0.9, "momentum (sgd, rmsprop); beta_1 for adam/adamw; unused by adagrad/adadelta", min=0.0, max=0.9999
    )
    nesterov: bool = spec(True, "Nesterov momentum (sgd)")
    # Keras decays weights outside the momentum buffer (w -= lr * wd * w each step), so 5e-3 here matches
    # the classic L2 of 5e-4 under momentum 0.9 (5e-4 / (1 - 0.9)); 5e-4 here is 10x weaker.
    weight_decay: float = spec(
        5e-3,
        "decoupled weight decay (per step: w -= lr * wd * w); not applied to biases or batch norm",
        min=0.0,
        max=10.0,
    )
    clipnorm: float | None = spec(
        None, "clip each gradient to this norm", min=0.0, max=1e9, min_exclusive=True
    )
    bias_lr_scale: float = spec(
        1.0,
        "sgd: learning-rate multiplier of the batch-norm shifts (beta)",
        min=0.0,
        max=1e4,
        min_exclusive=True,
    )
    lookahead_every: int = spec(
        0, "sgd: pull the weights back to a slow copy every N steps (0 = off)", min=0, max=MAX_STEPS
    )
    muon_lr: float = spec(
        0.0,
        "sgd: peak rate of Muon steps for the conv kernels (momentum orthogonalised by Newton-Schulz, each "
        "kernel kept at norm sqrt(filters)); follows the schedule like lr; 0 = plain SGD for them",
        min=0.0,
        max=MAX_LR,
    )
    muon_momentum: float = spec(
        0.6, "sgd: momentum of the Muon steps (Nesterov when optimizer.nesterov)", min=0.0, max=0.9999
    )
    lookahead_decay: float = spec(
        0.7738,
        "sgd lookahead: weight (0.95^5) of the slow copy at the end (ramps up as (step/total)^3)",
        min=0.0,
        max=1.0,
    )
    # Keras's use_ema: avg = d * avg + (1 - d) * w after every step (avg = w at the first). The average
    # spans about 1 / (1 - d) steps, so a run needs several times that many for it to forget the start.
    ema: float = spec(
        0.0,
        "decay of a moving average of the weights that the run ends on (test, model.keras; 0 = off; "
        "typically 0.99-0.9999, spanning about 1/(1-ema) steps)",
        min=0.0,
        max=0.99999,
    )


@dataclass
class ScheduleConfig:
    name: str = spec(
        "cosine",
        "decay after warmup",
        choices=("cosine", "linear", "step", "exponential", "inverse_time", "constant", "plateau"),
    )
    warmup_epochs: float = spec(2.0, "linear warmup to optimizer.lr, in epochs", min=0.0, max=MAX_EPOCHS)
    initial_lr_fraction: float = spec(0.0, "warmup starts at this fraction of optimizer.lr", min=0.0, max=1.0)
    final_lr_fraction: float = spec(
        0.0,
        "cosine, linear: final rate as a fraction of the peak; plateau: the rate's floor",
        min=0.0,
        max=1.0,
    )
    step_epochs: int = spec(10, "step: epochs between drops", min=1, max=MAX_EPOCHS)
    decay_factor: float = spec(
        0.1,
        "step/exponential: multiply the rate by this per step_epochs; plateau: at each plateau",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    inverse_time_k: float = spec(0.5, "inverse_time: lr / (1 + k * epoch)", min=0.0, max=1e6)
    # plateau follows keras.callbacks.ReduceLROnPlateau's rule on val_accuracy, behind the warmup
    patience: int = spec(
        5, "plateau: epochs without a val_accuracy improvement before a decay", min=1, max=MAX_EPOCHS
    )
    min_delta: float = spec(
        1e-4, "plateau: the least val_accuracy gain that counts as an improvement", min=0.0, max=1.0
    )
    cooldown: int = spec(0, "plateau: epochs after a decay before waiting resumes", min=0, max=MAX_EPOCHS)


# --------------------------------------------------------------------------------------------------
# Kernel penalties: fields of every recipe's model section (build_training applies them to every trainable
# kernel of the built model, so a recipe declares them and does nothing else)
# --------------------------------------------------------------------------------------------------

MAX_PENALTY = 1e3  # penalty weights: a loss of 1e3 * sum(W^2) is already far beyond useful


def kernel_l1() -> Any:
    return spec(
        0.0,
        "L1 penalty on every trainable kernel, added to the loss: l1 * sum|W| (0 = off)",
        min=0.0,
        max=MAX_PENALTY,
    )


def kernel_l2() -> Any:
    return spec(
        0.0,
        "L2 penalty on every trainable kernel, added to the loss: l2 * sum W^2 (0 = off; unlike "
        "optimizer.weight_decay it goes through the gradient, momentum and adaptive scaling included)",
        min=0.0,
        max=MAX_PENALTY,
    )


def kernel_max_norm() -> Any:
    return spec(
        0.0,
        "max-norm constraint: after each step, each unit's incoming weights are rescaled to norm <= this "
        "(0 = off)",
        min=0.0,
        max=1e6,
    )


def sync_batch_norm() -> Any:
    """``model.sync_batch_norm`` of a recipe with batch norm: ``BatchNormalization(synchronized=...)``."""
    return spec(
        False,
        "with several replicas: batch-norm statistics over the global batch (an all-reduce per layer and "
        "step) instead of each replica's share; no effect on one device",
    )


@dataclass
class LossConfig:
    label_smoothing: float = spec(0.0, "label smoothing of the cross-entropy", min=0.0, max=0.99)


@dataclass
class CallbacksConfig:
    learning_rate: bool = spec(True, "log the learning rate each epoch (key learning_rate)")
    nan_guard: bool = spec(True, "stop at a NaN or exploding loss and keep the last finite weights")
    dead_units: bool = spec(True, "log the dead-ReLU fraction per layer (dead_fraction/*)")
    update_ratio: bool = spec(True, "log the update-to-weight ratio (update_ratio/*)")
    activation_stats: bool = spec(False, "log activation mean/std/saturation per layer")
    gradient_stats: bool = spec(
        True, "log per-layer gradient norms on a probe batch (grad_norm/*, grad_norm_ratio)"
    )
    clean_accuracy: bool = spec(
        True,
        "log the accuracy on a fixed non-augmented training slice (train_clean_accuracy) and diagnose "
        "over- or underfitting at the end (metrics.json fit_diagnosis)",
    )
    first_layer_filters: bool = spec(True, "draw the first convolution's filters each epoch (filters.png)")
    explosion_factor: float = spec(
        10.0,
        "NaN guard: stop when the batch loss exceeds this x the initial loss",
        min=1.0,
        max=1e12,
        min_exclusive=True,
    )


@dataclass
class TrainerConfig:
    epochs: int = spec(30, "training epochs", min=1, max=MAX_EPOCHS)
    batch_size: int = spec(128, "images per step", min=1, max=MAX_BATCH)
    seed: int = spec(0, "seed for weights, shuffling and augmentation", min=0, max=MAX_SEED)
    out_dir: str | None = spec(None, "run directory (default runs/<recipe>-<timestamp>)")
    budget: str | None = spec(
        None,
        "run only: wall-clock budget (600, 90s, 10min, 1.5h); plans the steps that fit and fits the "
        "schedule to them (tune and check refuse it)",
        check=lambda v: parse_duration(v),
    )
    tta: bool = spec(
        False,
        "test-time augmentation: average the predictions of an image and its mirror image at evaluation",
    )
    tta_translate: int = spec(
        0,
        "with tta: also average views shifted by this many pixels (and their mirror images)",
        min=0,
        max=MAX_PIXELS,
    )
    precision: str = spec(
        "auto",
        "auto: mixed_float16 on a GPU with tensor cores, mixed_bfloat16 on a CPU with bf16 units where it "
        "measures faster, else float32; or float32, mixed_float16, mixed_bfloat16",
        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    )
    jit_compile: str = spec(
        "auto", "XLA compilation: auto (Keras: on for GPUs), true, false", choices=("auto", "true", "false")
    )
    deterministic: bool = spec(
        False,
        "force TensorFlow's deterministic kernels (about 1.8x slower on CPU; "
        "CPU runs already repeat exactly for a seed without it)",
    )
    verbose: str = spec("auto", "progress display", choices=("auto", "bar", "epoch", "silent"))
    bn_refresh: str = spec(
        "auto",
        "measure batch norm's moving statistics again for the weights the run ends on, on the first 2,000 "
        "training images: auto (when those weights are not the ones the statistics followed: "
        "optimizer.ema's average, optimizer.lookahead_every's slow copy), true, false",
        choices=("auto", "true", "false"),
    )
    keep_checkpoints: int = spec(
        0,
        "keep the K best epochs by val_accuracy as inference models in best/ (0 = off); "
        "average them with python cli.py ensemble DIR checkpoints=K",
        min=0,
        max=MAX_EPOCHS,
    )
    strategy: str = spec(
        "auto",
        "tf.distribute strategy: auto (mirrored over all GPUs when more than one is visible, else one "
        "device), one_device, mirrored, multi_worker (TF_CONFIG); trainer.batch_size is the global batch",
        choices=STRATEGIES,
    )
    cpu_replicas: int = spec(
        1,
        "split the CPU into this many logical devices (no GPU): rehearse a multi-device run on a laptop",
        min=1,
        max=64,
    )


@dataclass
class BaseConfig:
    """Sections every recipe has; a recipe subclasses it and adds ``model``."""

    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        """Rules that span keys."""
        o = self.optimizer
        if o.name != "sgd":
            for key, value, off in (
                ("bias_lr_scale", o.bias_lr_scale, 1.0),
                ("lookahead_every", o.lookahead_every, 0),
                ("muon_lr", o.muon_lr, 0.0),
            ):
                if value != off:
                    raise ConfigError(
                        f"optimizer.{key}={value} needs optimizer.name=sgd (got {o.name}); "
                        f"set optimizer.name=sgd or optimizer.{key}={off}"
                    )
        d = self.data
        side = d.image_size if d.name == "folder" else CIFAR_SIDE
        if d.augment and d.pad_mode == "reflect" and d.crop_padding >= side:
            # TensorFlow's reflection padding needs padding < image side (it fails inside the first epoch)
            raise ConfigError(
                f"data.crop_padding={d.crop_padding} with data.pad_mode=reflect: expected a value below the "
                f"image side ({side}); lower data.crop_padding or set data.pad_mode=zeros"
            )
        if self.schedule.name == "plateau" and d.val_size == 0:
            raise ConfigError(
                "schedule.name=plateau watches val_accuracy, but data.val_size=0 holds out no validation "
                "images; set data.val_size above 0 or choose another schedule.name"
            )
        if self.trainer.keep_checkpoints and d.val_size == 0:
            raise ConfigError(
                f"trainer.keep_checkpoints={self.trainer.keep_checkpoints} ranks epochs by val_accuracy, but "
                "data.val_size=0 holds out no validation images; set data.val_size above 0 or "
                "trainer.keep_checkpoints=0"
            )


_DURATION_UNITS = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}


def parse_duration(text: str | None) -> float | None:
    """Seconds in ``600``, ``90s``, ``10min``, ``10m`` or ``1.5h``; ``ValueError`` names the forms."""
    if text is None:
        return None
    raw = str(text).strip().lower()
    number, unit = raw, "s"
    for suffix in sorted(_DURATION_UNITS, key=len, reverse=True):
        if raw.endswith(suffix):
            number, unit = raw[: -len(suffix)].strip(), suffix
            break
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise ValueError("expected seconds or a duration such as 600, 90s, 10min or 1.5h") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("expected a positive duration such as 600, 90s, 10min or 1.5h")
    return seconds


# --------------------------------------------------------------------------------------------------
# Walking and overriding
# --------------------------------------------------------------------------------------------------


def flat_fields(cfg: Any, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field, Any]]:
    """``{"optimizer.lr": (section, field, type), ...}`` for every leaf of the config tree."""
    out: dict[str, tuple[Any, dataclasses.Field, Any]] = {}
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flat_fields(value, key + "."))
        else:
            out[key] = (cfg, f, hints[f.name])
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def flat_dict(cfg: Any) -> dict[str, Any]:
    return {key: getattr(obj, f.name) for key, (obj, f, _) in flat_fields(cfg).items()}


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"null", "none", "~", ""}


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def parse_value(key: str, raw: str, tp: Any, f: dataclasses.Field) -> Any:
    """Parse ``raw`` as the field's declared type and check its metadata rules."""
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    text = raw.strip()
    if optional and text.lower() in _NONE:
        return None
    expected = _type_name(tp) + (" or null" if optional else "")
    try:
        if tp is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError
            value: Any = text.lower() in _TRUE
        elif tp is int:
            value = int(text.replace("_", ""))
        elif tp is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = text
    except ValueError:
        raise ConfigError(f"{key}={raw}: expected {expected}") from None
    check_value(key, value, f)
    return value


def check_value(key: str, value: Any, f: dataclasses.Field) -> None:
    meta = f.metadata
    if value is None:
        return
    if meta.get("check"):
        try:
            meta["check"](value)
        except ValueError as e:
            raise ConfigError(f"{key}={value}: {e}") from None
    if meta.get("choices") and value not in meta["choices"]:
        options = ", ".join(map(str, meta["choices"]))
        raise ConfigError(
            f"{key}={value}: expected one of {options}{nearest(str(value), map(str, meta['choices']))}"
        )
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            op = ">" if meta.get("min_exclusive") else ">="
            raise ConfigError(f"{key}={value}: expected a value {op} {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key}={value}: expected a value <= {hi}")


def override_key(item: str) -> str:
    """The key of a ``key=value`` override, without Hydra's ``+`` prefix."""
    return item.split("=", 1)[0].strip().lstrip("+")


def given_twice(key: str, first: str, second: str) -> ConfigError:
    """The error for a key given twice on one command line: a repeat is a mistake (which value was meant?),
    never a way to override."""
    return ConfigError(f"{key} is given twice ({key}={first} and {key}={second}): keep one")


def merge_overrides(*layers: typing.Sequence[str]) -> list[str]:
    """One list of overrides from layers applied in turn: a key of a later layer replaces the same key of an
    earlier one (the tuner's sampled values over a search's fixed overrides, for example)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            merged.pop(override_key(item), None)
            merged[override_key(item)] = item
    return list(merged.values())


def apply_overrides(cfg: Any, overrides: typing.Sequence[str]) -> Any:
    """Return a copy of ``cfg`` with each ``key=value`` applied; a key given twice is refused (layer
    overrides with :func:`merge_overrides`)."""
    import copy

    cfg = copy.deepcopy(cfg)
    fields = flat_fields(cfg)
    given: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"'{item}': overrides are written key=value (for example optimizer.lr=0.05)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("+")
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{key}'{nearest(key, fields)}; "
                "'python cli.py show recipe=NAME' lists the keys"
            )
        if key in given:
            raise given_twice(key, given[key], raw)
        given[key] = raw
        obj, f, tp = fields[key]
        setattr(obj, f.name, parse_value(key, raw, tp, f))
    return cfg


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a config dataclass from :func:`to_dict` output (for resume checks and tuners)."""
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, data[f.name])
        else:
            kwargs[f.name] = data[f.name]
    return cls(**kwargs)


def diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two configs of one recipe."""
    fa, fb = flat_dict(a), flat_dict(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}

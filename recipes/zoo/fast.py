"""``fast``: an airbench-class network and training procedure for the shortest time to a good CIFAR-10 model.

Built from the published ideas (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024;
David Page, "How to train your ResNet", 2018), written in Keras:

- a first 2x2 convolution fixed to whiten the training patches (:class:`layers.PatchWhitening`), its
  bias trained for the first ``model.whiten_bias_epochs`` epochs only;
- three conv -> max-pool -> batch norm -> GELU -> conv -> batch norm -> GELU blocks without residuals,
  the convolutions initialised as partial identities (each filter ``i < in_channels`` starts as a copy
  of input channel ``i``), batch norm without a learned scale, a global max-pool and a bias-free linear
  head whose logits are scaled by ``model.logit_scale``;
- Nesterov SGD with airbench94's rate and weight decay converted to Keras's terms
  (:func:`airbench_hyperparameters`), Muon steps for the conv kernels (``optimizer.muon_lr``, from
  airbench94_muon), batch-norm shifts at ``optimizer.bias_lr_scale`` times the rate,
  a short warmup from a fraction of the peak and a linear decay, label smoothing 0.2, a lookahead of the
  weights (the run ends on the slow copy, with batch norm's statistics measured again for it:
  ``trainer.bn_refresh``);
- reflect-padded 2-pixel translations and flips that alternate per epoch; test-time augmentation over
  the mirror image and 1-pixel translations.

Each trick is a config switch (``model.whitening``, ``model.identity_init``, ``optimizer.bias_lr_scale``,
``optimizer.lookahead_every``, ``optimizer.muon_lr``, ``data.alternate_flip``, ``trainer.tta``...), so
every ablation is one override away. The default widths suit a CPU; ``model.width1=64 model.width2=256
model.width3=256`` are airbench94's. On a CPU, reach for ``trainer.budget=10min``: the run plans the
steps that fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from recipes.config import (
    BaseConfig,
    CallbacksConfig,
    DataConfig,
    LossConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainerConfig,
    kernel_l1,
    kernel_l2,
    kernel_max_norm,
    spec,
    sync_batch_norm,
)
from recipes.registry import register_recipe


@keras.saving.register_keras_serializable(package="recipes")
class PartialIdentity(keras.initializers.Initializer):
    """Conv kernels (kh, kw, in, out) whose first ``min(in, out)`` filters are identities (a 1 at the
    centre tap of their own input channel) and whose other filters come from ``base``."""

    def __init__(self, base="he_uniform", seed: int | None = None):
        self.base = keras.initializers.get(base)
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        weights = keras.ops.convert_to_numpy(self.base(shape, dtype="float32"))
        n = min(cin, cout)
        weights[:, :, :, :n] = 0.0
        weights[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        return keras.ops.convert_to_tensor(weights, dtype=dtype or "float32")

    def get_config(self) -> dict:
        return {"base": keras.initializers.serialize(self.base), "seed": self.seed}


@dataclass
class FastModelConfig:
    width1: int = spec(32, "channels of block 1 (airbench94: 64)", min=1, max=4_096)
    width2: int = spec(96, "channels of block 2 (airbench94: 256)", min=1, max=4_096)
    width3: int = spec(96, "channels of block 3 (airbench94: 256)", min=1, max=4_096)
    whitening: bool = spec(True, "first layer: frozen 2x2 patch-whitening conv (else a trained 2x2 conv)")
    whiten_eps: float = spec(5e-4, "whitening: added to the patch covariance's eigenvalues", min=0.0, max=1e6)
    whiten_bias_epochs: float = spec(
        3.0, "whitening: epochs during which its bias trains", min=0.0, max=100_000
    )
    identity_init: bool = spec(True, "start each 3x3 conv as a partial identity (else all random)")
    init_scale: float = spec(
        1 / 3,
        "variance scale of the convs' random filters (fan-in, uniform): 1/3 is PyTorch's default, as in "
        "airbench; 2 is He",
        min=0.0,
        max=100.0,
        min_exclusive=True,
    )
    bn_momentum: float = spec(0.6, "batch-norm moving-average momentum", min=0.0, max=0.9999)
    activation: str = spec(
        "gelu",
        "nonlinearity: exact GELU, its tanh approximation (within 1e-3 of it), ReLU or swish",
        choices=("gelu", "gelu_tanh", "relu", "swish"),
    )
    logit_scale: float = spec(
        0.111111, "the logits are multiplied by this", min=0.0, max=1e3, min_exclusive=True
    )
    l1: float = kernel_l1()
    l2: float = kernel_l2()
    max_norm: float = kernel_max_norm()
    sync_batch_norm: bool = sync_batch_norm()


def _data() -> DataConfig:
    return DataConfig(crop_padding=2, pad_mode="reflect", alternate_flip=True)


def airbench_hyperparameters(
    batch_size: int, lr: float = 11.5, weight_decay: float = 0.0153, momentum: float = 0.85
) -> dict[str, float]:
    """airbench94's hyperparameters as Keras SGD's, for batches of ``batch_size``.

    airbench states them per 1024 examples of a *summed* loss, with L2 decay added to the gradient (so it
    goes through Nesterov momentum, which multiplies a steady step by ``1 / (1 - momentum)``). Keras SGD
    averages the loss over the batch and decays decoupled, outside momentum: ``w -= lr * wd * w`` per step.
    Returns ``{"lr", "weight_decay"}`` giving the same step and the same steady decay per step.
    """
    kilostep = 1024 * (1 + 1 / (1 - momentum))  # airbench's normalisation of the step size
    keras_lr = lr / kilostep * batch_size  # per-example rate times the batch: a mean loss's rate
    decay_per_step = weight_decay * batch_size / kilostep / (1 - momentum)
    return {"lr": keras_lr, "weight_decay": decay_per_step / keras_lr}


def _optimizer() -> OptimizerConfig:
    # airbench94's lr 11.5, L2 0.0153 and momentum 0.85 in Keras's terms (lr 0.375, decoupled decay 8.9e-3
    # at batch 256; the rate scales with the batch, the decay does not). Batches of 256 run fastest on a
    # 2-core CPU.
    hyper = airbench_hyperparameters(256)
    return OptimizerConfig(
        lr=round(hyper["lr"], 6),
        momentum=0.85,
        nesterov=True,
        weight_decay=round(hyper["weight_decay"], 6),
        bias_lr_scale=64.0,
        lookahead_every=5,
        # Muon for the conv kernels (airbench94_muon's idea; its rate 0.24 is at batch 2,000): 0.085 was
        # the best of 0.03-0.24 at batch 256 and beat SGD in three of three 10-minute pairs (RESULTS.md).
        muon_lr=0.085,
    )


def _schedule() -> ScheduleConfig:
    # airbench's triangle: from 0.2x up to the peak at 23% of training, then down to 0.07x.
    return ScheduleConfig(name="linear", warmup_epochs=2.3, initial_lr_fraction=0.2, final_lr_fraction=0.07)


def _trainer() -> TrainerConfig:
    return TrainerConfig(epochs=10, batch_size=256, tta=True, tta_translate=1)


def _callbacks() -> CallbacksConfig:
    # The monitors cost little but the recipe is about time; they are one override away.
    return CallbacksConfig(
        dead_units=False,
        update_ratio=False,
        gradient_stats=False,
        clean_accuracy=False,
        first_layer_filters=False,
    )


@dataclass
class FastConfig(BaseConfig):
    model: FastModelConfig = field(default_factory=FastModelConfig)
    data: DataConfig = field(default_factory=_data)
    optimizer: OptimizerConfig = field(default_factory=_optimizer)
    schedule: ScheduleConfig = field(default_factory=_schedule)
    loss: LossConfig = field(default_factory=lambda: LossConfig(label_smoothing=0.2))
    callbacks: CallbacksConfig = field(default_factory=_callbacks)
    trainer: TrainerConfig = field(default_factory=_trainer)


def search_space(hp) -> dict:
    """keras-tuner hyperparameters over ``fast``'s config keys (rates on a log scale)."""
    return {
        "optimizer.lr": hp.Float("optimizer.lr", 0.1, 3.0, sampling="log", default=0.375),
        "optimizer.weight_decay": hp.Float(
            "optimizer.weight_decay", 1e-3, 5e-2, sampling="log", default=8.87e-3
        ),
        "optimizer.bias_lr_scale": hp.Choice("optimizer.bias_lr_scale", [1.0, 16.0, 64.0], default=64.0),
        "optimizer.muon_lr": hp.Choice("optimizer.muon_lr", [0.0, 0.05, 0.085, 0.15], default=0.085),
        "loss.label_smoothing": hp.Float("loss.label_smoothing", 0.0, 0.3, default=0.2),
    }


def _conv(filters: int, name: str, identity: bool, scale: float) -> keras.layers.Layer:
    base = keras.initializers.VarianceScaling(scale, mode="fan_in", distribution="uniform")
    init = PartialIdentity(base) if identity else base
    return keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init, name=name)


def _bn(momentum: float, name: str, sync: bool = False) -> keras.layers.Layer:
    return keras.layers.BatchNormalization(
        momentum=momentum, epsilon=1e-5, scale=False, synchronized=sync, name=name
    )


@register_recipe(
    "fast",
    "airbench-class net: patch whitening, no residuals, lookahead, alternating flip, TTA; use trainer.budget",
    FastConfig,
    search_space=search_space,
    train_callbacks=lambda cfg, scale: train_callbacks(cfg, scale),
)
def build_model(cfg: FastConfig, stats: dict) -> keras.Model:
    from layers import PatchWhitening, adapt_whitening, get_activation

    m = cfg.model
    activation = get_activation(m.activation)
    inputs = keras.Input(shape=stats["input_shape"], name="image")
    x = keras.layers.Normalization(mean=stats["mean"], variance=stats["variance"], name="normalize")(inputs)
    channels = stats["input_shape"][-1]
    if m.whitening:
        x = PatchWhitening(2, eps=m.whiten_eps, name="whiten")(x)
    else:
        x = keras.layers.Conv2D(2 * 4 * channels, 2, padding="valid", name="whiten")(x)
    x = keras.layers.Activation(activation, name="whiten_act")(x)
    for i, width in enumerate((m.width1, m.width2, m.width3), start=1):
        x = _conv(width, f"block{i}_conv1", m.identity_init, m.init_scale)(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        x = _bn(m.bn_momentum, f"block{i}_bn1", m.sync_batch_norm)(x)
        x = keras.layers.Activation(activation, name=f"block{i}_act1")(x)
        x = _conv(width, f"block{i}_conv2", m.identity_init, m.init_scale)(x)
        x = _bn(m.bn_momentum, f"block{i}_bn2", m.sync_batch_norm)(x)
        x = keras.layers.Activation(activation, name=f"block{i}_act2")(x)
    x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    x = keras.layers.Dense(stats["num_classes"], use_bias=False, dtype="float32", name="head")(x)
    outputs = keras.layers.Rescaling(m.logit_scale, dtype="float32", name="logits")(x)
    model = keras.Model(inputs, outputs, name="fast")
    if m.whitening and stats.get("images") is not None:
        adapt_whitening(model, stats["images"])
    return model


def train_callbacks(cfg: FastConfig, epoch_scale: float = 1.0) -> list[keras.callbacks.Callback]:
    """The whitening bias trains for ``model.whiten_bias_epochs`` (stretched with the schedule)."""
    if not cfg.model.whitening:
        return []
    return [WhiteningBiasFreeze(cfg.model.whiten_bias_epochs * epoch_scale)]


class WhiteningBiasFreeze(keras.callbacks.Callback):
    """Stop training the whitening layers' biases at the start of epoch ``after_epochs`` (may be
    fractional: the cut-off then falls in the middle of an epoch, checked at epoch starts only, so it
    rounds up to the next epoch)."""

    def __init__(self, after_epochs: float):
        super().__init__()
        self.after_epochs = after_epochs

    def on_epoch_begin(self, epoch, logs=None):
        from layers import PatchWhitening

        gate = 0.0 if epoch >= self.after_epochs else 1.0
        for layer in self.model.layers:
            if isinstance(layer, PatchWhitening):
                layer.bias_gate.assign(gate)

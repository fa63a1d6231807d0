"""``resnet_small``: a CIFAR ResNet of the ResNet-20 family (He et al. 2016, section 4.2).

Three stages of ``depth_blocks`` basic residual blocks (3x3 conv - BN - ReLU - 3x3 conv - BN, identity
shortcut, 1x1 projection when the shape changes) at widths ``width``, ``2*width``, ``4*width``, then global
average pooling and a linear classifier. ``depth_blocks=3, width=16`` is ResNet-20 (0.27 M parameters).
Trained with Nesterov SGD, decoupled weight decay, linear warmup then cosine decay, label smoothing and
crop + flip augmentation. The model starts with its own normalisation layer, so it takes raw 0-255 images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras

from recipes.config import (
    BaseConfig,
    LossConfig,
    ScheduleConfig,
    TrainerConfig,
    kernel_l1,
    kernel_l2,
    kernel_max_norm,
    spec,
    sync_batch_norm,
)
from recipes.registry import register_recipe


@dataclass
class ResNetModelConfig:
    depth_blocks: int = spec(3, "residual blocks per stage (3 -> ResNet-20, 5 -> ResNet-32)", min=1, max=200)
    width: int = spec(16, "channels of the first stage (then 2x, 4x)", min=1, max=1_024)
    activation: str = spec("relu", "nonlinearity", choices=("relu", "leaky_relu", "elu", "gelu", "swish"))
    stochastic_depth: float = spec(
        1.0,
        "survival probability of the last block (linear rule; 1 = off)",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    l1: float = kernel_l1()
    l2: float = kernel_l2()
    max_norm: float = kernel_max_norm()
    sync_batch_norm: bool = sync_batch_norm()


@dataclass
class ResNetSmallConfig(BaseConfig):
    model: ResNetModelConfig = field(default_factory=ResNetModelConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(label_smoothing=0.1))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_epochs=2.0))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(tta=True))


def _activation(name: str, label: str) -> keras.layers.Layer:
    if name == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=0.1, name=label)
    if name == "relu":
        return keras.layers.ReLU(name=label)
    return keras.layers.Activation(name, name=label)


def _conv(filters: int, kernel: int, stride: int, name: str) -> keras.layers.Layer:
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _bn(name: str, sync: bool = False) -> keras.layers.Layer:
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=sync, name=name)


def survival_probabilities(num_blocks: int, final: float) -> list[float]:
    """Linear decay rule (Huang et al. 2016): 1 before the first block down to ``final`` at the last."""
    from layers import linear_survival_probabilities

    return linear_survival_probabilities(num_blocks, final)


def search_space(hp) -> dict:
    """keras-tuner hyperparameters over resnet_small's own config keys (rates on a log scale)."""
    return {
        "optimizer.lr": hp.Float("optimizer.lr", 1e-2, 1.0, sampling="log", default=0.1),
        "optimizer.weight_decay": hp.Float(
            "optimizer.weight_decay", 1e-4, 1e-1, sampling="log", default=5e-3
        ),
        "optimizer.momentum": hp.Float("optimizer.momentum", 0.8, 0.95, default=0.9),
        "schedule.warmup_epochs": hp.Float("schedule.warmup_epochs", 0.0, 5.0, default=2.0),
        "loss.label_smoothing": hp.Float("loss.label_smoothing", 0.0, 0.2, default=0.1),
        "model.width": hp.Choice("model.width", [8, 16, 32], default=16),
    }


@register_recipe(
    "resnet_small",
    "CIFAR ResNet-20 family: SGD+Nesterov, warmup+cosine, label smoothing, crop+flip, 30 epochs",
    ResNetSmallConfig,
    search_space=search_space,
)
def build_model(cfg: ResNetSmallConfig, stats: dict) -> keras.Model:
    m = cfg.model
    inputs = keras.Input(shape=stats["input_shape"], name="image")
    x = keras.layers.Normalization(mean=stats["mean"], variance=stats["variance"], name="normalize")(inputs)
    x = _conv(m.width, 3, 1, "stem_conv")(x)
    x = _bn("stem_bn", m.sync_batch_norm)(x)
    x = _activation(m.activation, "stem_act")(x)
    num_blocks = 3 * m.depth_blocks
    survival = survival_probabilities(num_blocks, m.stochastic_depth)
    block = 0
    for stage in range(3):
        filters = m.width * 2**stage
        for i in range(m.depth_blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            name = f"stage{stage + 1}_block{i + 1}"
            shortcut = x
            y = _conv(filters, 3, stride, f"{name}_conv1")(x)
            y = _bn(f"{name}_bn1", m.sync_batch_norm)(y)
            y = _activation(m.activation, f"{name}_act1")(y)
            y = _conv(filters, 3, 1, f"{name}_conv2")(y)
            y = _bn(f"{name}_bn2", m.sync_batch_norm)(y)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = _conv(filters, 1, stride, f"{name}_proj")(shortcut)
                shortcut = _bn(f"{name}_proj_bn", m.sync_batch_norm)(shortcut)
            if survival[block] < 1.0:
                from layers import StochasticDepth

                x = StochasticDepth(survival[block], name=f"{name}_drop")([shortcut, y])
            else:
                x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
            x = _activation(m.activation, f"{name}_act2")(x)
            block += 1
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    # A zero classifier starts at uniform predictions, so the initial loss is exactly ln(C) (the lecture's
    # first sanity check); its gradient is not zero, so it learns from the first step.
    outputs = keras.layers.Dense(
        stats["num_classes"], kernel_initializer="zeros", dtype="float32", name="logits"
    )(x)  # float32 logits under mixed precision
    return keras.Model(inputs, outputs, name="resnet_small")

"""``mlp`` and ``mlp_dropconnect``: the lecture's fully connected baselines on flattened CIFAR-10.

``model.activation`` and ``model.init`` make the lecture's comparisons one override away, for example
``python cli.py run recipe=mlp model.activation=tanh model.init=small_random`` shows activations
collapsing, and ``model.activation=maxout`` trains Maxout units. ``model.init=auto`` (the default) follows
the notes: Xavier for tanh and sigmoid (and maxout), He for the ReLU family. ``mlp_dropconnect`` replaces
each hidden Dense layer with ``layers.DropConnect``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras

from recipes.config import (
    BaseConfig,
    DataConfig,
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

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "tanh", "sigmoid", "maxout")
INITS = ("auto", "small_random", "xavier", "he")
# model.init=auto: Xavier (Glorot) keeps the scale of a layer whose nonlinearity has slope 1 at zero and
# is odd (tanh; sigmoid, as near as it gets); He doubles the variance for the ReLU family, which zeroes half
# of its inputs. A 2-piece maxout unit keeps the second moment of its (Gaussian) pre-activations, as tanh
# does near zero, so it gets Xavier too: He would double the scale at every layer.
XAVIER_ACTIVATIONS = ("tanh", "sigmoid", "maxout")
# What the search leaves out unless space.model.activation=... / space.model.init=... asks for it: the notes
# advise against sigmoid (saturates, not zero-centred) and small random weights (activations collapse with
# depth); auto pairs each activation with its init, so xavier and he would only add mismatched pairs.
SEARCH_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "sigmoid")
SEARCH_INITS = ("auto",)


@dataclass
class MLPModelConfig:
    depth: int = spec(2, "hidden layers", min=1, max=1_000)
    width: int = spec(512, "units per hidden layer", min=1, max=65_536)
    activation: str = spec("relu", "hidden nonlinearity", choices=ACTIVATIONS)
    init: str = spec(
        "auto",
        "hidden weights: auto (xavier for tanh, sigmoid and maxout; he for the ReLU family), "
        "small_random (N(0, 0.01^2)), xavier (Glorot normal), he (He normal)",
        choices=INITS,
    )
    maxout_pieces: int = spec(2, "pieces per Maxout unit (activation=maxout)", min=2, max=64)
    dropout: float = spec(0.0, "dropout after each hidden layer", min=0.0, max=0.95)
    batch_norm: bool = spec(False, "batch normalisation before each hidden nonlinearity")
    sync_batch_norm: bool = sync_batch_norm()
    l1: float = kernel_l1()
    l2: float = kernel_l2()
    max_norm: float = kernel_max_norm()


@dataclass
class DropConnectModelConfig(MLPModelConfig):
    drop_rate: float = spec(0.5, "DropConnect: probability of dropping each hidden weight", min=0.0, max=0.95)


def _no_augment() -> DataConfig:
    return DataConfig(augment=False)  # flattened pixels: the lecture's baseline trains without augmentation


def _sgd() -> OptimizerConfig:
    return OptimizerConfig(lr=0.01, weight_decay=1e-4)


def _no_warmup() -> ScheduleConfig:
    return ScheduleConfig(warmup_epochs=0.0)


def _twenty_epochs() -> TrainerConfig:
    return TrainerConfig(epochs=20)


@dataclass
class MLPConfig(BaseConfig):
    model: MLPModelConfig = field(default_factory=MLPModelConfig)
    data: DataConfig = field(default_factory=_no_augment)
    optimizer: OptimizerConfig = field(default_factory=_sgd)
    schedule: ScheduleConfig = field(default_factory=_no_warmup)
    trainer: TrainerConfig = field(default_factory=_twenty_epochs)


@dataclass
class MLPDropConnectConfig(MLPConfig):
    model: DropConnectModelConfig = field(default_factory=DropConnectModelConfig)


def initializer(
    name: str, seed: int | None = None, activation: str = "relu"
) -> keras.initializers.Initializer:
    """The hidden layers' kernel initializer; ``auto`` picks by ``activation`` (``XAVIER_ACTIVATIONS``)."""
    if name == "auto":
        name = "xavier" if activation in XAVIER_ACTIVATIONS else "he"
    if name == "small_random":
        return keras.initializers.RandomNormal(stddev=0.01, seed=seed)
    if name == "xavier":
        return keras.initializers.GlorotNormal(seed=seed)
    return keras.initializers.HeNormal(seed=seed)


def _nonlinearity(name: str, label: str) -> keras.layers.Layer:
    if name == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=0.01, name=label)
    if name == "prelu":
        return keras.layers.PReLU(name=label)
    if name == "relu":
        return keras.layers.ReLU(name=label)
    return keras.layers.Activation(name, name=label)


def build_mlp(cfg, stats: dict, *, drop_rate: float | None = None) -> keras.Model:
    from layers import DropConnect, Maxout

    m = cfg.model
    inputs = keras.Input(shape=stats["input_shape"], name="image")
    x = keras.layers.Normalization(mean=stats["mean"], variance=stats["variance"], name="normalize")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in range(1, m.depth + 1):
        init = initializer(m.init, activation=m.activation)
        if m.activation == "maxout":
            x = Maxout(m.width, pieces=m.maxout_pieces, kernel_initializer=init, name=f"maxout{i}")(x)
        else:
            if drop_rate is None:
                x = keras.layers.Dense(m.width, kernel_initializer=init, name=f"dense{i}")(x)
            else:
                x = DropConnect(m.width, rate=drop_rate, kernel_initializer=init, name=f"dropconnect{i}")(x)
            if m.batch_norm:
                x = keras.layers.BatchNormalization(synchronized=m.sync_batch_norm, name=f"bn{i}")(x)
            x = _nonlinearity(m.activation, f"{m.activation}{i}")(x)
        if m.dropout > 0:
            x = keras.layers.Dropout(m.dropout, name=f"dropout{i}")(x)
    # model.init is about the hidden layers; the classifier starts at zero so that the initial loss is ln(C)
    outputs = keras.layers.Dense(
        stats["num_classes"], kernel_initializer="zeros", dtype="float32", name="logits"
    )(x)  # float32 logits under mixed precision
    return keras.Model(inputs, outputs, name="mlp")


def search_space(hp) -> dict:
    """keras-tuner hyperparameters over the mlp's own config keys (rates on a log scale).

    Leaves out sigmoid and the other inits (``SEARCH_ACTIVATIONS``, ``SEARCH_INITS``); a search brings any
    value of the key back with ``space.model.activation=relu,sigmoid`` or ``space.model.init=auto,he``.
    """
    return {
        "optimizer.lr": hp.Float("optimizer.lr", 1e-4, 1e-1, sampling="log", default=0.01),
        "optimizer.weight_decay": hp.Float(
            "optimizer.weight_decay", 1e-6, 1e-2, sampling="log", default=1e-4
        ),
        "optimizer.momentum": hp.Float("optimizer.momentum", 0.5, 0.95, default=0.9),
        "model.activation": hp.Choice("model.activation", list(SEARCH_ACTIVATIONS), default="relu"),
        "model.init": hp.Choice("model.init", list(SEARCH_INITS), default="auto"),
        "model.dropout": hp.Float("model.dropout", 0.0, 0.5, default=0.0),
    }


@register_recipe(
    "mlp",
    "fully connected baseline on flattened images; model.activation, model.init "
    "and model.dropout for the lecture's comparisons",
    MLPConfig,
    search_space=search_space,
)
def build_model(cfg, stats: dict) -> keras.Model:
    return build_mlp(cfg, stats)


@register_recipe(
    "mlp_dropconnect",
    "the mlp with DropConnect hidden layers (model.drop_rate)",
    MLPDropConnectConfig,
    search_space=search_space,
)
def build_dropconnect_model(cfg, stats: dict) -> keras.Model:
    return build_mlp(cfg, stats, drop_rate=cfg.model.drop_rate)

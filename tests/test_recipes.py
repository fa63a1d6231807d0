"""Every recipe trains one epoch on a few hundred real images and writes its run directory."""

import json

import keras
import pytest

from recipes import run

SMOKE = [
    "data.name=sample",
    "data.train_limit=256",
    "data.val_size=100",
    "trainer.batch_size=64",
    "trainer.epochs=1",
    "trainer.verbose=silent",
]


@pytest.mark.parametrize(
    "recipe, overrides",
    [
        ("mlp", ["model.width=64"]),
        ("mlp", ["model.width=64", "model.activation=maxout", "model.init=xavier"]),
        ("mlp", ["model.width=32", "model.activation=prelu", "model.init=small_random", "model.dropout=0.2"]),
        ("mlp_dropconnect", ["model.width=64", "model.drop_rate=0.3"]),
        ("mlp", ["model.width=64", "trainer.precision=mixed_bfloat16", "trainer.jit_compile=false"]),
        (
            "resnet_small",
            [
                "model.width=4",
                "model.depth_blocks=2",
                "model.stochastic_depth=0.5",
                "model.activation=leaky_relu",
                "data.cutout=8",
            ],
        ),
    ],
)
def test_recipe_trains_one_epoch(tmp_path, recipe, overrides):
    result = run(recipe, [*SMOKE, *overrides, f"trainer.out_dir={tmp_path}"], echo=lambda *a: None)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 1
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (tmp_path / "model.keras").exists() and (tmp_path / "history.csv").exists()
    assert result.metrics == metrics
    assert keras.mixed_precision.global_policy().name == "float32"  # a run leaves the policy as it was


def test_stochastic_depth_uses_the_linear_rule(tmp_path):
    from layers import StochasticDepth
    from recipes.registry import get_recipe

    recipe = get_recipe("resnet_small")
    cfg = recipe.config(["model.depth_blocks=2", "model.stochastic_depth=0.5", "model.width=4"])
    stats = {"mean": [0.0] * 3, "variance": [1.0] * 3, "num_classes": 10, "input_shape": (32, 32, 3)}
    model = recipe.build_model(cfg, stats)
    probs = [layer.survival_probability for layer in model.layers if isinstance(layer, StochasticDepth)]
    assert probs == pytest.approx([1 - (i + 1) / 6 * 0.5 for i in range(6)])


def test_mlp_initialisations_have_the_documented_scale():
    import numpy as np

    from recipes.registry import get_recipe

    recipe = get_recipe("mlp")
    stats = {"mean": [0.0] * 3, "variance": [1.0] * 3, "num_classes": 10, "input_shape": (32, 32, 3)}
    fan_in = 32 * 32 * 3
    xavier, he = (2 / (fan_in + 512)) ** 0.5, (2 / fan_in) ** 0.5
    for init, activation, expected in [
        ("small_random", "relu", 0.01),
        ("xavier", "relu", xavier),
        ("he", "tanh", he),
        ("auto", "relu", he),  # model.init=auto, the default: He for the ReLU family
        ("auto", "elu", he),
        ("auto", "tanh", xavier),  # Xavier for tanh and sigmoid
        ("auto", "sigmoid", xavier),
    ]:
        cfg = recipe.config([f"model.init={init}", f"model.activation={activation}"])
        model = recipe.build_model(cfg, stats)
        std = float(np.std(model.get_layer("dense1").kernel.numpy()))
        assert std == pytest.approx(expected, rel=0.05), (init, activation)
    # maxout gets Xavier too: its kernel has width * pieces = 1024 columns
    model = recipe.build_model(recipe.config(["model.activation=maxout"]), stats)
    std = float(np.std(model.get_layer("maxout1").kernel.numpy()))
    assert std == pytest.approx((2 / (fan_in + 1024)) ** 0.5, rel=0.05)
    assert recipe.config([]).model.init == "auto"

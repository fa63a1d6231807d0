"""Compute accounting: multiply-accumulates counted by hand, and the published figures of known nets."""

from __future__ import annotations

import keras
import pytest

from layers import Maxout, PatchWhitening
from recipes.engine.compute import forward_macs, layer_macs, train_flops_per_example
from recipes.registry import get_recipe

STATS = {"mean": [0.0] * 3, "variance": [1.0] * 3, "num_classes": 10, "input_shape": (32, 32, 3)}


def test_each_kind_of_kernel_is_counted_at_its_positions():
    inputs = keras.Input((5, 5, 2))
    x = keras.layers.Conv2D(8, 3, padding="same", name="same")(inputs)  # 5x5 outputs x 3x3x2x8
    x = keras.layers.Conv2D(4, 3, strides=2, name="strided")(x)  # 2x2 outputs x 3x3x8x4
    x = PatchWhitening(2, name="whiten")(x)  # 1x1 output x 2x2x4x32
    x = keras.layers.Flatten()(x)
    x = Maxout(3, pieces=2, name="maxout")(x)  # 32 inputs x 6 affine maps
    seq = keras.layers.Reshape((3, 1))(x)
    y = keras.layers.Dense(5, name="per_position")(seq)  # 3 positions x 1x5
    y = keras.layers.BatchNormalization()(y)  # element-wise: not counted
    model = keras.Model(inputs, y)
    assert layer_macs(model) == {
        "same": 25 * 9 * 2 * 8,
        "strided": 4 * 9 * 8 * 4,
        "whiten": 1 * 4 * 4 * 32,
        "maxout": 32 * 6,
        "per_position": 3 * 5,
    }
    assert train_flops_per_example(model) == 6 * forward_macs(model)


def test_a_transposed_convolution_is_counted_at_its_input_positions():
    inputs = keras.Input((3, 3, 2))
    model = keras.Model(inputs, keras.layers.Conv2DTranspose(4, 3, strides=2, name="up")(inputs))
    assert model.output.shape[1:3] == (7, 7)  # each of the 9 input pixels scatters a 3x3x4 patch
    assert forward_macs(model) == 9 * 3 * 3 * 2 * 4


def test_nested_models_are_counted():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    assert forward_macs(model) == 4 * 3 + 3 * 2


def test_resnet20_costs_the_41_million_macs_usually_quoted():
    cfg = get_recipe("resnet_small").config(["model.width=16", "model.depth_blocks=3"])
    model = get_recipe("resnet_small").build_model(cfg, STATS)
    stem = 32 * 32 * 9 * 3 * 16
    stage1 = 6 * 32 * 32 * 9 * 16 * 16
    # each later stage: its strided conv, 5 more convs, the 1x1 shortcut
    stage2 = 16 * 16 * 9 * 16 * 32 + 5 * 16 * 16 * 9 * 32 * 32 + 16 * 16 * 16 * 32
    stage3 = 8 * 8 * 9 * 32 * 64 + 5 * 8 * 8 * 9 * 64 * 64 + 8 * 8 * 32 * 64
    assert forward_macs(model) == stem + stage1 + stage2 + stage3 + 64 * 10 == 40_813_184


def test_airbench94_widths_cost_the_published_pflops():
    # Jordan (2024): airbench94 trains for 9.9 epochs of 50,000 images in 0.36 PFLOP.
    recipe = get_recipe("fast")
    cfg = recipe.config(["model.width1=64", "model.width2=256", "model.width3=256"])
    model = recipe.build_model(cfg, STATS)
    assert train_flops_per_example(model) * 50_000 * 9.9 == pytest.approx(0.36e15, rel=0.05)


def test_a_model_without_defined_shapes_is_refused_with_the_fix():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))

    class Bare(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layer

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="keras.Input"):
        forward_macs(Bare())

"""``model.l1``, ``model.l2`` and ``model.max_norm`` (apply_kernel_penalties) against penalties and
rescalings computed by hand in NumPy; ``model.batch_norm`` of the mlp."""

import keras
import numpy as np
import pytest

from recipes.engine.training import apply_kernel_penalties, build_training
from recipes.registry import get_recipe

EPS = 1e-7  # keras.backend.epsilon(), in MaxNorm's denominator


def _dense_model() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, name="hidden"), keras.layers.Dense(2, name="out")]
    )
    model.get_layer("hidden").kernel.assign([[1.0, -2.0], [0.5, 0.0], [-3.0, 4.0]])
    model.get_layer("out").kernel.assign([[0.25, -1.5], [2.0, 1.0]])
    for layer in model.layers:
        layer.bias.assign([7.0, -7.0])  # biases carry no penalty: a big one would show
    return model


def _penalty(kernels, l1, l2) -> float:
    return sum(l1 * np.abs(w).sum() + l2 * np.square(w).sum() for w in kernels)


def test_model_losses_hold_the_exact_penalty_of_the_kernels():
    model = _dense_model()
    kernels = [np.array(layer.kernel) for layer in model.layers]
    paths = apply_kernel_penalties(model, l1=0.01, l2=0.003)
    assert paths == [layer.kernel.path for layer in model.layers]
    assert len(model.losses) == 2  # one per kernel, none for the biases
    # hidden: |W| sums to 10.5, W^2 to 30.25; out: 4.75 and 7.3125
    expected = 0.01 * (10.5 + 4.75) + 0.003 * (30.25 + 7.3125)
    assert expected == pytest.approx(_penalty(kernels, 0.01, 0.003))
    assert float(sum(keras.ops.convert_to_numpy(x) for x in model.losses)) == pytest.approx(
        expected, rel=1e-6
    )


def test_the_penalty_drives_the_training_step():
    # a data loss whose gradient is zero: one SGD step moves each kernel by -lr * (l1 sign(W) + 2 l2 W)
    lr, l1, l2 = 0.1, 0.01, 0.003
    model = _dense_model()
    kernels = [np.array(layer.kernel) for layer in model.layers]
    apply_kernel_penalties(model, l1=l1, l2=l2)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=lambda y, p: 0.0 * keras.ops.sum(p, axis=-1))
    model.fit(np.ones((1, 3)), np.zeros((1, 2)), epochs=1, batch_size=1, verbose=0)
    for layer, w in zip(model.layers, kernels):
        expected = w - lr * (l1 * np.sign(w) + 2 * l2 * w)
        np.testing.assert_allclose(np.array(layer.kernel), expected, rtol=1e-6)
        np.testing.assert_array_equal(np.array(layer.bias), [7.0, -7.0])


def test_max_norm_rescales_each_units_incoming_weights_after_the_step():
    # loss = the sum of the outputs, so for the input x the step moves every column of the kernel by -lr x
    lr, limit = 0.5, 1.0
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, use_bias=False, name="d")])
    w = np.array([[3.0, 0.1, 0.0], [0.0, 0.2, 2.0], [4.0, 0.1, 0.0]], np.float32)  # column norms 5, 0.24, 2
    model.get_layer("d").kernel.assign(w)
    apply_kernel_penalties(model, max_norm=limit)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=lambda y, p: keras.ops.sum(p, axis=-1))
    x = np.array([[0.2, -0.4, 0.1]], np.float32)
    model.fit(x, np.zeros((1, 3)), epochs=1, batch_size=1, verbose=0)
    stepped = w - lr * x.T  # (3, 1) broadcast over the three columns
    norms = np.sqrt((stepped**2).sum(axis=0))
    expected = stepped * np.minimum(norms, limit) / (norms + EPS)
    got = np.array(model.get_layer("d").kernel)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.linalg.norm(got, axis=0) <= limit + 1e-6)
    assert np.linalg.norm(got[:, 1]) == pytest.approx(norms[1], rel=1e-5)  # within the limit: kept


def test_max_norm_of_a_convolution_bounds_each_whole_filter():
    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(3, 2, use_bias=False, name="c")])
    apply_kernel_penalties(model, max_norm=0.5)
    kernel = model.get_layer("c").kernel
    assert kernel.constraint.axis == [0, 1, 2]
    w = np.random.default_rng(0).normal(size=(2, 2, 2, 3)).astype(np.float32)
    out = np.array(kernel.constraint(w))
    norms = np.sqrt((w**2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(out, w * np.minimum(norms, 0.5) / (norms + EPS), rtol=1e-5)


def test_zero_leaves_the_kernels_alone():
    model = _dense_model()
    apply_kernel_penalties(model)
    assert model.losses == [] and all(layer.kernel.constraint is None for layer in model.layers)


def _tiny_data():
    from recipes.data import ImageData

    rng = np.random.default_rng(0)

    def images(n):
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)

    (xt, yt), (xv, yv), (xs, ys) = images(64), images(10), images(10)
    return ImageData(xt, yt, xv, yv, xs, ys, [str(i) for i in range(10)], "random")


SMALL = {
    "mlp": ["model.width=8", "model.depth=2"],
    "mlp_dropconnect": ["model.width=8", "model.depth=1"],
    "resnet_small": ["model.width=4", "model.depth_blocks=1"],
    "fast": ["model.width1=4", "model.width2=4", "model.width3=4"],
}


@pytest.mark.parametrize(
    "recipe, extra",
    [(name, []) for name in SMALL] + [("mlp", ["model.activation=maxout"])],
    ids=[*SMALL, "mlp-maxout"],
)
def test_every_recipe_penalises_and_bounds_all_its_trainable_kernels(recipe, extra):
    r = get_recipe(recipe)
    cfg = r.config([*SMALL[recipe], *extra, "model.l1=0.001", "model.l2=0.0005", "model.max_norm=3"])
    model = build_training(r, cfg, _tiny_data(), datasets=False, monitors=False).model
    kernels = [
        layer.kernel
        for layer in model._flatten_layers(include_self=False)
        if isinstance(getattr(layer, "kernel", None), keras.Variable) and layer.kernel.trainable
    ]
    assert len(kernels) >= 2
    # the penalty covers exactly the trainable kernels (a frozen whitening kernel is not one)
    penalised = {v.path for v in model.trainable_weights if v.regularizer is not None}
    assert penalised == {k.path for k in kernels}
    total = float(sum(keras.ops.convert_to_numpy(x) for x in model.losses))
    assert total == pytest.approx(_penalty([np.array(k) for k in kernels], 0.001, 0.0005), rel=1e-5)
    for kernel in kernels:
        assert kernel.constraint.max_value == 3.0
        assert kernel.constraint.axis == list(range(len(kernel.shape) - 1))


def test_the_defaults_add_no_penalty():
    r = get_recipe("mlp")
    model = build_training(r, r.config(SMALL["mlp"]), _tiny_data(), datasets=False, monitors=False).model
    assert model.losses == []
    assert all(v.constraint is None for v in model.trainable_weights)


@pytest.mark.parametrize("recipe", list(SMALL))
def test_every_recipe_declares_the_three_keys_off_by_default(recipe):
    m = get_recipe(recipe).config().model
    assert (m.l1, m.l2, m.max_norm) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("depth", [1, 3])
def test_mlp_batch_norm_adds_one_batch_normalization_per_hidden_layer(depth):
    r = get_recipe("mlp")
    stats = {"mean": [0.0] * 3, "variance": [1.0] * 3, "num_classes": 10, "input_shape": (32, 32, 3)}

    def batch_norms(flag):
        cfg = r.config([f"model.depth={depth}", "model.width=8", f"model.batch_norm={flag}"])
        model = r.build_model(cfg, stats)
        return [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]

    assert batch_norms("true") == [f"bn{i}" for i in range(1, depth + 1)]
    assert batch_norms("false") == []
    # each sits between its Dense layer and the nonlinearity
    cfg = r.config([f"model.depth={depth}", "model.width=8", "model.batch_norm=true"])
    names = [layer.name for layer in r.build_model(cfg, stats).layers]
    for i in range(1, depth + 1):
        assert names.index(f"dense{i}") + 1 == names.index(f"bn{i}") == names.index(f"relu{i}") - 1

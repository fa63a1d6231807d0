"""The babysitting checklist: sound set-ups pass, each deliberately broken one fails the right check."""

import json

import keras
import numpy as np
import pytest

import cli
from recipes.diagnostics import checks
from recipes.diagnostics.checklist import run_checks
from tests.test_gradcheck import WrongGradient

SAMPLE = ["data.name=sample", "data.val_size=100"]


def _data(n=64, classes=10, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    y = keras.ops.convert_to_numpy(keras.ops.one_hot(rng.integers(0, classes, n), classes))
    return x, y


def _mlp(final_softmax=False, init="he_normal", activation="relu", depth=2, head="zeros"):
    inputs = keras.Input((20,))
    x = inputs
    for i in range(depth):
        x = keras.layers.Dense(64, activation=activation, kernel_initializer=init, name=f"h{i}")(x)
    x = keras.layers.Dense(10, kernel_initializer=head, name="logits")(x)
    if final_softmax:
        x = keras.layers.Softmax()(x)
    return keras.Model(inputs, x)


# resnet_small as ResNet-8 at width 8: the same recipe code and checks, a third of the default's 90 s
@pytest.mark.parametrize(
    "recipe, extra", [("mlp", []), ("resnet_small", ["model.width=8", "model.depth_blocks=1"])]
)
def test_default_recipes_pass(tmp_path, recipe, extra):
    results, out_dir = run_checks(
        recipe, [*SAMPLE, *extra, f"trainer.out_dir={tmp_path}"], echo=lambda *a: None
    )
    by_name = {r.name: r for r in results}
    assert [r.status for r in results if r.status == checks.FAIL] == []
    assert by_name["initial loss"].status == checks.PASS
    assert by_name["initial loss"].details["initial_loss"] == pytest.approx(np.log(10), abs=0.05)
    assert by_name["overfit tiny subset"].status == checks.PASS
    report = json.loads((out_dir / "check.json").read_text())
    assert report["passed"] is True and len(report["results"]) == 7
    assert (out_dir / "lr_range.png").exists() and (out_dir / "activations.png").exists()


def test_huge_learning_rate_fails_the_overfit_check_and_the_exit_code(tmp_path, capsys):
    code = cli.main(
        ["check", "recipe=mlp", *SAMPLE, "optimizer.lr=1000", "model.width=64", f"trainer.out_dir={tmp_path}"]
    )
    out = capsys.readouterr().out
    assert code == 1
    report = json.loads((tmp_path / "check.json").read_text())
    overfit = next(r for r in report["results"] if r["name"] == "overfit tiny subset")
    assert overfit["status"] == "FAIL" and "too high" in overfit["advice"]
    assert "FAILED: overfit tiny subset" in out


def test_extra_softmax_on_a_from_logits_loss_fails_the_initial_loss_check():
    x, y = _data()
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    good = checks.check_initial_loss(_mlp(), loss, x, y, 10)
    assert good.status == checks.PASS and good.message.startswith("2.30 (expected 2.30 for 10 classes)")
    bad = checks.check_initial_loss(_mlp(final_softmax=True, head="he_normal"), loss, x, y, 10)
    assert bad.status == checks.FAIL and "softmax is applied twice" in bad.advice


def test_large_output_weights_fail_the_initial_loss_check():
    x, y = _data()
    model = _mlp(head=keras.initializers.RandomNormal(stddev=3.0, seed=1))
    result = checks.check_initial_loss(
        model, keras.losses.CategoricalCrossentropy(from_logits=True), x, y, 10
    )
    assert result.status == checks.FAIL and result.details["initial_loss"] > 4


def test_tiny_init_collapses_activations():
    x, _ = _data(256)
    small = keras.initializers.RandomNormal(stddev=0.01, seed=0)
    result = checks.check_activations(_mlp(init=small, activation="tanh", depth=5), x)
    assert result.status == checks.FAIL and "collapse" in result.message and "Xavier" in result.advice
    assert checks.check_activations(_mlp(init="he_normal", depth=5), x).status == checks.PASS


def test_sigmoid_stack_with_large_init_saturates():
    x, _ = _data(256)
    large = keras.initializers.RandomNormal(stddev=2.0, seed=0)
    result = checks.check_activations(_mlp(init=large, activation="sigmoid", depth=4), x)
    assert result.status == checks.FAIL and "saturate" in result.message


def test_wrong_hand_written_gradient_fails_the_gradient_check():
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(5)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(WrongGradient(name="cube")(hidden)))
    result = checks.check_gradients(model)
    assert result.status == checks.FAIL and "'cube'" in result.advice


def test_custom_layers_of_a_recipe_pass_the_gradient_check():
    from layers import StochasticDepth

    a, b = keras.Input((4, 4, 3)), keras.Input((4, 4, 3))
    model = keras.Model([a, b], StochasticDepth(0.5)([a, b]))
    assert checks.check_gradients(model).status == checks.PASS


def test_weight_decay_that_never_reaches_the_kernels_fails():
    x, y = _data()
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)

    def optimizer(wd):
        opt = keras.optimizers.SGD(0.01, weight_decay=wd or None)
        opt.exclude_from_weight_decay(var_names=["kernel", "bias"])  # a mistake: nothing decays
        return opt

    result = checks.check_regularisation(lambda: _mlp(head="he_normal"), optimizer, loss, x, y, 1e-3)
    assert result.status == checks.FAIL and "does not reach the kernels" in result.advice
    fine = checks.check_regularisation(
        lambda: _mlp(head="he_normal"),
        lambda wd: keras.optimizers.SGD(0.01, weight_decay=wd or None),
        loss,
        x,
        y,
        1e-3,
    )
    assert fine.status == checks.PASS and fine.details["loss_with"] > fine.details["loss_without"]

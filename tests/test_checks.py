"""The babysitting checklist: sound set-ups pass, each deliberately broken one fails the right check."""

import json
import math

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
    # with a random classifier too: the hidden layers' outputs are of a sane scale
    assert by_name["initial loss"].details["initial_loss_random_classifier"] == pytest.approx(
        np.log(10), abs=0.3
    )
    assert by_name["overfit tiny subset"].status == checks.PASS
    # momentum 0.9: measured once the buffer holds 95% of its steady weight, 0.9**29 < 0.05 < 0.9**28
    assert by_name["update ratio"].details["burn_in_steps"] == 29
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


STATS = {"mean": [0.0] * 3, "variance": [1.0] * 3, "num_classes": 10, "input_shape": (32, 32, 3)}


def test_a_badly_scaled_hidden_layer_fails_the_initial_loss_check_behind_a_zero_classifier():
    from recipes.registry import get_recipe

    recipe = get_recipe("mlp")
    model = recipe.build_model(recipe.config(["model.width=64"]), STATS)  # a zero-initialised classifier
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 32, 32, 3)).astype(np.float32)
    y = keras.ops.convert_to_numpy(keras.ops.one_hot(rng.integers(0, 10, 256), 10))
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    sane = checks.check_initial_loss(model, loss, x, y, 10)
    assert sane.status == checks.PASS
    assert sane.details["initial_loss_random_classifier"] == pytest.approx(np.log(10), abs=0.1)

    dense = model.get_layer("dense1")
    dense.kernel.assign(dense.kernel.numpy() * 100.0)
    weights = model.get_weights()
    bad = checks.check_initial_loss(model, loss, x, y, 10)
    assert bad.details["initial_loss"] == pytest.approx(np.log(10), abs=1e-5)  # the zero classifier hides it
    assert bad.status == checks.FAIL and "hidden layers' outputs are about" in bad.advice
    # ReLU layers with zero biases are positively homogeneous: 100x the first layer is 100x the logits
    spread = bad.details["logit_std_random_classifier"]
    assert spread == pytest.approx(100 * sane.details["logit_std_random_classifier"], rel=1e-3)
    assert bad.details["initial_loss_random_classifier"] > 3 * np.log(10)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))  # left as it was


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


@pytest.mark.parametrize("nesterov", [True, False])
def test_update_ratio_is_measured_once_momentum_is_steady(nesterov):
    """A linear loss has a constant gradient G, so the steps are known in closed form: Keras's SGD runs
    m <- mu m - lr G; w <- w + mu m - lr G (Nesterov) or w <- w + m. The first Nesterov step is (1 + mu)
    lr G, a steady one lr G / (1 - mu): 5.3x larger at mu = 0.9 (10x without Nesterov)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8)).astype(np.float32)
    y = rng.standard_normal((32, 4)).astype(np.float32)
    w0 = rng.standard_normal((8, 4)).astype(np.float32)
    lr, mu = 0.01, 0.9
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, use_bias=False, name="linear")])
    model.get_layer("linear").kernel.assign(w0)
    model.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=mu, nesterov=nesterov),
        loss=lambda t, p: keras.ops.mean(t * p, axis=-1),
    )
    result = checks.check_update_ratio(model, x, y, batch_size=32)

    burn_in = math.ceil(math.log(0.05) / math.log(mu))  # 29
    gradient = x.astype(np.float64).T @ y / y.size
    w, m, ratios = w0.astype(np.float64), np.zeros_like(gradient), []
    for _ in range(burn_in + 5):
        m = mu * m - lr * gradient
        step = mu * m - lr * gradient if nesterov else m
        ratios.append(np.linalg.norm(step) / np.linalg.norm(w))
        w = w + step
    assert result.details["burn_in_steps"] == burn_in
    assert result.details["first_step_update_ratio"] == pytest.approx(ratios[0], rel=1e-4)
    assert result.details["update_ratio"] == pytest.approx(np.median(ratios[burn_in:]), rel=1e-3)
    steady = lr * np.linalg.norm(gradient) / (1 - mu) / np.linalg.norm(w)
    assert result.details["update_ratio"] == pytest.approx(steady, rel=0.05)  # within 5% of steady
    first_to_steady = (1 + mu) * (1 - mu) if nesterov else 1 - mu
    assert ratios[0] / steady == pytest.approx(first_to_steady, rel=0.05)


@pytest.mark.parametrize(
    "make, steps",
    [
        (lambda: keras.optimizers.SGD(0.1, momentum=0.9), 29),  # 0.9**29 < 0.05
        (lambda: keras.optimizers.SGD(0.1, momentum=0.95), 59),
        (lambda: keras.optimizers.SGD(0.1, momentum=0.999), checks.BURN_IN_MAX),
        (lambda: keras.optimizers.SGD(0.1), checks.BURN_IN_MIN),
        (lambda: keras.optimizers.Adam(beta_1=0.8), checks.BURN_IN_MIN),  # 0.8**14 < 0.05
        (lambda: keras.optimizers.RMSprop(rho=0.95), 59),  # RMSprop's average has no bias correction
    ],
)
def test_burn_in_follows_the_slowest_moving_average(make, steps):
    assert checks.burn_in_steps(make()) == steps


@keras.saving.register_keras_serializable(package="tests")
class ReLUGate(keras.layers.Layer):
    """y = x * relu(g): a gate per feature, whose kink sits at g = 0."""

    def build(self, input_shape):
        self.gate = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gate")

    def call(self, x):
        return x * keras.ops.relu(self.gate)


@keras.saving.register_keras_serializable(package="tests")
class Faint(keras.layers.Layer):
    """y = 1e-12 * x * w: correct gradients of about 1e-12."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

    def call(self, x):
        return 1e-12 * x * self.w


def _behind_a_dense(layer) -> keras.Model:
    inputs = keras.Input((6,))
    return keras.Model(inputs, layer(keras.layers.Dense(6)(inputs)))


def test_kink_crossings_are_excluded_with_a_note():
    from layers import gradcheck

    h = checks.GRADIENT_STEP
    gate = ReLUGate(name="gate")
    model = _behind_a_dense(gate)
    # three gates within h of the kink (exactly on it, 0.4h above, 0.7h below): [g - h, g + h] crosses it
    gate.gate.assign([0.0, 0.4 * h, -0.7 * h, 1.0, -1.0, 0.5])
    x = np.random.default_rng(0).standard_normal((2, 6))
    assert gradcheck(gate, x, training=True).max_relative_error > 0.1  # a kink read as a wrong gradient
    result = checks.check_gradients(model)
    assert result.status == checks.PASS, result.message
    assert result.details["kink_crossings"] == {"gate": 3}  # the gates within h of 0, whatever the inputs
    counts = result.details["entries"]["gate"]
    assert counts["gate/gate"]["kinks"] == 3 and counts["gate/gate"]["compared"] == 3
    assert counts["input_0"]["kinks"] == 0  # x * relu(g) is linear in x
    assert "crosses a kink (ReLU, max): gate 3 entries" in result.message


def test_gradients_too_small_to_compare_warn():
    from layers import gradcheck

    x = np.random.default_rng(0).standard_normal((2, 6))
    assert gradcheck(Faint(), x, training=True).passed()  # silently: under 1e-12 counts as agreeing
    result = checks.check_gradients(_behind_a_dense(Faint(name="faint")))
    assert result.status == checks.WARN and "too small to compare" in result.message
    assert result.details["too_small"] == {"faint": 6 * 2 + 6}  # every entry of the input and of w
    assert "could be compared" in result.advice

"""LookaheadSGD: learning-rate multipliers and the ramped lookahead against hand-computed updates."""

import warnings

import keras
import numpy as np
import pytest

from recipes.engine.optimizers import LookaheadSGD


def _steps(optimizer, variables, grads, n):
    for _ in range(n):
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)


def test_multiplier_scales_the_rate_of_matching_variables_only():
    kernel = keras.Variable(np.ones(3, np.float32), name="kernel")
    beta = keras.Variable(np.ones(3, np.float32), name="beta")
    opt = LookaheadSGD(0.01, lr_multipliers={"beta": 64.0})
    _steps(opt, [kernel, beta], [np.ones(3, np.float32)] * 2, 2)
    np.testing.assert_allclose(kernel.numpy(), 1 - 2 * 0.01)
    np.testing.assert_allclose(beta.numpy(), 1 - 2 * 0.64, rtol=1e-6)


def _hand_simulation(lr: float, every: int, decay: float, totals: list[int]) -> list[float]:
    """The weight after each step of plain SGD with gradient -1 (``w += lr``) and lookahead: every
    ``every`` steps and at the last planned step, ``slow += (1 - d_t) * (w - slow)`` and ``w = slow``,
    with ``d_t = decay * (t / total)^3`` and ``d = 1`` at the end. ``totals[t-1]``: the plan at step t."""
    fast, slow, weights = 0.0, 0.0, []
    for t, total in enumerate(totals, start=1):
        fast += lr
        if t % every == 0 or t == total:
            d = 1.0 if t == total else decay * (t / total) ** 3
            slow += (1 - d) * (fast - slow)
            fast = slow
        weights.append(fast)
    return weights


def test_lookahead_pulls_back_to_the_slow_weights_with_the_cubic_ramp():
    lr, every, decay, total = 0.1, 2, 0.5, 6
    w = keras.Variable(np.zeros(1, np.float32), name="w")
    opt = LookaheadSGD(lr, lookahead_every=every, lookahead_decay=decay, total_steps=total)
    seen = []
    for _ in range(total):
        _steps(opt, [w], [-np.ones(1, np.float32)], 1)
        seen.append(float(w.numpy()[0]))
    np.testing.assert_allclose(seen, _hand_simulation(lr, every, decay, [total] * total), rtol=1e-6)
    assert seen[-1] == pytest.approx(seen[-3])  # the last step returns to the slow weights of step 4


def test_a_shortened_plan_moves_the_ramp_and_the_final_switch():
    lr, every, decay = 0.1, 2, 0.5
    w = keras.Variable(np.zeros(1, np.float32), name="w")
    opt = LookaheadSGD(lr, lookahead_every=every, lookahead_decay=decay, total_steps=100)
    seen = []
    for t in range(1, 8):
        if t == 4:
            opt.set_total_steps(7)  # after 3 steps the plan shrinks from 100 to 7 steps
        _steps(opt, [w], [-np.ones(1, np.float32)], 1)
        seen.append(float(w.numpy()[0]))
    expected = _hand_simulation(lr, every, decay, [100] * 3 + [7] * 4)
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    assert seen[-1] == pytest.approx(seen[-2])  # step 7 ends on the slow weights of step 6


def test_state_built_inside_fit_starts_from_the_weights_and_the_plan():
    # Keras builds the optimizer while tracing the first step; values assigned there would be lost
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=LookaheadSGD(0.1, lookahead_every=100, total_steps=40), loss="mse")
    start = model.layers[0].kernel.numpy()
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), batch_size=4, epochs=1, verbose=0)
    slow = {v.path: v.numpy() for v in model.optimizer.slow_weights}
    np.testing.assert_array_equal(slow[next(k for k in slow if "kernel" in k)], start)
    assert float(model.optimizer.planned_steps.numpy()) == 40.0


def test_config_round_trip_and_bad_arguments():
    opt = LookaheadSGD(
        0.2, momentum=0.85, nesterov=True, lr_multipliers={"beta": 8.0}, lookahead_every=5, total_steps=100
    )
    clone = LookaheadSGD.from_config(opt.get_config())
    for key in (
        "lr_multipliers",
        "lookahead_every",
        "lookahead_decay",
        "total_steps",
        "momentum",
        "nesterov",
    ):
        assert getattr(clone, key) == getattr(opt, key), key
    with pytest.raises(ValueError, match="lookahead_every"):
        LookaheadSGD(lookahead_every=-1)
    with pytest.raises(ValueError, match="total_steps"):
        LookaheadSGD(total_steps=0)
    muon = LookaheadSGD(0.1, muon_lr_scale=0.85, muon_momentum=0.5, muon_ns_steps=4)
    clone = LookaheadSGD.from_config(muon.get_config())
    assert (clone.muon_lr_scale, clone.muon_momentum, clone.muon_ns_steps) == (0.85, 0.5, 4)
    for bad in (
        {"muon_lr_scale": -0.1},
        {"muon_lr_scale": float("nan")},
        {"muon_momentum": 1.0},
        {"muon_momentum": -0.2},
        {"muon_ns_steps": 0},
        {"muon_ns_steps": 2.5},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LookaheadSGD(**bad)


def test_model_compiled_with_it_saves_and_resumes(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    model.compile(
        optimizer=LookaheadSGD(
            0.1, momentum=0.9, lr_multipliers={"beta": 4.0}, lookahead_every=3, total_steps=50
        ),
        loss="mse",
    )
    x, y = np.random.default_rng(0).normal(size=(32, 4)), np.zeros((32, 2))
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, LookaheadSGD) and loaded.optimizer.lookahead_every == 3
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------------------------------
# optimizer.name: each optimizer build_optimizer makes, against its update rule worked in NumPy
# ----------------------------------------------------------------------------------------------------

LR, MU, W0, STEPS = 0.1, 0.8, 1.5, 3
EPS = 1e-7  # Keras's default epsilon of adam, rmsprop, adagrad and adadelta


def _config(name: str, *extra: str):
    from recipes.registry import get_recipe

    return get_recipe("mlp").config(
        [
            f"optimizer.name={name}",
            f"optimizer.lr={LR}",
            f"optimizer.momentum={MU}",
            "optimizer.weight_decay=0",
            "schedule.name=constant",
            "schedule.warmup_epochs=0",
            *extra,
        ]
    )


def _by_hand(name: str) -> list[float]:
    """The weight after each of ``STEPS`` steps on the loss ``0.5 w^2`` (gradient ``g = w``), by each
    optimizer's published rule in Keras's form and with the values build_optimizer sets: momentum (sgd,
    rmsprop) or beta_1 (adam, adamw) from optimizer.momentum, Keras's defaults for the rest (beta_2 0.999,
    rmsprop rho 0.9, adagrad initial accumulator 0.1, adadelta rho 0.95)."""
    w, out = W0, []
    m = v = a = ed = 0.0
    acc = 0.1
    for t in range(1, STEPS + 1):
        g = w
        if name == "sgd":  # Nesterov: m = mu m - lr g; w += mu m - lr g
            m = MU * m - LR * g
            w += MU * m - LR * g
        elif name in ("adam", "adamw"):  # bias-corrected moments
            m = MU * m + (1 - MU) * g
            v = 0.999 * v + 0.001 * g * g
            w -= LR * np.sqrt(1 - 0.999**t) / (1 - MU**t) * m / (np.sqrt(v) + EPS)
        elif name == "rmsprop":  # mean square with rho 0.9, then heavy-ball momentum on the scaled step
            v = 0.9 * v + 0.1 * g * g
            m = MU * m + LR * g / np.sqrt(v + EPS)
            w -= m
        elif name == "adagrad":  # the sum of squared gradients from 0.1
            acc += g * g
            w -= LR * g / np.sqrt(acc + EPS)
        elif name == "adadelta":  # Zeiler 2012: RMS of past updates over RMS of gradients, times lr
            a = 0.95 * a + 0.05 * g * g
            delta = -np.sqrt(ed + EPS) / np.sqrt(a + EPS) * g
            ed = 0.95 * ed + 0.05 * delta * delta
            w += LR * delta
        out.append(w)
    return out


OPTIMIZERS = {
    "sgd": keras.optimizers.SGD,
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "rmsprop": keras.optimizers.RMSprop,
    "adagrad": keras.optimizers.Adagrad,
    "adadelta": keras.optimizers.Adadelta,
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_moves_a_weight_by_its_update_rule(name):
    from recipes.engine.training import build_optimizer

    opt = build_optimizer(_config(name), steps_per_epoch=10)
    assert type(opt) is OPTIMIZERS[name]
    w = keras.Variable(np.float32(W0), name="w")
    seen = []
    for _ in range(STEPS):
        opt.apply([keras.ops.convert_to_tensor(w)], [w])  # the gradient of 0.5 w^2 is w
        seen.append(float(w.numpy()))
    expected = _by_hand(name)
    np.testing.assert_allclose(seen, expected, rtol=2e-6)
    assert abs(expected[0] - W0) > 1e-4  # the first step itself moves the weight measurably


def test_the_sgd_rule_without_nesterov_is_heavy_ball():
    from recipes.engine.training import build_optimizer

    opt = build_optimizer(_config("sgd", "optimizer.nesterov=false"), steps_per_epoch=10)
    w = keras.Variable(np.float32(W0), name="w")
    m, expected, seen = 0.0, [], []
    for _ in range(STEPS):
        m = MU * m - LR * float(w.numpy())
        expected.append(float(w.numpy()) + m)
        opt.apply([keras.ops.convert_to_tensor(w)], [w])
        seen.append(float(w.numpy()))
    np.testing.assert_allclose(seen, expected, rtol=1e-6)


def test_an_unknown_optimizer_is_refused_in_one_line():
    from recipes.config import ConfigError

    with pytest.raises(ConfigError, match="optimizer.name=adamax: expected one of .*adagrad, adadelta"):
        _config("adamax")


# ----------------------------------------------------------------------------------------------------
# Decoupled weight decay shrinks the kernels only
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_weight_decay_shrinks_kernels_and_leaves_biases_and_batch_norm_alone(name):
    from recipes.engine.training import build_optimizer
    from recipes.registry import get_recipe

    lr, wd = 0.1, 0.05
    r = get_recipe("mlp")
    cfg = _config(name, "model.depth=1", "model.width=4", "model.batch_norm=true")
    cfg.optimizer.lr, cfg.optimizer.weight_decay = lr, wd
    stats = {"mean": [0.0] * 3, "variance": [1.0] * 3, "num_classes": 3, "input_shape": (2, 2, 3)}
    model = r.build_model(cfg, stats)
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # nonzero everywhere: a decayed bias or shift would show
        v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
    before = {v.path: np.array(v) for v in model.trainable_variables}
    opt = build_optimizer(cfg, steps_per_epoch=10)
    opt.apply([keras.ops.zeros(v.shape) for v in model.trainable_variables], model.trainable_variables)
    kinds = {"kernel": 0, "bias": 0, "gamma": 0, "beta": 0}
    for v in model.trainable_variables:
        kind = v.path.rsplit("/", 1)[-1]
        kinds[kind] += 1
        expected = before[v.path] * (1 - lr * wd) if kind == "kernel" else before[v.path]
        np.testing.assert_allclose(np.array(v), expected, rtol=1e-6, err_msg=v.path)
    assert kinds == {"kernel": 2, "bias": 2, "gamma": 1, "beta": 1}  # dense1, bn1, logits


# ----------------------------------------------------------------------------------------------------
# Muon steps for conv kernels (optimizer.muon_lr)
# ----------------------------------------------------------------------------------------------------


def test_orthogonalize_keeps_the_svd_directions_and_pulls_singular_values_towards_one():
    from recipes.engine.optimizers import orthogonalize

    rng = np.random.default_rng(0)
    for shape in ((36, 8), (8, 36), (16, 16)):
        g = rng.normal(size=shape).astype(np.float32)
        u, s, vt = np.linalg.svd(g, full_matrices=False)
        out = np.asarray(orthogonalize(keras.ops.convert_to_tensor(g), steps=5))
        assert out.shape == shape
        # the same singular vectors: out = U diag(s') V^T with s' spread around 1 (Jordan's coefficients)
        s_out = np.diag(u.T @ out @ vt.T)
        np.testing.assert_allclose(u @ np.diag(s_out) @ vt, out, atol=1e-4)
        assert 0.6 < s_out.min() and s_out.max() < 1.3, s_out
        # invariant to the matrix's scale
        np.testing.assert_allclose(
            np.asarray(orthogonalize(keras.ops.convert_to_tensor(7 * g), 5)), out, atol=1e-5
        )


def _newton_schulz(x, steps):
    """Jordan's quintic iteration in NumPy (float64), on the wide orientation of ``x``."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = x.shape[0] > x.shape[1]
    y = (x.T if tall else x) / np.linalg.norm(x)
    for _ in range(steps):
        gram = y @ y.T
        y = a * y + (b * gram + c * gram @ gram) @ y
    return y.T if tall else y


def test_a_muon_step_renormalises_the_kernel_and_steps_along_the_orthogonalised_momentum():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)  # a conv kernel: 36 inputs, 6 filters
    g1, g2 = (rng.normal(size=w0.shape).astype(np.float32) for _ in range(2))
    bias0 = np.ones(6, np.float32)
    kernel, bias = keras.Variable(w0, name="kernel"), keras.Variable(bias0, name="bias")
    lr, scale, mu = 0.1, 0.5, 0.6
    opt = LookaheadSGD(
        lr, momentum=0.9, nesterov=True, muon_lr_scale=scale, muon_momentum=mu, muon_ns_steps=5
    )
    w = w0.astype(np.float64)
    buf = np.zeros_like(w)
    for g in (g1, g2):
        opt.apply(
            [keras.ops.convert_to_tensor(g), keras.ops.convert_to_tensor(np.ones(6, np.float32))],
            [kernel, bias],
        )
        buf = mu * buf + g
        direction = (g + mu * buf).reshape(36, 6)
        w = w * np.sqrt(6) / np.linalg.norm(w) - lr * scale * _newton_schulz(direction, 5).reshape(w.shape)
    np.testing.assert_allclose(kernel.numpy(), w, atol=2e-4)
    # the bias (1-D) took Nesterov SGD steps at the plain rate: m = 0.9 m - lr g; b += 0.9 m - lr g
    m, b = 0.0, 1.0
    for _ in range(2):
        m = 0.9 * m - lr
        b += 0.9 * m - lr
    np.testing.assert_allclose(bias.numpy(), b, rtol=1e-6)


def test_muon_lr_is_sgd_only_and_reaches_the_optimizer_as_a_share_of_lr(tmp_path):
    from recipes.config import ConfigError
    from recipes.engine.training import build_optimizer
    from recipes.registry import get_recipe

    for name in ("adam", "adamw", "rmsprop"):
        with pytest.raises(
            ConfigError, match=f"optimizer.muon_lr=0.05 needs optimizer.name=sgd \\(got {name}\\)"
        ):
            get_recipe("mlp").config([f"optimizer.name={name}", "optimizer.muon_lr=0.05"])
    cfg = get_recipe("fast").config(["optimizer.muon_lr=0.085", "optimizer.muon_momentum=0.5"])
    opt = build_optimizer(cfg, steps_per_epoch=10)
    assert isinstance(opt, LookaheadSGD)
    assert opt.muon_lr_scale == pytest.approx(0.085 / cfg.optimizer.lr) and opt.muon_momentum == 0.5
    # a conv net trained with it saves to .keras and loads back with its Muon buffers
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(optimizer=opt, loss="mse")
    x, y = np.random.default_rng(0).normal(size=(16, 6, 6, 3)), np.zeros((16, 2))
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    # each step resets the kernel to norm sqrt(filters) = 2 before its small move (Glorot gave about 1.85)
    assert np.linalg.norm(model.layers[0].kernel.numpy()) == pytest.approx(2.0, rel=0.03)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.muon_lr_scale == opt.muon_lr_scale
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables) > 2
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))


def test_muon_without_any_conv_kernel_warns_that_it_does_nothing():
    for units in (1, 3):
        dense = keras.layers.Dense(units)
        dense.build((None, 4))
        with pytest.warns(UserWarning, match="no variable is a conv kernel"):
            LookaheadSGD(0.1, muon_lr_scale=0.5).build(dense.trainable_variables)
    conv = keras.layers.Conv2D(2, 3)
    conv.build((None, 5, 5, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LookaheadSGD(0.1, muon_lr_scale=0.5).build(conv.trainable_variables)  # a kernel: no warning
        LookaheadSGD(0.1).build(keras.layers.Dense(2).trainable_variables)  # Muon off: no warning

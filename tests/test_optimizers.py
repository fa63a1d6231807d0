"""LookaheadSGD: learning-rate multipliers and the ramped lookahead against hand-computed updates."""

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

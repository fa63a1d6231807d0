import warnings

import keras
import numpy as np
import pytest

from callbacks import UpdateRatioLogger


def test_one_sgd_step_on_least_squares_matches_the_closed_form():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)
    w0 = rng.standard_normal((5, 1)).astype(np.float32)
    lr = 0.01
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1, use_bias=False, name="linear")])
    model.layers[0].kernel.assign(w0)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[UpdateRatioLogger(every_n_steps=1)],
    )
    w, xd, yd = w0.astype(np.float64), x.astype(np.float64), y.astype(np.float64)
    grad = 2.0 / len(x) * xd.T @ (xd @ w - yd)  # d/dw mean((xw - y)^2)
    expected = np.linalg.norm(lr * grad) / np.linalg.norm(w)
    assert history.history["update_ratio/linear"][0] == pytest.approx(expected, rel=1e-4)
    assert history.history["update_ratio"][0] == pytest.approx(expected, rel=1e-4)


def test_biases_are_left_out_and_median_is_taken():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, name="a"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="b"),
            keras.layers.Dense(1, name="c"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    logger = UpdateRatioLogger(every_n_steps=1)
    history = model.fit(np.ones((8, 4)), np.ones((8, 1)), batch_size=8, verbose=0, callbacks=[logger])
    keys = {k for k in history.history if k.startswith("update_ratio/")}
    assert keys == {"update_ratio/a", "update_ratio/b", "update_ratio/c"}
    values = [history.history[k][0] for k in sorted(keys)]
    assert history.history["update_ratio"][0] == pytest.approx(np.median(values))


def test_warns_when_far_from_one_in_a_thousand():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(1e-7), loss="mse")
    with pytest.warns(UserWarning, match="raise the learning rate"):
        model.fit(
            np.ones((8, 4)),
            np.ones((8, 2)),
            batch_size=4,
            verbose=0,
            callbacks=[UpdateRatioLogger(every_n_steps=1)],
        )


def _fit_quietly_at(learning_rate) -> tuple[list[float], list[str]]:
    """Per-epoch median update ratios and the logger's warnings over 2 epochs of 16 steps."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    x, y = np.random.default_rng(0).standard_normal((64, 4)), np.ones((64, 2))
    logger = UpdateRatioLogger(every_n_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[logger])
    return history.history["update_ratio"], [
        str(w.message) for w in caught if "UpdateRatio" in str(w.message)
    ]


def test_a_decay_tail_is_not_mistaken_for_a_too_low_rate():
    # 32 steps; the rate falls linearly from 1e-3 to 0 over 30. Epoch 1's last measurement (step 13) is
    # at a healthy ratio; epoch 2's (step 29) at 1/30 of the peak rate, below 1e-4: the decay's tail.
    decay = keras.optimizers.schedules.PolynomialDecay(1e-3, decay_steps=30, end_learning_rate=0.0)
    ratios, messages = _fit_quietly_at(decay)
    assert 1e-4 <= ratios[0] <= 1e-2 and ratios[1] < 1e-4, ratios
    assert messages == []
    # a constant rate that gives such a ratio is a problem
    ratios, messages = _fit_quietly_at(1e-3 / 30)
    assert ratios[1] < 1e-4 and any("raise the learning rate" in m for m in messages), (ratios, messages)


def test_keeps_async_batch_end_dispatch():
    # Keras dispatches batch-end hooks asynchronously only when no callback overrides them
    assert UpdateRatioLogger.on_train_batch_end is keras.callbacks.Callback.on_train_batch_end

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
    """Per-epoch update ratios (measured over each epoch's last step) and the logger's warnings over 2
    epochs of 16 steps."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    x, y = np.random.default_rng(0).standard_normal((64, 4)), np.ones((64, 2))
    logger = UpdateRatioLogger()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[logger])
    return history.history["update_ratio"], [
        str(w.message) for w in caught if "UpdateRatio" in str(w.message)
    ]


def test_a_decay_tail_is_not_mistaken_for_a_too_low_rate():
    # 32 steps; the rate falls linearly from 1e-3 to 0 over 30. Epoch 1's measurement (step 15) is at a
    # healthy ratio; epoch 2's (step 31) at a rate of 0, below 1e-4: the decay's tail.
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


def _least_squares(steps_per_epoch: int, lr, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * steps_per_epoch, 5)).astype(np.float32)
    y = rng.standard_normal((4 * steps_per_epoch, 1)).astype(np.float32)
    w0 = rng.standard_normal((5, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1, use_bias=False, name="linear")])
    model.layers[0].kernel.assign(w0)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model, x, y, w0


def _hand_ratios(x, y, w0, lr_at, batch: int = 4) -> list[float]:
    """Plain SGD on mean squared error in float64: the update ratio of every step."""
    w, ratios = w0.astype(np.float64), []
    for step, start in enumerate(range(0, len(x), batch)):
        xb, yb = x[start : start + batch].astype(np.float64), y[start : start + batch].astype(np.float64)
        update = lr_at(step) * 2.0 / len(xb) * xb.T @ (xb @ w - yb)
        ratios.append(float(np.linalg.norm(update) / np.linalg.norm(w)))
        w = w - update
    return ratios


def test_measures_each_epoch_afresh_over_its_last_step():
    # 3 epochs of 35 steps (the main job's epoch length on the sample): each epoch logs its own last step's
    # ratio, never the value of an earlier epoch
    model, x, y, w0 = _least_squares(35, 0.01)
    xs, ys = np.concatenate([x] * 3), np.concatenate([y] * 3)
    expected = _hand_ratios(xs, ys, w0, lambda step: 0.01)
    history = model.fit(
        x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[UpdateRatioLogger()]
    )
    logged = history.history["update_ratio/linear"]
    np.testing.assert_allclose(logged, [expected[34], expected[69], expected[104]], rtol=1e-3)
    assert len(set(logged)) == 3


def test_every_n_steps_logs_the_median_of_the_epoch_s_measurements():
    model, x, y, w0 = _least_squares(8, 0.01)
    expected = _hand_ratios(np.concatenate([x] * 2), np.concatenate([y] * 2), w0, lambda step: 0.01)
    logger = UpdateRatioLogger(every_n_steps=3)  # steps 1, 4, 7 | 10, 13 and each epoch's last: 7 | 15
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[logger])
    want = [np.median([expected[s] for s in (1, 4, 7)]), np.median([expected[s] for s in (10, 13, 15)])]
    np.testing.assert_allclose(history.history["update_ratio"], want, rtol=1e-3)


def test_no_warning_during_warmup_but_one_after_it():
    from callbacks import Warmup

    # The rate ramps from 0 to 1e-6 over the first 20 steps (epochs 1-2 of 8 steps are in the warmup, a
    # ratio far below 1e-4), then stays at 1e-6: too low, which is worth a warning once the warmup is over.
    def fit(epochs):
        keras.utils.set_random_seed(0)
        schedule = Warmup(keras.optimizers.schedules.ExponentialDecay(1e-6, 10, 1.0), warmup_steps=20)
        model, x, y, _ = _least_squares(8, schedule)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, callbacks=[UpdateRatioLogger()])
        messages = [str(w.message) for w in caught if "UpdateRatio" in str(w.message)]
        return history.history["update_ratio"], messages

    ratios, messages = fit(epochs=2)
    assert all(r < 1e-4 for r in ratios) and messages == []
    ratios, messages = fit(epochs=4)
    assert len(messages) == 1 and "raise the learning rate" in messages[0]


@pytest.mark.parametrize("every", [0, -3, 2.5])
def test_bad_every_n_steps_is_refused(every):
    with pytest.raises(ValueError, match="every_n_steps"):
        UpdateRatioLogger(every_n_steps=every)


@pytest.mark.parametrize("bounds", [(0.0, 1e-2), (1e-2, 1e-4), (-1.0, 1.0)])
def test_bad_healthy_range_is_refused(bounds):
    with pytest.raises(ValueError, match="healthy_range"):
        UpdateRatioLogger(healthy_range=bounds)


def test_a_single_epoch_that_warms_up_and_decays_is_not_mistaken_for_a_too_low_rate():
    from callbacks import Warmup

    # one epoch of 16 steps: up to 1e-3 over 5 steps, down to 0 over the next 10. Its one measurement (the
    # last step) is at a rate of 0, far below a tenth of the schedule's peak: annealing, not a low rate.
    decay = keras.optimizers.schedules.PolynomialDecay(1e-3, decay_steps=10, end_learning_rate=0.0)
    model, x, y, _ = _least_squares(16, Warmup(decay, warmup_steps=5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[UpdateRatioLogger()])
    assert history.history["update_ratio"][0] < 1e-4
    assert not [w for w in caught if "UpdateRatio" in str(w.message)]


def test_a_decayed_rate_whose_peak_was_too_low_is_still_warned_about():
    # the rate falls from 1e-6 to 0: scaled back to its peak, the ratio is still far below 1e-4
    decay = keras.optimizers.schedules.PolynomialDecay(1e-6, decay_steps=30, end_learning_rate=0.0)
    ratios, messages = _fit_quietly_at(decay)
    assert ratios[0] < 1e-6 and any("raise the learning rate" in m for m in messages), (ratios, messages)


class _StopPartway(keras.callbacks.Callback):
    """Ends epoch ``epoch`` after ``steps`` steps, announcing it first (as a budget's keeper does)."""

    def __init__(self, epoch: int, steps: int, listener=None):
        super().__init__()
        self.epoch, self.steps, self.listener, self._now = epoch, steps, listener, -1

    def on_epoch_begin(self, epoch, logs=None):
        self._now = epoch
        if epoch == self.epoch and self.listener is not None:
            self.listener.expect_epoch_steps(epoch, self.steps)

    def on_train_batch_end(self, batch, logs=None):
        if self._now == self.epoch and batch + 1 >= self.steps:
            self.model.stop_training = True


@pytest.mark.parametrize("logger_first", [True, False])
def test_an_announced_short_epoch_is_measured_over_its_real_last_step(logger_first):
    # epochs of 10 steps; the second ends after 6: its ratio is step 15's (0-based), whatever the order
    model, x, y, w0 = _least_squares(10, 0.01)
    expected = _hand_ratios(np.concatenate([x] * 2), np.concatenate([y] * 2), w0, lambda step: 0.01)
    logger = UpdateRatioLogger()
    stopper = _StopPartway(epoch=1, steps=6, listener=logger)
    order = [logger, stopper] if logger_first else [stopper, logger]
    history = model.fit(x, y, batch_size=4, epochs=5, shuffle=False, verbose=0, callbacks=order)
    assert int(model.optimizer.iterations) == 16
    np.testing.assert_allclose(history.history["update_ratio/linear"], [expected[9], expected[15]], rtol=1e-3)


def test_an_unannounced_short_epoch_logs_not_measured():
    model, x, y, _ = _least_squares(10, 0.01)
    history = model.fit(
        x,
        y,
        batch_size=4,
        epochs=5,
        shuffle=False,
        verbose=0,
        callbacks=[UpdateRatioLogger(), _StopPartway(1, 6)],
    )
    logged = history.history["update_ratio"]
    assert len(logged) == 2 and np.isfinite(logged[0]) and np.isnan(logged[1])


def test_an_announcement_holds_for_its_own_fit_only():
    model, x, y, w0 = _least_squares(10, 0.01)
    logger = UpdateRatioLogger()
    model.fit(
        x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[logger, _StopPartway(1, 6, logger)]
    )
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[logger])
    # the batches seen: 10, 6, then 10 and 10; the second fit's epoch 2 is measured over its 10th step
    stream_x, stream_y = np.concatenate([x, x[:24], x, x]), np.concatenate([y, y[:24], y, y])
    expected = _hand_ratios(stream_x, stream_y, w0, lambda step: 0.01)
    np.testing.assert_allclose(
        history.history["update_ratio/linear"], [expected[25], expected[35]], rtol=1e-3
    )


@pytest.mark.parametrize("steps", [0, -2, 2.5])
def test_bad_announced_steps_are_refused(steps):
    with pytest.raises(ValueError, match="steps"):
        UpdateRatioLogger().expect_epoch_steps(0, steps)


class _StepRecorder(keras.callbacks.Callback):
    """Every step's ``||after - before|| / ||before||`` of the first layer's kernel, from copies."""

    def __init__(self):
        super().__init__()
        self.ratios: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._before = np.array(self.model.layers[0].kernel, dtype=np.float64)

    def on_train_batch_end(self, batch, logs=None):
        after = np.array(self.model.layers[0].kernel, dtype=np.float64)
        self.ratios.append(float(np.linalg.norm(after - self._before) / np.linalg.norm(self._before)))


def _fit_and_record(optimizer, steps_per_epoch: int, epochs: int, logger: UpdateRatioLogger):
    model, x, y, _ = _least_squares(steps_per_epoch, 0.01)
    model.compile(optimizer=optimizer, loss="mse")
    recorder = _StepRecorder()
    history = model.fit(
        x, y, batch_size=4, epochs=epochs, shuffle=False, verbose=0, callbacks=[logger, recorder]
    )
    return history.history["update_ratio/linear"], recorder.ratios


def test_steps_that_overwrite_with_keras_ema_are_not_measured():
    # every 5th update (0-based steps 4, 9, 14, 19) ends on the average: each epoch's last step is one,
    # so each epoch is measured over the step before it
    optimizer = keras.optimizers.SGD(0.05, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=5)
    logged, steps = _fit_and_record(optimizer, 10, 2, UpdateRatioLogger())
    np.testing.assert_allclose(logged, [steps[8], steps[18]], rtol=1e-4)
    assert abs(steps[9] - steps[8]) > 0.05 * steps[8]  # the overwrite step would read differently


def test_lookahead_syncs_and_the_final_switch_are_not_measured():
    from recipes.engine.optimizers import LookaheadSGD

    # syncs after every 5th update (steps 4, 9, 14, 19) and at the last planned one (step 18 of 19)
    optimizer = LookaheadSGD(0.05, momentum=0.5, lookahead_every=5, lookahead_decay=0.5, total_steps=19)
    logged, steps = _fit_and_record(optimizer, 10, 2, UpdateRatioLogger())
    np.testing.assert_allclose(logged, [steps[8], steps[17]], rtol=1e-4)


def test_a_periodic_measurement_due_on_an_overwrite_moves_to_the_next_step():
    # every 3 steps (1, 4, 7) and the epoch's last (7): with an overwrite at steps 3 and 7, the epoch's
    # measurement moves back to 6 and the periodic one at 7 has no later step in the fit: steps 1, 4, 6
    optimizer = keras.optimizers.SGD(0.05, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=4)
    logged, steps = _fit_and_record(optimizer, 8, 1, UpdateRatioLogger(every_n_steps=3))
    assert logged[0] == pytest.approx(np.median([steps[1], steps[4], steps[6]]), rel=1e-4)


def test_plain_update_names_the_steps_that_move_weights_by_other_means():
    from callbacks import plain_update
    from recipes.engine.optimizers import LookaheadSGD

    def jumps(optimizer, steps=12):
        return [s for s in range(steps) if not plain_update(optimizer, s)]

    assert jumps(LookaheadSGD(0.1, lookahead_every=5, total_steps=12)) == [4, 9, 11]
    assert jumps(LookaheadSGD(0.1, lookahead_every=0, total_steps=12)) == []
    assert jumps(keras.optimizers.SGD(0.1, use_ema=True, ema_overwrite_frequency=3)) == [2, 5, 8, 11]
    assert jumps(keras.optimizers.SGD(0.1, use_ema=True)) == []  # an average, never written back in fit
    assert jumps(keras.optimizers.Adam(0.1)) == []
    wrapped = keras.optimizers.LossScaleOptimizer(LookaheadSGD(0.1, lookahead_every=4, total_steps=100))
    assert jumps(wrapped) == [3, 7, 11]


def _conv_net(muon_lr_scale: float, lr: float, head: bool):
    """A conv layer (and a dense head) trained by ``LookaheadSGD``; ``muon_lr_scale > 0``: Muon steps for
    the conv kernel, whose step is a rotation of size about ``lr * muon_lr_scale``."""
    from recipes.engine.optimizers import LookaheadSGD

    keras.utils.set_random_seed(0)
    layers = [keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, name="conv")]
    layers += [keras.layers.GlobalAveragePooling2D()]
    layers += [keras.layers.Dense(2, name="head")] if head else []
    model = keras.Sequential(layers)
    model.compile(optimizer=LookaheadSGD(lr, muon_lr_scale=muon_lr_scale, total_steps=8), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8, 8, 3)).astype(np.float32)
    y = rng.standard_normal((32, 2 if head else 8)).astype(np.float32)
    return model, x, y


@pytest.mark.parametrize("head", [True, False])
def test_muon_kernels_are_logged_but_not_judged(head):
    # lr 0.01 keeps the head's SGD steps near 1e-3; Muon's rate 0.1 moves the conv kernel by about 4% a
    # step, far above SGD's healthy range: so far that the median over both layers would leave it too
    model, x, y = _conv_net(muon_lr_scale=10.0, lr=0.01, head=head)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdateRatioLogger()])
    assert min(history.history["update_ratio/conv"]) > 3e-2  # logged, far above the healthy range
    if head:
        assert all(1e-4 <= r <= 1e-2 for r in history.history["update_ratio/head"])
        assert min(history.history["update_ratio"]) > 1e-2  # the logged median over both layers
    assert [str(w.message) for w in caught if "UpdateRatio" in str(w.message)] == []


def test_the_same_ratio_from_sgd_steps_is_warned_about():
    model, x, y = _conv_net(muon_lr_scale=0.0, lr=3.0, head=False)  # plain SGD, far too large a rate
    with pytest.warns(UserWarning, match="lower the learning rate"):
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdateRatioLogger()])
    assert max(history.history["update_ratio/conv"]) > 1e-2


def test_rate_sized_update_names_the_muon_kernels():
    from callbacks import rate_sized_update
    from recipes.engine.optimizers import LookaheadSGD

    kernel, matrix = keras.Variable(np.ones((3, 3, 3, 8))), keras.Variable(np.ones((27, 8)))
    muon = LookaheadSGD(0.1, muon_lr_scale=0.5)
    assert rate_sized_update(muon, kernel) and not rate_sized_update(muon, matrix)
    assert rate_sized_update(
        keras.optimizers.LossScaleOptimizer(LookaheadSGD(0.1, muon_lr_scale=0.5)), kernel
    )
    for optimizer in (LookaheadSGD(0.1), keras.optimizers.SGD(0.1), keras.optimizers.Adam(0.1), None):
        assert not rate_sized_update(optimizer, kernel)


def test_a_warning_over_fewer_layers_says_so():
    model, x, y = _conv_net(muon_lr_scale=0.01, lr=3.0, head=True)  # the head's SGD steps far too large
    with pytest.warns(UserWarning, match=r"\(over 1 of 2 layers; the rate fixes the others' step\).*lower"):
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[UpdateRatioLogger()])

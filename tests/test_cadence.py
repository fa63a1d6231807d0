"""The probe monitors measure within a share of the training time, and never repeat an old value."""

import math

import keras
import numpy as np
import pytest

import callbacks._cadence as cadence_module
from callbacks import ActivationStats, CleanTrainAccuracy, DeadUnitMonitor, GradientStats
from callbacks._cadence import EpochCadence


class FakeClock:
    """``time.perf_counter`` under the test's control: each call returns ``now``."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(cadence_module, "perf_counter", fake)
    return fake


def _measure_taking(cadence, clock, seconds):
    def measure():
        clock.now += seconds

    cadence.timed(measure)


def test_cadence_keeps_the_measuring_time_within_its_share(clock):
    # Each epoch trains 10 s and a measurement takes 1 s; with a 5% share the k-th measurement is allowed
    # once k * 1 s <= 0.05 * elapsed, worked out by hand below.
    cadence = EpochCadence(every_n_epochs=1, max_overhead=0.05)
    cadence.start()
    measured = []
    for epoch in range(60):
        clock.now += 10.0
        if cadence.due(epoch):
            measured.append(epoch)
            _measure_taking(cadence, clock, 1.0)
    # epoch 0: first of the fit. Then measurement k (k = 2, 3, ...) needs (k - 1) + 1 <= 0.05 * elapsed,
    # elapsed = 10 (e + 1) + (k - 1) at the end of epoch e: e >= (20k - k + 1) / 10 - 1
    expected, k = [0], 2
    for epoch in range(1, 60):
        if k <= 0.05 * (10 * (epoch + 1) + (k - 1)):
            expected.append(epoch)
            k += 1
    assert measured == expected
    assert measured[:4] == [0, 3, 5, 7]  # 5% of 10 s epochs: a 1 s measurement every other epoch
    assert cadence.spent <= 0.05 * clock.now


def test_cadence_every_n_epochs_force_and_no_limit(clock):
    cadence = EpochCadence(every_n_epochs=3, max_overhead=None)
    cadence.start()
    due = []
    for epoch in range(7):
        if cadence.due(epoch, force=epoch == 5):
            due.append(epoch)
            _measure_taking(cadence, clock, 100.0)  # costly, but no limit is set
    assert due == [0, 3, 5, 6]


def test_cadence_restarts_with_each_fit_and_measures_outside_fit(clock):
    cadence = EpochCadence(every_n_epochs=1, max_overhead=0.01)
    assert cadence.due(7)  # never started: a direct call measures
    cadence.start()
    assert cadence.due(3)  # a resumed fit's first epoch is measured, whatever its number
    _measure_taking(cadence, clock, 5.0)
    clock.now += 1.0
    assert not cadence.due(4)
    cadence.start()
    assert cadence.due(5)


@pytest.mark.parametrize("every", [0, -1, 1.5])
def test_bad_every_n_epochs_is_refused_by_each_monitor(every):
    x = np.zeros((4, 3), np.float32)
    for make in (
        lambda: DeadUnitMonitor(x, every_n_epochs=every),
        lambda: ActivationStats(x, every_n_epochs=every),
        lambda: GradientStats(x, np.zeros((4, 1)), every_n_epochs=every),
        lambda: CleanTrainAccuracy(x, np.zeros(4), every_n_epochs=every),
    ):
        with pytest.raises(ValueError, match="every_n_epochs"):
            make()


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, math.inf])
def test_bad_max_overhead_is_refused_by_each_monitor(share):
    x = np.zeros((4, 3), np.float32)
    for make in (
        lambda: DeadUnitMonitor(x, max_overhead=share),
        lambda: ActivationStats(x, max_overhead=share),
        lambda: GradientStats(x, np.zeros((4, 1)), max_overhead=share),
        lambda: CleanTrainAccuracy(x, np.zeros(4), max_overhead=share),
    ):
        with pytest.raises(ValueError, match="max_overhead"):
            make()


def _tiny_classifier():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    return model


def test_skipped_epochs_are_nan_not_the_last_value_and_the_last_epoch_is_measured(clock):
    # Training costs no time on the fake clock, so after its first measurement every monitor is over its
    # share: the first epoch is measured, the middle ones are NaN (the keys stay, for CSVLogger), and the
    # clean training accuracy is measured again at the last epoch, which feeds the fit diagnosis.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    monitors = [DeadUnitMonitor(x), GradientStats(x, y), CleanTrainAccuracy(x, y)]
    for monitor in monitors:  # each measurement takes 1 s on the fake clock
        measure = monitor.measure

        def slow(measure=measure):
            clock.now += 1.0
            return measure()

        monitor.measure = slow
    model = _tiny_classifier()
    history = model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=monitors).history
    for key in ("dead_fraction", "grad_norm_ratio"):
        assert math.isfinite(history[key][0]) and all(math.isnan(v) for v in history[key][1:]), key
    clean = history["train_clean_accuracy"]
    assert math.isfinite(clean[0]) and math.isnan(clean[1]) and math.isnan(clean[2])
    expected = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
    assert clean[3] == pytest.approx(expected)

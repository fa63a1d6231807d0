import keras
import numpy as np
import pytest

from callbacks import Warmup, warmup_schedule


def test_values_follow_the_formula():
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    schedule = Warmup(decay, warmup_steps=20, initial_lr=0.01)
    for step in [0, 1, 7, 19]:
        expected = 0.01 + (0.1 - 0.01) * step / 20
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)
    for step in [20, 25, 40, 123]:
        expected = 0.1 * 0.5 ** ((step - 20) / 10)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_float_schedule_and_no_warmup():
    assert float(Warmup(0.3, warmup_steps=10)(5)) == pytest.approx(0.15)
    assert float(Warmup(0.3, warmup_steps=10)(50)) == pytest.approx(0.3)
    cosine = keras.optimizers.schedules.CosineDecay(0.2, decay_steps=100)
    assert float(Warmup(cosine, warmup_steps=0)(50)) == pytest.approx(0.1, rel=1e-5)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        Warmup(0.1, warmup_steps=-1)
    with pytest.raises(ValueError, match="schedule='fast'"):
        Warmup("fast", warmup_steps=1)


def test_serialize_and_keras_round_trip(tmp_path):
    decay = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=50, alpha=0.1)
    schedule = Warmup(decay, warmup_steps=5, initial_lr=0.001)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    steps = [0, 3, 5, 30, 55, 80]
    np.testing.assert_allclose(
        [float(again(s)) for s in steps], [float(schedule(s)) for s in steps], rtol=1e-6
    )
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    model.fit(np.ones((8, 3)), np.ones((8, 2)), epochs=1, batch_size=4, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    restored = loaded.optimizer._learning_rate
    assert isinstance(restored, Warmup)
    np.testing.assert_allclose(
        [float(restored(s)) for s in steps], [float(schedule(s)) for s in steps], rtol=1e-6
    )
    assert int(loaded.optimizer.iterations) == 2


@pytest.mark.parametrize("name, at_end", [("cosine", 0.0), ("step", 0.1 * 0.1), ("constant", 0.1)])
def test_helpers_span_the_whole_run(name, at_end):
    # 10 epochs of 10 steps, 2 warmup epochs; step decay every 4 epochs of the 80 decay steps
    s = warmup_schedule(
        name, 0.1, epochs=10, steps_per_epoch=10, warmup_epochs=2, step_epochs=4, decay_factor=0.1
    )
    assert float(s(10)) == pytest.approx(0.05)  # half way up the warmup
    assert float(s(20)) == pytest.approx(0.1)  # the peak
    assert float(s(100)) == pytest.approx(at_end, abs=1e-7)


def test_inverse_time_and_exponential_helpers():
    s = warmup_schedule("inverse_time", 0.1, epochs=10, steps_per_epoch=10, inverse_time_k=0.5)
    assert float(s(30)) == pytest.approx(0.1 / (1 + 0.5 * 3), rel=1e-6)  # 1/t decay per epoch
    s = warmup_schedule("exponential", 0.1, epochs=10, steps_per_epoch=10, step_epochs=2, decay_factor=0.5)
    assert float(s(40)) == pytest.approx(0.1 * 0.5**2, rel=1e-6)

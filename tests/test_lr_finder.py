import keras
import numpy as np

from callbacks import find_lr


def test_suggestion_lies_where_the_loss_falls(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 20)).astype(np.float32)
    w = rng.standard_normal((20, 3)).astype(np.float32)
    y = np.argmax(x @ w, axis=1)
    model = keras.Sequential(
        [keras.Input((20,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [v.copy() for v in model.get_weights()]
    result = find_lr(model, x, y, min_lr=1e-5, max_lr=100.0, steps=150, batch_size=32)
    low, high = result.falling_range
    assert low <= result.suggestion <= high
    assert 1e-4 < result.suggestion < 10
    assert result.diverged_at is not None and result.diverged_at > result.suggestion
    i = np.searchsorted(result.learning_rates, result.suggestion)
    assert result.smoothed[i] < result.smoothed[0]  # the loss is falling at the suggested rate
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the model itself is untouched
    assert result.plot(tmp_path / "lr.png").stat().st_size > 1000

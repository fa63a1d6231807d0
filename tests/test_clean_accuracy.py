import keras
import numpy as np
import pytest

from callbacks import CleanTrainAccuracy, fit_diagnosis

# identity "logits": the prediction for row i is argmax(X[i]) = 0, 1, 2, 2, 0
X = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 4], [0, 1, 5], [9, 0, 0]], np.float32)
LABELS = np.array([0, 1, 0, 2, 1])  # rows 0, 1 and 3 right: 3 of 5


def _identity_model(activation=None):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(3, use_bias=False, kernel_initializer="identity", activation=activation),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="categorical_crossentropy")
    return model


@pytest.mark.parametrize("activation", [None, "softmax"])  # logits or probabilities
@pytest.mark.parametrize("one_hot", [False, True])
def test_accuracy_of_known_predictions(activation, one_hot):
    labels = np.eye(3)[LABELS] if one_hot else LABELS
    model = _identity_model(activation)
    history = model.fit(X, np.eye(3)[LABELS], epochs=2, verbose=0, callbacks=[CleanTrainAccuracy(X, labels)])
    assert history.history["train_clean_accuracy"] == [3 / 5, 3 / 5]


def test_labels_as_a_column_and_a_single_output_refused():
    clean = CleanTrainAccuracy(X, LABELS[:, None])
    clean.set_model(_identity_model())
    assert clean.measure() == 3 / 5
    single = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    clean.set_model(single)
    with pytest.raises(ValueError, match="argmax over classes"):
        clean.measure()


def test_overfitting_when_the_gap_passes_ten_points():
    result = fit_diagnosis(0.99, 0.80, chance=0.1)
    assert result["diagnosis"] == "overfitting"
    assert result["gap"] == pytest.approx(0.19)
    assert result["train_clean_accuracy"] == 0.99 and result["val_accuracy"] == 0.80
    assert "regularisation" in result["advice"] and "data" in result["advice"]


def test_underfitting_when_the_training_set_itself_is_not_fitted():
    result = fit_diagnosis(0.60, 0.59, chance=0.1)  # (0.60 - 0.1) / 0.9 = 56% of the way: far below 90%
    assert result["diagnosis"] == "underfitting"
    assert "bigger model" in result["advice"] and "longer schedule" in result["advice"]
    # the rule is relative to chance: 0.905 is 89.4% of the way from 0.1 to 1, but 90.5% from 0
    assert fit_diagnosis(0.905, 0.90, chance=0.1)["diagnosis"] == "underfitting"
    assert fit_diagnosis(0.905, 0.90, chance=0.0)["diagnosis"] == "neither"


def test_neither_when_both_are_high_and_close():
    result = fit_diagnosis(0.97, 0.93, chance=0.1)
    assert result["diagnosis"] == "neither"
    assert result["gap"] == pytest.approx(0.04)
    assert fit_diagnosis(0.95, 0.85, chance=0.1)["diagnosis"] == "neither"  # a gap of exactly 0.10


def test_out_of_range_values_are_refused():
    with pytest.raises(ValueError, match="val_accuracy=1.5"):
        fit_diagnosis(0.9, 1.5)
    with pytest.raises(ValueError, match="chance=1.0"):
        fit_diagnosis(0.9, 0.8, chance=1.0)

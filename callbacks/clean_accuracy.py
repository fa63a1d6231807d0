"""Training accuracy measured like validation accuracy, and what the two together say about the fit."""

from __future__ import annotations

import keras
import numpy as np

from callbacks._cadence import MAX_OVERHEAD, EpochCadence, unmeasured

OVERFIT_GAP = 0.10  # train_clean - val above this: the model memorises what it cannot generalise
FIT_TARGET = 0.90  # share of the accuracy above chance that the training set should reach


def fit_diagnosis(
    train_clean_accuracy: float,
    val_accuracy: float,
    chance: float = 0.0,
    overfit_gap: float = OVERFIT_GAP,
    fit_target: float = FIT_TARGET,
) -> dict:
    """Overfitting, underfitting or neither, from the clean training accuracy and the validation accuracy.

    - ``gap = train_clean_accuracy - val_accuracy``.
    - **overfitting** when ``gap > overfit_gap`` (0.10): the model is clearly better on examples it has
      seen than on new ones (high variance). Advice: more regularisation or more data.
    - otherwise **underfitting** when the model does not fit even its training set: its training accuracy
      reaches less than ``fit_target`` (90%) of the way from chance to perfect,
      ``(train_clean_accuracy - chance) / (1 - chance) < fit_target`` (high bias; 0.91 for 10 classes).
      With a small gap, validation accuracy is then just as low, and only more capacity or training helps.
      Advice: a bigger model, a longer schedule.
    - otherwise **neither**: training fit and generalisation are both fine at these thresholds.

    Both thresholds are rules of thumb for image classifiers such as CIFAR-10's, where a well-sized
    network reaches over 95% clean training accuracy and a gap within a few points; the gap alone does
    not detect underfitting, which is why the second rule looks at the training accuracy itself.

    Args:
        train_clean_accuracy: accuracy on a fixed training slice in inference mode (``CleanTrainAccuracy``).
        val_accuracy: accuracy on held-out data.
        chance: accuracy of guessing, ``1 / num_classes`` (0.1 for CIFAR-10).
        overfit_gap: gap above which it is overfitting.
        fit_target: share of the above-chance accuracy the training set must reach not to be underfitting.

    Returns:
        ``{"diagnosis": "overfitting" | "underfitting" | "neither", "train_clean_accuracy", "val_accuracy",
        "gap", "advice"}`` (plain floats and strings, ready for JSON).

    Example:
        >>> fit_diagnosis(0.99, 0.80, chance=0.1)["diagnosis"]
        'overfitting'
    """
    train, val, chance = float(train_clean_accuracy), float(val_accuracy), float(chance)
    for name, value in (("train_clean_accuracy", train), ("val_accuracy", val)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value}")
    if not 0.0 <= chance < 1.0:
        raise ValueError(f"`chance` must be in [0, 1). Received: chance={chance}")
    gap = train - val
    if gap > overfit_gap:
        diagnosis = "overfitting"
        advice = (
            f"training accuracy beats validation by {gap:.1%}: add regularisation (weight decay, dropout, "
            "augmentation) or more data."
        )
    elif (train - chance) / (1.0 - chance) < fit_target:
        diagnosis = "underfitting"
        advice = (
            f"the model fits only {train:.1%} of its own training set: use a bigger model or a longer "
            "schedule (or a higher learning rate), and regularise less."
        )
    else:
        diagnosis = "neither"
        advice = f"training {train:.1%} and validation {val:.1%} are close and high: the fit looks right."
    return {
        "diagnosis": diagnosis,
        "train_clean_accuracy": train,
        "val_accuracy": val,
        "gap": gap,
        "advice": advice,
    }


def class_indices(y) -> np.ndarray:
    """Integer labels from integer labels (N,) or (N, 1), or from one-hot/soft labels (N, C)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    return y.reshape(len(y)).astype(np.int64)


class CleanTrainAccuracy(keras.callbacks.Callback):
    """Accuracy on a fixed, non-augmented slice of the training set, measured like validation accuracy.

    The ``accuracy`` Keras logs during ``fit`` is not comparable with ``val_accuracy``: it averages over the
    epoch while the weights change, on augmented inputs and with dropout on. This callback instead predicts
    the given slice in inference mode with the end-of-epoch weights, so ``train_clean_accuracy`` minus
    ``val_accuracy`` is the generalisation gap (see :func:`fit_diagnosis`). Pass the slice before any
    augmentation of the input pipeline; augmentation layers inside the model are off in inference mode.
    Predictions are scored by argmax, so logits and probabilities both work. Writes
    ``logs["train_clean_accuracy"]`` at the end of a fit's first and last epochs (the last one feeds
    :func:`fit_diagnosis`) and of every ``every_n_epochs``-th epoch, skipping an epoch when measuring would
    take more than ``max_overhead`` of the training time (see ``EpochCadence``); a skipped epoch's value is
    ``NaN`` (not measured), never a repeat of an old one.

    Args:
        x: training inputs (a few thousand examples are plenty; fixed so that epochs compare).
        y: their labels: integers (N,) or (N, 1), or one-hot (N, C).
        every_n_epochs: measure every this many epochs.
        batch_size: prediction batch size.
        max_overhead: the most of the fit's wall time measuring may take (0.005 = 0.5%), or None to
            measure at every ``every_n_epochs``-th epoch whatever it costs.

    Example:
        >>> clean = CleanTrainAccuracy(x_train[:2000], y_train[:2000])
        >>> history = model.fit(x_train, y_train, validation_data=(x_val, y_val), callbacks=[clean])
        >>> fit_diagnosis(history.history["train_clean_accuracy"][-1], history.history["val_accuracy"][-1],
        ...               chance=0.1)
    """

    def __init__(
        self,
        x,
        y,
        every_n_epochs: int = 1,
        batch_size: int = 256,
        max_overhead: float | None = MAX_OVERHEAD,
    ):
        super().__init__()
        self.cadence = EpochCadence(every_n_epochs, max_overhead)
        self.x = np.asarray(x)
        self.labels = class_indices(y)
        if len(self.x) != len(self.labels) or len(self.x) == 0:
            raise ValueError(
                f"`x` and `y` must hold the same, non-zero number of examples. Received: {len(self.x)} and "
                f"{len(self.labels)}"
            )
        self.batch_size = batch_size
        self.latest: dict[str, float] = {}

    def measure(self) -> float:
        """The clean training accuracy now (call ``set_model`` first outside ``fit``)."""
        scores = self.model.predict(self.x, batch_size=self.batch_size, verbose=0)
        scores = np.asarray(scores[0] if isinstance(scores, (list, tuple)) else scores)
        if scores.ndim != 2 or scores.shape[1] < 2:
            raise ValueError(
                "CleanTrainAccuracy scores by argmax over classes, which needs (N, classes >= 2) outputs. "
                f"Received: predictions of shape {scores.shape}"
            )
        return float(np.mean(np.argmax(scores, axis=1) == self.labels))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        last = epoch == (self.params or {}).get("epochs", 0) - 1
        if self.cadence.due(epoch, force=last):
            self.latest = {"train_clean_accuracy": self.cadence.timed(self.measure)}
            logs.update(self.latest)
        else:
            logs.update(unmeasured(self.latest))

    def on_train_begin(self, logs=None):
        self.cadence.start()

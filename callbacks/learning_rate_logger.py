"""Log the learning rate each epoch, whatever produces it."""

from __future__ import annotations

import keras

from callbacks.optimizer_utils import current_learning_rate


class LearningRateLogger(keras.callbacks.Callback):
    """Write the learning rate to ``logs["learning_rate"]`` at the end of every epoch.

    The value is the rate of the epoch's last optimizer step, read from the optimizer itself, so it works
    with a float rate, any ``LearningRateSchedule`` (``Warmup`` included) and a mixed-precision
    ``LossScaleOptimizer``. ``learning_rate`` is the key Keras's own ``ReduceLROnPlateau`` and
    ``LearningRateScheduler`` write, so History, CSVLogger and TensorBoard show it as usual; put this
    callback before ``CSVLogger`` in the list.

    Example:
        >>> model.fit(x, y, epochs=10, callbacks=[LearningRateLogger()])
        >>> history.history["learning_rate"]
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)

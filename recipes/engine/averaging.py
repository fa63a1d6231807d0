"""``optimizer.ema``: a run that trains with Keras's moving average of the weights ends on the average.

The optimizer (``use_ema=True``) keeps the average beside the raw weights, in its own state, so the
per-epoch checkpoints save it and a resumed run continues it. ``model.fit`` puts it in the model when it
returns, early stops (the budget's keeper, the NaN guard, which restores averages with weights) included.
:func:`finish_ema` then measures the batch-norm statistics for the averaged weights (Keras averages only
trainable variables; the moving mean and variance describe the raw weights' activations), on the first
``BN_IMAGES`` training images without augmentation, in batches of the training batch: the same images
and batches ``val_accuracy_ema`` uses each epoch, so its last value is the final model's. The test
evaluation, ``model.keras`` and, for a run that completed, its last checkpoint then hold that model
(raw weights are gone from it; the earlier checkpoints keep them, and resuming from one continues the
same average).
"""

from __future__ import annotations

from pathlib import Path

import keras

from callbacks import EMAValidation, recompute_batch_norm, use_averaged_weights
from recipes.engine.checkpoint import numbered_checkpoints, save_model

BN_IMAGES = 2000  # training images for the averaged weights' batch-norm statistics (16 batches of 128)


def bn_images(data):
    """The training images the batch-norm statistics of the averaged weights are measured on."""
    return data.x_train[:BN_IMAGES]


def ema_validation(cfg, data, batch_size: int, eval_batch_size: int) -> list:
    """``[EMAValidation]`` logging ``val_accuracy_ema`` when ``optimizer.ema`` is on and there are
    validation images; else ``[]``."""
    if not cfg.optimizer.ema or not len(data.x_val):
        return []
    return [EMAValidation(data.x_val, data.y_val, bn_images(data), batch_size, eval_batch_size)]


def finish_ema(model: keras.Model, data, batch_size: int) -> bool:
    """Put the optimizer's averaged weights in ``model`` (``fit`` has already, unless it had nothing left to
    train: doing it again changes nothing) and measure its batch-norm statistics for them. False, and the
    model untouched, when the optimizer keeps no average."""
    if not use_averaged_weights(model):
        return False
    recompute_batch_norm(model, bn_images(data), batch_size)
    return True


def save_final_checkpoint(model: keras.Model, out_dir: Path, epochs_completed: int) -> None:
    """Write ``model`` (averaged) over the run's checkpoint of ``epochs_completed``, so that the checkpoint a
    finished run ends on holds the weights it was evaluated with; its optimizer state is unchanged."""
    for epoch, path in numbered_checkpoints(Path(out_dir) / "checkpoints"):
        if epoch == epochs_completed:
            save_model(model, path)

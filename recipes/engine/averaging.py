"""The weights a run ends on: ``optimizer.ema``'s average, and batch-norm statistics measured for them.

The optimizer (``use_ema=True``) keeps the average beside the raw weights, in its own state, so the
per-epoch checkpoints save it and a resumed run continues it. ``model.fit`` puts it in the model when it
returns, early stops (the budget's keeper, the NaN guard, which restores averages with weights) included.

Batch norm's moving mean and variance follow the activations of the weights that trained last, at the
layer's momentum (``fast``: 0.6, so about the last three batches). Two settings end a run on other weights:
``optimizer.ema`` (Keras averages trainable variables only) and ``optimizer.lookahead_every`` (the last
planned step pulls the weights back to the slow copy). :func:`finish_weights` then measures the statistics
again (``trainer.bn_refresh``; ``auto`` does for those two), as SWA does, on the first ``BN_IMAGES``
training images without augmentation, in batches of the training batch: the same images and batches
``val_accuracy_ema`` uses each epoch, so its last value is the final model's. The same images on every
replica and worker give every copy the same statistics. The test evaluation, ``model.keras`` and, for a run
that completed, its last checkpoint then hold that model (with ``optimizer.ema`` the raw weights are gone
from it; the earlier checkpoints keep them, and resuming from one continues the same average). A run the
NaN guard stopped keeps the statistics of the snapshot it went back to, unless it ends on an average; a run
a budget stopped before its last planned step (no final lookahead switch) is measured again all the same,
which does no harm. The images run through in training mode, as in SWA's ``update_bn``: a dropout layer
draws its masks, so the statistics depend on the weights, the images and those draws.
"""

from __future__ import annotations

from pathlib import Path

import keras

from callbacks import EMAValidation, recompute_batch_norm, use_averaged_weights
from recipes.engine.checkpoint import numbered_checkpoints, save_model

BN_IMAGES = 2000  # training images the final statistics are measured on (8 batches of 256)


def refreshes_batch_norm(cfg) -> bool:
    """Whether the run ends by measuring batch norm's statistics again (``trainer.bn_refresh``; ``auto``:
    with ``optimizer.ema`` or ``optimizer.lookahead_every``, whose final weights the statistics did not
    follow)."""
    setting = cfg.trainer.bn_refresh
    if setting == "auto":
        return bool(cfg.optimizer.ema or cfg.optimizer.lookahead_every)
    return setting == "true"


def refresh_images(cfg, data):
    """The training images :func:`finish_weights` measures the statistics on; none when it does not."""
    return data.x_train[: BN_IMAGES if refreshes_batch_norm(cfg) else 0]


def ema_validation(cfg, data, batch_size: int, eval_batch_size: int) -> list:
    """``[EMAValidation]`` logging ``val_accuracy_ema`` when ``optimizer.ema`` is on and there are
    validation images; else ``[]``. With ``trainer.bn_refresh=false`` the average is validated with the
    raw weights' statistics, as the run ends."""
    if not cfg.optimizer.ema or not len(data.x_val):
        return []
    return [EMAValidation(data.x_val, data.y_val, refresh_images(cfg, data), batch_size, eval_batch_size)]


def finish_weights(model: keras.Model, cfg, data, batch_size: int, diverged: bool = False) -> dict:
    """Put the optimizer's averaged weights in ``model`` (``fit`` has already, unless it had nothing left to
    train: doing it again changes nothing), then, when :func:`refreshes_batch_norm`, measure its
    batch-norm statistics on :func:`refresh_images`; not for a ``diverged`` run (the NaN guard restored
    weights and statistics that belong together) unless it ends on the average. Returns
    ``{"averaged": bool, "bn_refresh_images": n}`` (n = 0: the statistics as training left them)."""
    averaged = use_averaged_weights(model)
    images = refresh_images(cfg, data) if averaged or not diverged else data.x_train[:0]
    refreshed = recompute_batch_norm(model, images, batch_size) > 0
    return {"averaged": averaged, "bn_refresh_images": len(images) if refreshed else 0}


def save_final_checkpoint(model: keras.Model, out_dir: Path, epochs_completed: int) -> None:
    """Write ``model`` (averaged, statistics measured again) over the run's checkpoint of
    ``epochs_completed``, so that the checkpoint a finished run ends on holds the weights it was evaluated
    with; its optimizer state is unchanged."""
    for epoch, path in numbered_checkpoints(Path(out_dir) / "checkpoints"):
        if epoch == epochs_completed:
            save_model(model, path)

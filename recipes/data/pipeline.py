"""``tf.data`` input pipelines: shuffled, augmented training batches that are reproducible per epoch.

Augmentation runs on whole batches (vectorised gathers, no per-image Python or ``map_fn``) with stateless
random ops seeded by ``(seed, epoch, step)``. An epoch's batches are therefore the same whether the run
started at epoch 0 or resumed at that epoch, which keeps resumed runs on the same trajectory.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def augment_batch(
    images: tf.Tensor,
    seed: tf.Tensor,
    *,
    padding: int = 4,
    flip: bool = True,
    cutout: int = 0,
    pad_mode: str = "zeros",
    mirror: tf.Tensor | None = None,
) -> tf.Tensor:
    """Random crop after padding (zeros or reflection), horizontal flip and cutout, drawn per image.

    ``images`` is a float batch (B, H, W, C); ``seed`` a shape-[2] int tensor for the stateless ops.
    ``mirror`` (B booleans), when given, decides the flips instead of a coin.
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if padding > 0:
        mode = "REFLECT" if pad_mode == "reflect" else "CONSTANT"
        padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]], mode=mode)
        offsets = tf.random.stateless_uniform([b, 2], seeds[0], 0, 2 * padding + 1, dtype=tf.int32)
        rows = offsets[:, :1] + tf.range(h)[None, :]
        cols = offsets[:, 1:] + tf.range(w)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    if flip:
        if mirror is None:
            mirror = tf.random.stateless_uniform([b], seeds[1]) < 0.5
        images = tf.where(tf.reshape(mirror, [-1, 1, 1, 1]), tf.reverse(images, axis=[2]), images)
    if cutout > 0:
        cy = tf.random.stateless_uniform([b, 1], seeds[2], 0, h, dtype=tf.int32)
        cx = tf.random.stateless_uniform([b, 1], seeds[3], 0, w, dtype=tf.int32)
        # a cutout x cutout square whose top-left corner is (cy, cx) - cutout // 2, clipped at the border
        top, left = cy - cutout // 2, cx - cutout // 2
        ys, xs = tf.range(h)[None, :], tf.range(w)[None, :]
        in_y = (ys >= top) & (ys < top + cutout)
        in_x = (xs >= left) & (xs < left + cutout)
        hole = in_y[:, :, None] & in_x[:, None, :]
        images = tf.where(hole[..., None], tf.zeros_like(images), images)
    return images


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    augment: bool = True,
    padding: int = 4,
    flip: bool = True,
    cutout: int = 0,
    alternate_flip: bool = False,
    pad_mode: str = "zeros",
    steps_per_epoch: int | None = None,
) -> tf.data.Dataset:
    """Batches for epochs ``first_epoch .. epochs-1``: a seeded permutation per epoch, the last partial
    batch dropped, images augmented per batch, labels one-hot (for label smoothing).

    ``alternate_flip`` (airbench): each image is flipped at random in the first epoch and the opposite
    way in every later epoch, so consecutive epochs see both orientations. ``steps_per_epoch`` shortens
    every epoch to that many batches (a time budget's plan).
    """
    n = len(x)
    batch_size = min(batch_size, n)
    images = tf.constant(x)
    labels = tf.constant(y.astype(np.int32))
    first_flips = tf.random.stateless_uniform([n], tf.constant([seed, 0x5EED], tf.int64)) < 0.5

    def epoch_batches(epoch):
        order = tf.argsort(tf.random.stateless_uniform([n], tf.stack([tf.cast(seed, tf.int64), epoch])))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True)
        if steps_per_epoch is not None:
            batches = batches.take(steps_per_epoch)
        return batches.enumerate().map(lambda step, idx: (epoch, step, idx))

    def load(epoch, step, idx):
        xb = tf.cast(tf.gather(images, idx), tf.float32)
        yb = tf.one_hot(tf.gather(labels, idx), num_classes)
        if augment:
            mirror = None
            if flip and alternate_flip:
                mirror = tf.not_equal(tf.gather(first_flips, idx), tf.equal(epoch % 2, 1))
            xb = augment_batch(
                xb,
                tf.stack([epoch * 1_000_003 + step, tf.cast(seed, tf.int64)]),
                padding=padding,
                flip=flip,
                cutout=cutout,
                pad_mode=pad_mode,
                mirror=mirror,
            )
        return xb, yb

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def recipe_train_dataset(
    cfg,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    first_epoch: int = 0,
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
) -> tf.data.Dataset:
    """:func:`train_dataset` with a recipe config's seed, epochs (unless ``epochs`` is given: a budget's
    upper bound) and ``data.*`` augmentation settings."""
    d = cfg.data
    return train_dataset(
        x,
        y,
        num_classes=num_classes,
        batch_size=batch_size,
        seed=cfg.trainer.seed,
        first_epoch=first_epoch,
        epochs=epochs or cfg.trainer.epochs,
        augment=d.augment,
        padding=d.crop_padding,
        flip=d.flip,
        cutout=d.cutout,
        alternate_flip=d.alternate_flip,
        pad_mode=d.pad_mode,
        steps_per_epoch=steps_per_epoch,
    )


def eval_dataset(x: np.ndarray, y: np.ndarray, *, num_classes: int, batch_size: int) -> tf.data.Dataset:
    """Un-augmented batches in order, every example kept."""
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).batch(batch_size)
    ds = ds.map(
        lambda xb, yb: (tf.cast(xb, tf.float32), tf.one_hot(yb, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // min(batch_size, n))

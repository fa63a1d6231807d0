"""``tf.data`` input pipelines: shuffled, augmented training batches that are reproducible per epoch.

Augmentation runs on whole batches (vectorised gathers, no per-image Python or ``map_fn``) with stateless
random ops seeded by ``(seed, epoch, step)``. An epoch's batches are therefore the same whether the run
started at epoch 0 or resumed at that epoch, which keeps resumed runs on the same trajectory.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def draw_augmentation(
    batch: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    *,
    padding: int = 4,
    flip: bool = True,
    cutout: int = 0,
    mirror: tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """Each image's random augmentation, drawn from ``seed`` (a shape-[2] int tensor), all int32:
    ``offset`` (B, 2) of the crop in the padded image, ``mirror`` (B,) flips (1: flip), ``hole`` (B, 2)
    cutout corners; only the keys that ``padding``, ``flip`` and ``cutout`` switch on. ``mirror``, when
    given, decides the flips.

    A few numbers per image: cheap to draw in the input pipeline and to send to a device, which then does
    the pixel work (:func:`apply_augmentation`). Per image, so a batch split over replicas keeps its draws.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    params = {}
    if padding > 0:
        params["offset"] = tf.random.stateless_uniform(
            [batch, 2], seeds[0], 0, 2 * padding + 1, dtype=tf.int32
        )
    if flip:
        if mirror is None:
            mirror = tf.random.stateless_uniform([batch], seeds[1]) < 0.5
        params["mirror"] = tf.cast(mirror, tf.int32)  # numbers: a strategy may average a batch's tensors
    if cutout > 0:
        cy = tf.random.stateless_uniform([batch, 1], seeds[2], 0, height, dtype=tf.int32)
        cx = tf.random.stateless_uniform([batch, 1], seeds[3], 0, width, dtype=tf.int32)
        params["hole"] = tf.concat([cy, cx], axis=1) - cutout // 2  # top-left corner, may lie outside
    return params


def apply_augmentation(
    images: tf.Tensor,
    params: dict[str, tf.Tensor],
    *,
    padding: int = 4,
    cutout: int = 0,
    pad_mode: str = "zeros",
) -> tf.Tensor:
    """Crop, flip and cut out a float batch (B, H, W, C) as :func:`draw_augmentation`'s ``params`` say:
    vectorised gathers and selects, no per-image loop (it runs in a ``tf.data`` map or in a train step)."""
    shape = tf.shape(images)
    h, w = shape[1], shape[2]
    if "offset" in params:
        mode = "REFLECT" if pad_mode == "reflect" else "CONSTANT"
        padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]], mode=mode)
        offsets = params["offset"]
        rows = offsets[:, :1] + tf.range(h)[None, :]
        cols = offsets[:, 1:] + tf.range(w)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    if "mirror" in params:
        mirror = tf.reshape(tf.cast(params["mirror"], tf.bool), [-1, 1, 1, 1])
        images = tf.where(mirror, tf.reverse(images, axis=[2]), images)
    if "hole" in params:
        top, left = params["hole"][:, :1], params["hole"][:, 1:]
        ys, xs = tf.range(h)[None, :], tf.range(w)[None, :]
        in_y = (ys >= top) & (ys < top + cutout)
        in_x = (xs >= left) & (xs < left + cutout)
        hole = in_y[:, :, None] & in_x[:, None, :]
        images = tf.where(hole[..., None], tf.zeros_like(images), images)
    return images


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
    params = draw_augmentation(
        shape[0], shape[1], shape[2], seed, padding=padding, flip=flip, cutout=cutout, mirror=mirror
    )
    return apply_augmentation(images, params, padding=padding, cutout=cutout, pad_mode=pad_mode)


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
    on_device: bool = False,
) -> tf.data.Dataset:
    """Batches for epochs ``first_epoch .. epochs-1``: a seeded permutation per epoch, the last partial
    batch dropped, images augmented per batch, labels one-hot (for label smoothing).

    ``alternate_flip`` (airbench): each image is flipped at random in the first epoch and the opposite
    way in every later epoch, so consecutive epochs see both orientations. ``steps_per_epoch`` shortens
    every epoch to that many batches (a time budget's plan).

    ``on_device`` (with ``augment``): the pipeline only draws each image's augmentation and yields
    ``((images, params), labels)``, the images as stored (uint8 for CIFAR-10: a quarter of float32's
    bytes to copy to an accelerator) and the :func:`draw_augmentation` params, for a train step to apply
    (:mod:`recipes.engine.device_augment`). It applies the very same crops and flips as the pipeline.
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
        stored = tf.gather(images, idx)
        yb = tf.one_hot(tf.gather(labels, idx), num_classes)
        if not augment:
            return tf.cast(stored, tf.float32), yb
        mirror = None
        if flip and alternate_flip:
            mirror = tf.not_equal(tf.gather(first_flips, idx), tf.equal(epoch % 2, 1))
        shape = tf.shape(stored)
        params = draw_augmentation(
            shape[0],
            shape[1],
            shape[2],
            tf.stack([epoch * 1_000_003 + step, tf.cast(seed, tf.int64)]),
            padding=padding,
            flip=flip,
            cutout=cutout,
            mirror=mirror,
        )
        if on_device:
            return (stored, params), yb
        xb = apply_augmentation(
            tf.cast(stored, tf.float32), params, padding=padding, cutout=cutout, pad_mode=pad_mode
        )
        return xb, yb

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    return without_autotune_wait(ds)


def without_autotune_wait(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with tf.data's autotuning model off. With it on (TF 2.21), deleting an iterator waits for
    the tuner's next round, whose period grows the longer the iterator ran: ``model.fit`` returned 3-7 s
    after its last step of a 10-40 step fit of ``fast`` and 12 s after a 2-minute iteration (2 vCPU
    EPYC), time a budget run loses after calibration and training. Off, an ``AUTOTUNE`` map runs
    ``min(16, cores)`` batches at once (each a whole batch of images: ample) and the prefetch buffer
    still grows on demand: the same steps per second there."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


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
    on_device: bool = False,
) -> tf.data.Dataset:
    """:func:`train_dataset` with a recipe config's seed, epochs (unless ``epochs`` is given: a budget's
    upper bound) and ``data.*`` augmentation settings; ``on_device``: the augmentation is left to the
    train step (see :func:`train_dataset`)."""
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
        on_device=on_device,
    )


def eval_dataset(x: np.ndarray, y: np.ndarray, *, num_classes: int, batch_size: int) -> tf.data.Dataset:
    """Un-augmented batches in order, every example kept."""
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).batch(batch_size)
    ds = ds.map(
        lambda xb, yb: (tf.cast(xb, tf.float32), tf.one_hot(yb, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return without_autotune_wait(ds.prefetch(tf.data.AUTOTUNE))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // min(batch_size, n))

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from recipes.data.pipeline import augment_batch, eval_dataset, train_dataset


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_each_epoch_is_the_same_whether_started_or_resumed():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 50)
    full = _batches(train_dataset(x, y, num_classes=10, batch_size=16, seed=3, first_epoch=0, epochs=3))
    resumed = _batches(train_dataset(x, y, num_classes=10, batch_size=16, seed=3, first_epoch=2, epochs=3))
    assert len(full) == 9 and len(resumed) == 3  # 50 // 16 = 3 batches an epoch
    for (a, b), (c, d) in zip(full[6:], resumed):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert not np.array_equal(full[0][0], full[3][0])  # epochs differ
    other = _batches(train_dataset(x, y, num_classes=10, batch_size=16, seed=4, first_epoch=0, epochs=1))
    assert not np.array_equal(full[0][0], other[0][0])  # seeds differ


def test_labels_stay_with_their_images():
    x = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(3, axis=3)
    y = np.arange(40) % 10
    for xb, yb in _batches(
        train_dataset(x, y, num_classes=10, batch_size=8, seed=0, first_epoch=0, epochs=1, augment=False)
    ):
        np.testing.assert_array_equal(xb[:, 0, 0, 0].astype(int) % 10, yb.argmax(1))


def test_crop_is_a_shift_of_the_zero_padded_image_and_flip_mirrors():
    image = np.arange(1, 6 * 6 * 3 + 1, dtype=np.float32).reshape(1, 6, 6, 3)
    batch = tf.constant(np.repeat(image, 200, axis=0))
    out = augment_batch(batch, tf.constant([1, 2], tf.int64), padding=2, flip=True).numpy()
    padded = np.pad(image[0], ((2, 2), (2, 2), (0, 0)))
    views = {}
    for dy in range(5):
        for dx in range(5):
            view = padded[dy : dy + 6, dx : dx + 6]
            views[view.tobytes()] = (dy, dx, False)
            views[view[:, ::-1].tobytes()] = (dy, dx, True)
    seen = [views[o.tobytes()] for o in out]  # KeyError if an output is not a shifted/mirrored view
    assert len(set(seen)) > 25  # offsets and flips vary per image
    assert 0.35 < np.mean([s[2] for s in seen]) < 0.65


def test_cutout_zeroes_one_square_per_image():
    batch = tf.ones((64, 16, 16, 3))
    out = augment_batch(batch, tf.constant([5, 6], tf.int64), padding=0, flip=False, cutout=4).numpy()
    zeros = (out == 0).all(axis=3)
    counts = zeros.sum(axis=(1, 2))
    assert counts.max() == 16 and counts.min() >= 4  # 4x4, clipped at the border
    for z in zeros:
        rows, cols = np.nonzero(z)
        assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4


def test_the_pipelines_turn_off_the_autotuner_whose_teardown_stalls_fit():
    # TF 2.21: with tf.data's autotuning model on, deleting an iterator waits for the tuner's next round
    # (model.fit returned 3-12 s after its last step); the speed without it was the same (benchmarks).
    x, y = np.zeros((20, 4, 4, 3), np.uint8), np.zeros(20, int)
    train = train_dataset(x, y, num_classes=10, batch_size=8, seed=0, first_epoch=0, epochs=1)
    evaluation = eval_dataset(x, y, num_classes=10, batch_size=8)
    for ds in (
        train,
        evaluation,
        train_dataset(x, y, num_classes=10, batch_size=8, seed=0, first_epoch=0, epochs=1, on_device=True),
    ):
        assert ds.options().autotune.enabled is False
    assert len(list(train)) == 2 and len(list(evaluation)) == 3  # and they still yield every batch


@pytest.mark.parametrize(
    "settings, digest",
    [
        (dict(padding=4), "7890847bd67f1e600af3c422db6f8c354acd96ba1333b0b7334dda6fbc7fdbab"),
        (
            dict(padding=2, pad_mode="reflect", alternate_flip=True, cutout=5),
            "5e19c8e24ed27c2fbd345cf7c01e3bf6ac7d48a66f619431086a7aea999f8ca5",
        ),
    ],
)
def test_the_batches_are_those_of_the_pipeline_before_draws_and_pixels_were_split(settings, digest):
    # SHA-256 of two epochs' batches as the pipeline of commit 819e193 (one augment_batch doing both
    # the draws and the pixel work) produced them: runs resumed across the change stay on their trajectory
    x = (np.arange(48 * 10 * 10 * 3) % 251).astype(np.uint8).reshape(48, 10, 10, 3)
    y = np.arange(48) % 10
    ds = train_dataset(x, y, num_classes=10, batch_size=16, seed=11, first_epoch=0, epochs=2, **settings)
    h = hashlib.sha256()
    for xb, yb in ds:
        h.update(xb.numpy().tobytes())
        h.update(yb.numpy().tobytes())
    assert h.hexdigest() == digest

"""Build the bundled CIFAR-10 sample (recipes/data/sample/cifar10_sample.npz) from the full archive.

The sample holds the first 5,000 training and first 1,000 test images of the official batches (the
shared copy's training order is a fixed shuffle, so every class is present), encoded as JPEG at
quality 95 to stay under 8 MB. It is stored as plain arrays (concatenated JPEG bytes plus offsets), so it
loads with ``allow_pickle=False``.

    python scripts/make_sample.py ../shared/data/cifar10/cifar-10-python.tar.gz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.data import SAMPLE_PATH, read_cifar  # noqa: E402

N_TRAIN, N_TEST, QUALITY = 5000, 1000, 95


def encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    blobs = [tf.io.encode_jpeg(image, quality=QUALITY, chroma_downsampling=False).numpy() for image in images]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="cifar-10-python.tar.gz or cifar-10-batches-py/")
    parser.add_argument("--out", default=str(SAMPLE_PATH))
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = read_cifar(args.source)
    train_jpeg, train_offsets = encode(x_train[:N_TRAIN])
    test_jpeg, test_offsets = encode(x_test[:N_TEST])
    np.savez(
        args.out,
        train_jpeg=train_jpeg,
        train_offsets=train_offsets,
        train_labels=y_train[:N_TRAIN].astype(np.uint8),
        test_jpeg=test_jpeg,
        test_offsets=test_offsets,
        test_labels=y_test[:N_TEST].astype(np.uint8),
    )
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {N_TRAIN} train + {N_TEST} test images, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

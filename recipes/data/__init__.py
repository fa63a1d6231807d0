"""Data for the recipes: where images come from (CIFAR-10 archive or folder, the bundled sample, a user's
image folder), the validated train / validation / test split, and the ``tf.data`` input pipeline."""

from recipes.data.cifar import CIFAR10_CLASSES, read_cifar
from recipes.data.load import load_data
from recipes.data.sample import SAMPLE_PATH, read_sample
from recipes.data.splits import DataError, ImageData, split, validate

__all__ = [
    "CIFAR10_CLASSES",
    "DataError",
    "ImageData",
    "SAMPLE_PATH",
    "load_data",
    "read_cifar",
    "read_sample",
    "split",
    "validate",
]

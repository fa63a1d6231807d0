"""A user's own images, one sub-folder per class.

The rules are those of ``keras.utils.image_dataset_from_directory``, whose pixels these match exactly:
the classes are the sub-folders whose names do not start with '.', in sorted order; a class holds every
file under its folder (nested folders included) whose name ends in .bmp, .gif, .jpeg, .jpg or .png in any
case; other files, and files directly in ``DIR``, are ignored; each image is decoded to RGB (a GIF's first
frame) and resized bilinearly to ``image_size`` without cropping. Unlike Keras, a class folder without
images is refused instead of becoming a class nothing teaches, a file that does not decode is named
instead of stopping the load with TensorFlow's message, and a test folder must have the same classes as
its training folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from recipes.data.splits import DataError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # those image_dataset_from_directory reads
_CHUNK = 256  # images decoded per step; bounds the float32 resize output held at once


def read_folder(path: str | None, image_size: int, seed: int) -> tuple[tuple[np.ndarray, ...], list[str]]:
    """Images in class sub-folders. ``DIR/train`` and ``DIR/test`` are used when both exist; otherwise
    a seeded 10% of ``DIR`` is held out as the test set."""
    if not path:
        raise DataError("data.name=folder needs data.path=DIR (a folder with one sub-folder per class)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={root}: no such folder")

    if (root / "train").is_dir() and (root / "test").is_dir():
        names = class_folders(root / "train")
        test_names = class_folders(root / "test")
        if test_names != names:
            only_train = sorted(set(names) - set(test_names))
            only_test = sorted(set(test_names) - set(names))
            raise DataError(
                f"data.path={root}: train/ and test/ must have the same class sub-folders; "
                + "; ".join(
                    f"only in {where}/: {', '.join(found)}"
                    for where, found in (("train", only_train), ("test", only_test))
                    if found
                )
            )
        x_train, y_train = load_images(root / "train", names, image_size)
        x_test, y_test = load_images(root / "test", names, image_size)
    else:
        names = class_folders(root)
        x, y = load_images(root, names, image_size)
        order = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, len(x) // 10)
        test, train = order[:n_test], order[n_test:]
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    return (x_train, y_train, x_test, y_test), names


def class_folders(directory: Path) -> list[str]:
    """The class names: ``directory``'s sub-folders not starting with '.', sorted (as Keras orders them)."""
    names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(
            f"data.path={directory}: no class sub-folders; put each class's images in a sub-folder named "
            "after the class"
        )
    return names


def index_images(directory: Path, names: list[str]) -> tuple[list[str], np.ndarray]:
    """Every image file of every class, in Keras's order (class, then folder, then file name), and its
    label. A class folder with no image file is refused, as is an image name that is not a file."""
    paths, labels = [], []
    for label, name in enumerate(names):
        found, ignored = [], 0
        walk = sorted(os.walk(directory / name), key=lambda entry: entry[0])  # Keras's order
        for folder, _, files in walk:
            for file in sorted(files):
                if not file.lower().endswith(IMAGE_EXTENSIONS):
                    ignored += 1
                    continue
                image = os.path.join(folder, file)
                if not os.path.isfile(image):  # a broken link, a pipe, a device: reading it could hang
                    raise DataError(
                        f"data.path={directory}: {image} is not a regular file; replace it with an image or "
                        "remove it"
                    )
                found.append(image)
        if not found:
            others = f" ({ignored} other files, which are ignored)" if ignored else ""
            raise DataError(
                f"data.path={directory}: class folder '{name}' holds no images{others}; add "
                f"{', '.join(IMAGE_EXTENSIONS)} files to it or remove it"
            )
        paths += found
        labels += [label] * len(found)
    return paths, np.asarray(labels, np.int32)


def load_images(directory: Path, names: list[str], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, image_size, image_size, 3) uint8 and labels (N,) int32 of ``directory``'s classes.

    The files are decoded in parallel by ``tf.data``, as Keras does; only when a file fails are they
    decoded one at a time, from the failing chunk on, to name it.
    """
    import tensorflow as tf

    paths, labels = index_images(directory, names)

    def decode(contents):
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        image = tf.image.resize(image, (image_size, image_size), method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)  # round half to even, as np.rint

    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(lambda p: decode(tf.io.read_file(p)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    chunks: list[np.ndarray] = []
    try:
        for chunk in ds.batch(_CHUNK).as_numpy_iterator():
            chunks.append(chunk)
    except tf.errors.OpError as e:
        done = sum(len(c) for c in chunks)
        for image in paths[done:] + paths[:done]:  # the failure is in the next chunk; the rest in case
            _decode_one(image, decode, directory)
        raise DataError(f"data.path={directory}: the images cannot be loaded ({_tf_reason(e)})") from None
    return np.concatenate(chunks), labels


def _decode_one(image: str, decode, directory: Path) -> None:
    """Decode one file as :func:`load_images` does, raising a :class:`DataError` that names it."""
    import tensorflow as tf

    fix = "replace it with a valid image or remove it"
    try:
        with open(image, "rb") as f:
            contents = f.read()
    except OSError as e:
        raise DataError(f"data.path={directory}: {image} cannot be read ({e.strerror or e}); {fix}") from None
    try:
        decode(tf.constant(contents))
    except tf.errors.OpError as e:
        raise DataError(
            f"data.path={directory}: {image} is not a readable image ({_tf_reason(e)}); {fix}"
        ) from None


def _tf_reason(error) -> str:
    """TensorFlow's error message as a short phrase, without its op and function names."""
    text = (error.message or type(error).__name__).strip().splitlines()[0]
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text)
    return text[:200].rstrip(" .")

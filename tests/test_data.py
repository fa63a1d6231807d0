import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from recipes.config import DataConfig
from recipes.data import (
    CIFAR10_CLASSES,
    SAMPLE_PATH,
    DataError,
    load_data,
    read_cifar,
    split,
)
from recipes.data.cifar import parse_batch

PER_BATCH = 20


def official_batch(seed: int, n: int = PER_BATCH, protocol: int = 2) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A batch in the official format: channel-first rows of 3072 uint8, a list of labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    batch = {
        b"batch_label": b"test batch",
        b"labels": [int(v) for v in labels],
        b"data": rows,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    return pickle.dumps(batch, protocol=protocol), images, labels


def make_cifar(root: Path, archive: bool, members: dict[str, bytes] | None = None):
    """Write the official layout (folder or tar.gz); returns the path and the expected arrays."""
    files, train_x, train_y = {}, [], []
    for i in range(1, 6):
        data, x, y = official_batch(i)
        files[f"data_batch_{i}"] = data
        train_x.append(x)
        train_y.append(y)
    files["test_batch"], test_x, test_y = official_batch(99)
    files["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    files.update(members or {})
    expected = (np.concatenate(train_x), np.concatenate(train_y), test_x, test_y)
    if archive:
        path = root / "cifar-10-python.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(
                    name if name.startswith(("/", "..")) else f"cifar-10-batches-py/{name}"
                )
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path, expected
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, expected


@pytest.mark.parametrize("archive", [True, False])
def test_reads_the_official_layout(tmp_path, archive):
    path, (x_train, y_train, x_test, y_test) = make_cifar(tmp_path, archive)
    got = read_cifar(path)
    np.testing.assert_array_equal(got[0], x_train)
    np.testing.assert_array_equal(got[1], y_train)
    np.testing.assert_array_equal(got[2], x_test)
    np.testing.assert_array_equal(got[3], y_test)
    assert got[0].shape == (5 * PER_BATCH, 32, 32, 3) and got[0].dtype == np.uint8


def test_folder_holding_the_archive_is_accepted(tmp_path):
    make_cifar(tmp_path, archive=True)
    assert len(read_cifar(tmp_path)[0]) == 5 * PER_BATCH


def test_protocol_4_batches_load(tmp_path):
    data, x, y = official_batch(1, protocol=4)
    images, labels = parse_batch(data, "b")
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)


class Exploit:
    """Unpickling this calls os.system: what a hostile 'CIFAR batch' would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": Exploit(marker), b"labels": [0]})
    with pytest.raises(DataError, match="refused to load .*system"):
        parse_batch(payload, "data_batch_1")
    assert not marker.exists()
    # the same inside a real archive, through the public reader
    path, _ = make_cifar(tmp_path, archive=True, members={"data_batch_3": payload})
    with pytest.raises(DataError, match="not a genuine CIFAR-10 batch"):
        read_cifar(path)
    assert not marker.exists()
    # sanity: the payload really does run code when unpickled naively
    pickle.loads(payload)
    assert marker.exists()


def test_truncated_archive_gives_one_clear_line(tmp_path):
    path, _ = make_cifar(tmp_path, archive=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        read_cifar(path)
    assert "\n" not in str(err.value)


def test_member_escaping_the_folder_is_refused(tmp_path):
    path, _ = make_cifar(tmp_path, archive=True, members={"../../evil.sh": b"rm -rf /"})
    with pytest.raises(DataError, match="escapes the archive's folder"):
        read_cifar(path)


def test_missing_path_and_missing_batch(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        read_cifar(tmp_path / "nope")
    folder, _ = make_cifar(tmp_path, archive=False)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        read_cifar(folder)


def test_wrong_shape_labels_and_nan_are_refused():
    x = np.zeros((10, 32, 32, 3), np.uint8)
    ok = (x, np.zeros(10, np.int32), x, np.zeros(10, np.int32))
    split(ok, val_size=0, train_limit=None, class_names=CIFAR10_CLASSES, source="t")
    bad_labels = (x, np.full(10, 10, np.int32), x, np.zeros(10, np.int32))
    with pytest.raises(DataError, match="label 10 is outside 0..9"):
        split(bad_labels, val_size=0, train_limit=None, class_names=CIFAR10_CLASSES, source="t")
    bad_shape = (np.zeros((10, 32, 32), np.uint8), np.zeros(10, np.int32), x, np.zeros(10, np.int32))
    with pytest.raises(DataError, match="expected images of shape"):
        split(bad_shape, val_size=0, train_limit=None, class_names=CIFAR10_CLASSES, source="t")
    nan = x.astype(np.float32)
    nan[3, 1, 1, 1] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        split(
            (nan, np.zeros(10, np.int32), x, np.zeros(10, np.int32)),
            val_size=0,
            train_limit=None,
            class_names=CIFAR10_CLASSES,
            source="t",
        )


def test_splits_and_statistics_come_from_the_training_split_only():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    x[150:] = 255  # the last 20 become validation (10%): make them bright so a leak would show
    y = rng.integers(0, 10, 200).astype(np.int32)
    test = np.zeros((30, 32, 32, 3), np.uint8)  # and the test set black
    data = split(
        (x, y, test, y[:30]), val_size=5000, train_limit=None, class_names=CIFAR10_CLASSES, source="t"
    )
    assert len(data.x_val) == 20 and len(data.x_train) == 180  # min(5000, 10% of 200)
    np.testing.assert_array_equal(data.x_val, x[180:])
    mean, var = data.channel_stats()
    expected = x[:180].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, expected.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, expected.var(0), rtol=1e-5)
    limited = split(
        (x, y, test, y[:30]), val_size=10, train_limit=50, class_names=CIFAR10_CLASSES, source="t"
    )
    assert len(limited.x_train) == 50 and len(limited.x_val) == 10
    np.testing.assert_array_equal(limited.x_train, x[:50])


def test_the_sample_is_decoded_once_and_each_call_gets_its_own_copy(sample_arrays, monkeypatch):
    import tensorflow as tf

    from recipes.data import read_sample

    # sample_arrays decoded it in this process already: a later call decodes nothing
    monkeypatch.setattr(tf.io, "decode_jpeg", lambda *a, **k: pytest.fail("decoded a second time"))
    first = read_sample()
    first[0][:] = 0  # a caller that normalises in place must not change what the next call reads
    first[1][:] = -1
    second = read_sample()
    for got, expected in zip(second, sample_arrays):
        np.testing.assert_array_equal(got, expected)
    assert second[0].std() > 30 and second[1].min() == 0  # the images and labels, not the zeros written
    assert not np.shares_memory(first[0], second[0])


def test_bundled_sample_is_small_real_and_flagged(sample_arrays):
    assert SAMPLE_PATH.stat().st_size <= 8 * 1024 * 1024
    x_train, y_train, x_test, y_test = sample_arrays
    assert x_train.shape == (5000, 32, 32, 3) and x_test.shape == (1000, 32, 32, 3)
    assert set(np.unique(y_train)) == set(range(10))
    assert 60 < x_train.mean() < 200 and x_train.std() > 30  # natural images, not noise or blank
    data = load_data(DataConfig(name="sample", val_size=5000))
    assert data.is_sample and "sample" in data.source and len(data.x_val) == 500


def test_auto_falls_back_to_the_sample_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr("recipes.data.cifar.download_cifar", lambda: pytest.fail("auto must never download"))
    data = load_data(DataConfig(name="auto"))
    assert data.is_sample
    note = data.notes[0]
    assert "\n" not in note and f"{tmp_path / 'datasets'}/" in note and "cifar-10-python.tar.gz" in note
    assert "using the bundled sample" in note


def test_cifar10_without_any_source_lists_the_three_ways(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_data(DataConfig(name="cifar10"), allow_download=False)
    message = str(err.value)
    assert "data.path=" in message and "datasets" in message and "network" in message


def test_cifar10_found_in_the_keras_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    make_cifar(tmp_path / "datasets", archive=False)
    data = load_data(DataConfig(name="cifar10", val_size=10), allow_download=False)
    assert len(data.x_train) == 90 and not data.is_sample


def test_image_folder(tmp_path, sample_arrays):
    import keras

    x, y = sample_arrays[0][:30], sample_arrays[1][:30]
    for split_name in ("train", "test"):
        for i, (image, label) in enumerate(zip(x, y)):
            folder = tmp_path / split_name / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            keras.utils.save_img(folder / f"{i}.png", image, scale=False)
    data = load_data(DataConfig(name="folder", path=str(tmp_path), val_size=0))
    assert data.class_names == sorted(f"class_{v}" for v in set(y.tolist()))
    assert data.x_train.shape == (30, 32, 32, 3) and data.x_train.dtype == np.uint8
    # PNG is lossless: the pixels come back exactly (order is by class folder, then file name)
    assert sorted(map(bytes, data.x_train)) == sorted(map(bytes, x))


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="needs data.path"):
        load_data(DataConfig(name="folder"))
    with pytest.raises(DataError, match="no such folder"):
        load_data(DataConfig(name="folder", path=str(tmp_path / "missing")))

"""Hostile inputs to recipes.data: archives and batch files that declare more than a batch can be,
pickles that would amplify memory, malformed labels, images that do not decode, empty class folders, and
arrays that are not images. Each must end in one line of DataError that names the culprit, quickly and
without allocating what the input declares."""

import codecs
import gzip
import io
import os
import pickle
import shutil
import tarfile
import time
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from recipes.config import DataConfig
from recipes.data import DataError, load_data, read_cifar, validate
from recipes.data import cifar as cifar_module
from recipes.data import folder as folder_module
from recipes.data.cifar import CIFAR10_TEST, CIFAR10_TRAIN, MAX_BATCH_BYTES, parse_batch

PER_BATCH = 12
FOLDER = "cifar-10-batches-py"


GENUINE = object()


def batch_bytes(seed: int, labels=GENUINE, n: int = PER_BATCH, protocol: int = 2):
    """A batch in the official format, with ``labels`` in place of the genuine ones when given."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    genuine = [int(v) for v in rng.integers(0, 10, n)]
    batch = {
        b"batch_label": b"batch",
        b"labels": genuine if labels is GENUINE else labels,
        b"data": images.transpose(0, 3, 1, 2).reshape(n, 3072),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    return pickle.dumps(batch, protocol=protocol), images, np.asarray(genuine)


def genuine_files(**replace: bytes) -> dict[str, bytes]:
    files = {name: batch_bytes(i)[0] for i, name in enumerate([*CIFAR10_TRAIN, CIFAR10_TEST])}
    files.update(replace)
    return files


def cifar_folder(root: Path, **replace: bytes) -> Path:
    folder = root / FOLDER
    folder.mkdir()
    for name, data in genuine_files(**replace).items():
        (folder / name).write_bytes(data)
    return folder


def tar_stream(entries, end: bool = True) -> bytes:
    """A tar stream written header by header: ``(name, data, declared_size, type)`` per member. The
    declared size may exceed the data that follows, as in a lying or truncated archive."""
    out = b""
    for name, data, size, kind in entries:
        info = tarfile.TarInfo(name)
        info.size, info.type = size, kind
        out += info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return out + (b"\0" * 2 * tarfile.BLOCKSIZE if end else b"")


def genuine_entries(**replace: bytes) -> list:
    files = genuine_files(**replace)
    return [(FOLDER, b"", 0, tarfile.DIRTYPE)] + [
        (f"{FOLDER}/{name}", data, len(data), tarfile.REGTYPE) for name, data in files.items()
    ]


def write_archive(root: Path, entries, end: bool = True) -> Path:
    path = root / "cifar-10-python.tar.gz"
    path.write_bytes(gzip.compress(tar_stream(entries, end)))
    return path


def refused(call, *fragments: str, seconds: float = 5.0, peak_mib: float = 16.0) -> str:
    """Run ``call``; it must raise one line of DataError holding every fragment, within ``seconds`` and
    without Python allocating more than ``peak_mib`` at once. Returns the message."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as err:
            call()
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert elapsed < seconds, (elapsed, message)
    assert peak < peak_mib * 2**20, (peak, message)
    return message


# --------------------------------------------------------------------------------------------------
# 1. Sizes: members, extended headers, batch files and unpickled objects above the cap
# --------------------------------------------------------------------------------------------------


def test_the_cap_leaves_room_for_a_genuine_batch():
    # 10000 images of 3072 bytes, 10000 labels and file names: the official files are 30,910,155 to
    # 30,910,429 bytes; the cap is 64 MiB, about twice that
    assert MAX_BATCH_BYTES == 64 * 2**20
    assert 2 * 30_910_429 < MAX_BATCH_BYTES


@pytest.mark.parametrize(
    "name, declared, after_genuine",
    [
        ("data_batch_1", MAX_BATCH_BYTES + 1, False),
        ("test_batch", 2**33, False),
        ("data_batch_3", 2**40, True),
        ("batches.meta", 2**36, True),  # a member the reader never uses is refused as well
        ("readme.html", 5 * 2**30 + 7, True),
    ],
)
def test_archive_member_declaring_more_than_the_cap_is_refused_unread(
    tmp_path, name, declared, after_genuine
):
    entries = genuine_entries() if after_genuine else [(FOLDER, b"", 0, tarfile.DIRTYPE)]
    # the header declares `declared` bytes; 100 follow, and the archive ends there
    path = write_archive(
        tmp_path, [*entries, (f"{FOLDER}/{name}", b"x" * 100, declared, tarfile.REGTYPE)], False
    )
    if not after_genuine:
        assert path.stat().st_size < 300  # a tiny archive
    refused(lambda: read_cifar(path), str(path), f"'{FOLDER}/{name}'", f"{declared:,} bytes", "64 MiB")


def test_archive_member_of_real_compressible_bytes_over_the_cap_is_refused_unread(tmp_path):
    # a member of 64 MiB + 1 zero bytes, really there: the archive is a few hundred KB; unguarded, the
    # whole member was read into memory before the pickle was even looked at
    declared = MAX_BATCH_BYTES + 1
    path = tmp_path / "cifar-10-python.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(tar_stream([(FOLDER, b"", 0, tarfile.DIRTYPE)], end=False))
        f.write(tar_stream([(f"{FOLDER}/data_batch_1", b"", declared, tarfile.REGTYPE)], end=False))
        for _ in range(64):
            f.write(bytes(2**20))
        f.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # the one extra byte, padding and the end of the archive
    assert path.stat().st_size < 2**20
    refused(lambda: read_cifar(path), f"'{FOLDER}/data_batch_1'", f"{declared:,} bytes", "64 MiB")


@pytest.mark.parametrize(
    "kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK]
)
@pytest.mark.parametrize("declared", [2**31, 2**36])
def test_extended_header_declaring_more_than_the_cap_is_refused(tmp_path, kind, declared):
    # tarfile reads these headers whole before it hands over the member: unchecked, this raised
    # MemoryError (or allocated the declared size) from a 100-byte archive
    path = write_archive(tmp_path, [(f"{FOLDER}/data_batch_1", b"y" * 100, declared, kind)], False)
    assert path.stat().st_size < 300
    refused(lambda: read_cifar(path), str(path), "extended tar header", f"{declared:,} bytes", "64 MiB")


def test_the_cap_boundary_in_an_archive_and_a_folder(tmp_path, monkeypatch):
    files = genuine_files()
    largest = max(files, key=lambda name: len(files[name]))
    cap = len(files[largest])
    archive = write_archive(tmp_path, genuine_entries())
    folder = cifar_folder(tmp_path)
    monkeypatch.setattr(cifar_module, "MAX_BATCH_BYTES", cap)  # exactly the largest batch: accepted
    expected_train = np.concatenate([batch_bytes(i)[1] for i in range(5)])
    for source in (archive, folder):
        np.testing.assert_array_equal(read_cifar(source)[0], expected_train)
    monkeypatch.setattr(cifar_module, "MAX_BATCH_BYTES", cap - 1)  # one byte less: refused, named
    refused(lambda: read_cifar(archive), f"'{FOLDER}/{largest}'", f"{cap:,} bytes")
    refused(lambda: read_cifar(folder), str(folder / largest), f"{cap:,} bytes")


def test_archive_with_too_many_members_is_refused(tmp_path):
    junk = [(f"{FOLDER}/junk_{i}", b"", 0, tarfile.REGTYPE) for i in range(150)]
    path = write_archive(tmp_path, [*genuine_entries(), *junk])
    refused(lambda: read_cifar(path), str(path), "more than 100 members")


def test_archive_whose_members_add_up_to_too_much_is_refused(tmp_path, monkeypatch):
    entries = genuine_entries()
    sizes = [size for _, _, size, _ in entries]
    monkeypatch.setattr(cifar_module, "MAX_ARCHIVE_BYTES", sum(sizes) - 1)
    refused(lambda: read_cifar(write_archive(tmp_path, entries)), "add up to more than")


@pytest.mark.parametrize("name", ["data_batch_1", "data_batch_4", "test_batch"])
@pytest.mark.parametrize("size", [MAX_BATCH_BYTES + 1, 2**40])
def test_folder_batch_file_over_the_cap_is_refused_unread(tmp_path, name, size):
    folder = cifar_folder(tmp_path)
    try:
        with open(folder / name, "r+b") as f:
            f.truncate(size)  # sparse: no disk used, but the size a reader would allocate
    except OSError as e:
        pytest.skip(f"this file system has no sparse files of {size} bytes ({e})")
    assert (folder / name).stat().st_size == size
    refused(lambda: read_cifar(folder), str(folder / name), f"{size:,} bytes", "64 MiB")


class Encode:
    """Pickles as ``_codecs.encode(inner, encoding)``, the call protocol-2 pickles use for bytes."""

    def __init__(self, inner, encoding):
        self.inner, self.encoding = inner, encoding

    def __reduce__(self):
        return (codecs.encode, (self.inner, self.encoding))


class Reconstruct:
    """Pickles as numpy's ``_reconstruct(ndarray, shape, b'b')`` with a shape of our choosing."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, self.shape, b"b"))


def nested_hex(levels: int):
    obj = Encode("a", "latin1")
    for _ in range(levels):
        obj = Encode(obj, "hex")  # each level doubles the bytes
    return obj


def test_unpickling_cannot_amplify_a_small_batch(tmp_path):
    # sanity: unguarded, 20 levels of hex encoding turn a few hundred bytes into 1 MiB (40 levels: 1 TiB)
    small = pickle.dumps(nested_hex(20), protocol=2)
    assert len(small) < 1000 and len(pickle.loads(small)) == 2**20
    shared = "z" * 2**20  # one MiB of text, pickled once and encoded 1000 times through the memo: 1 GiB
    memo = pickle.dumps({b"data": [Encode(shared, "latin1") for _ in range(1000)], b"labels": []}, 2)
    cases = {
        # payload: (fragment, the most Python may hold at once, MiB)
        pickle.dumps({b"data": nested_hex(40), b"labels": []}, protocol=2): ("with 'hex'", 4),
        memo: ("more than 64 MiB", 80),  # the budget: 64 MiB, then refused
        pickle.dumps({b"data": Reconstruct((2**40,)), b"labels": []}, protocol=2): ("(0,) placeholder", 4),
        pickle.dumps({b"data": Reconstruct((2**20, 2**20)), b"labels": []}, protocol=2): ("(0,) place", 4),
    }
    for payload, (fragment, peak) in cases.items():
        assert len(payload) < 2 * 2**20
        refused(
            lambda p=payload: parse_batch(p, "data_batch_2"), "data_batch_2: refused", fragment, peak_mib=peak
        )
    folder = cifar_folder(tmp_path, data_batch_5=memo)
    refused(lambda: read_cifar(folder), str(folder / "data_batch_5"), "64 MiB", peak_mib=80)


def doubling_lists(levels: int) -> bytes:
    """A pickle of ``levels`` nested lists, each holding the one below twice: 2**levels paths."""
    out = b"\x80\x02]q\x00"  # the innermost empty list, memo 0
    for level in range(levels):
        # a new list holding the previous one twice, memoised as level + 1
        out += b"](h" + bytes([level]) + b"h" + bytes([level]) + b"eq" + bytes([level + 1])
    return out + b"."


def deep_lists(depth: int) -> bytes:
    """A pickle of ``depth`` lists nested one inside the next, built without recursion."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def test_shared_lists_are_walked_once():
    chain = doubling_lists(60)
    assert len(chain) < 1000 and len(pickle.loads(doubling_lists(12))) == 2
    refused(lambda: parse_batch(chain, "data_batch_1"), "data_batch_1: expected a dict", seconds=2)
    # the same structures as the labels of a batch: refused at the first label, naming the file
    for inner in (pickle.loads(doubling_lists(30)), [[[[0]]]]):
        labels = [inner] * N
        refused(
            lambda lab=labels: parse_batch(batch_bytes(0, labels=lab)[0], "x"), "x: label 0 is [", seconds=2
        )


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (deep_lists(300_000), "more than 262,144 pickle operations"),  # unguarded: 300,000 lists, 50 MB
        (b"\x80\x02" + b"]" * 1_000_000 + b".", "more than 262,144 pickle operations"),  # 1 MB: 72 MB
        (b"\x80\x02Nr" + (2**26).to_bytes(4, "little") + b".", "memo slot 67,108,864"),  # 9 bytes: 1 GiB
        (b"\x80\x02Nr" + (2**31).to_bytes(4, "little") + b".", "memo slot 2,147,483,648"),
        (b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"abc.", "cannot be read"),  # BINBYTES8 of 1 TiB
        (b"\x80\x02\xff.", "cannot be read"),  # an unknown opcode
    ],
    ids=["deep_lists", "empty_lists", "memo_64m", "memo_2g", "bytes8_1t", "bad_opcode"],
)
def test_pickles_that_would_make_the_unpickler_allocate_are_refused_unread(payload, fragment):
    refused(lambda: parse_batch(payload, "data_batch_1"), "data_batch_1: ", fragment, seconds=3)


def test_genuine_protocol_2_and_4_batches_still_load():
    for protocol in (2, 4):
        data, images, labels = batch_bytes(7, protocol=protocol)
        got_images, got_labels = parse_batch(data, "b")
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)
        assert got_labels.dtype == np.int32


# --------------------------------------------------------------------------------------------------
# 2. Labels of a batch file
# --------------------------------------------------------------------------------------------------

N = PER_BATCH
ONES = [1] * N
LIST_1000 = [0] * 1000
LIST_1000_SQUARED = [LIST_1000] * 1000  # pickled through the memo: a few KB; as an array, 8 GB per label


def with_at(values, **at):
    out = list(values)
    for index, value in at.items():
        out[int(index[1:])] = value
    return out


MALFORMED_LABELS = {
    # id: (labels, fragments the one line must hold, from what the test put where)
    "strings": (["cat"] * N, ["label 0 is 'cat' (str)"]),
    "bytes_items": ([b"1"] * N, ["label 0 is b'1' (bytes)"]),
    "fraction": (with_at(ONES, i5=1.5), ["label 5 is 1.5 (float)"]),
    "whole_float": (with_at(ONES, i2=1.0), ["label 2 is 1.0 (float)"]),  # refused too: a rule on the type
    "all_floats": ([0.0] * N, ["label 0 is 0.0 (float)"]),
    "one_bool": (with_at(ONES, i7=True), ["label 7 is True (bool)"]),
    "huge": (with_at(ONES, i3=2**70), [f"label {2**70} is outside 0..9 (1 such labels)"]),
    "negative_and_ten": (with_at(ONES, i4=10, i9=-1), ["label 10 is outside 0..9 (2 such labels)"]),
    "nested": ([[0]] * N, ["label 0 is [0] (list)"]),
    "nested_bomb": ([LIST_1000_SQUARED] * N, ["label 0 is [[0, 0, 0, 0, 0, 0, ...], ", "(list)"]),
    "none_item": (with_at(ONES, i11=None), ["label 11 is None (NoneType)"]),
    "float_array": (np.ones(N, np.float64), ["array of float64 with shape (12,)"]),
    "bool_array": (np.ones(N, bool), ["array of bool with shape (12,)"]),
    "column_array": (np.ones((N, 1), np.int64), ["array of int64 with shape (12, 1)"]),
    "bytes": (b"\x01" * N, ["labels are a bytes"]),
    "dict": ({0: 1}, ["labels are a dict"]),
    "none": (None, ["labels are a NoneType"]),
    "too_few": (ONES[:-1], [f"{N} images but {N - 1} labels"]),
    "too_many": ([*ONES, 1], [f"{N} images but {N + 1} labels"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_LABELS))
def test_malformed_labels_are_refused_naming_the_batch_file(tmp_path, case):
    labels, fragments = MALFORMED_LABELS[case]
    payload = batch_bytes(3, labels=labels)[0]
    assert len(payload) < 2**20
    folder = cifar_folder(tmp_path, data_batch_2=payload)
    refused(lambda: read_cifar(folder), str(folder / "data_batch_2"), *fragments)
    if case in ("fraction", "nested_bomb", "too_few"):  # the same inside an archive names the member
        archive = write_archive(tmp_path, genuine_entries(data_batch_2=payload))
        refused(lambda: read_cifar(archive), str(archive), f"'{FOLDER}/data_batch_2'", *fragments)


@pytest.mark.parametrize(
    "labels",
    [tuple(range(10)) + (3, 4), np.arange(N, dtype=np.int64) % 10, (np.arange(N) % 10).astype(np.uint8)],
    ids=["tuple", "int64_array", "uint8_array"],
)
def test_integer_labels_in_other_containers_are_accepted(labels):
    data, images, _ = batch_bytes(4, labels=labels)
    got_images, got_labels = parse_batch(data, "b")
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int32 and got_labels.tolist() == [int(v) for v in labels]


# --------------------------------------------------------------------------------------------------
# 2. Image folders: undecodable files, empty classes, ignored files, parity with Keras
# --------------------------------------------------------------------------------------------------


def image_bytes(seed: int, fmt: str, size=(20, 28), mode: str = "RGB") -> bytes:
    """A small random image encoded as ``fmt`` (png, jpeg, bmp or gif) by PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)  # the mode follows the shape
    assert image.mode == mode
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def image_folder(root: Path, per_class: int = 4, classes=("cat", "dog", "emu")) -> Path:
    """Class folders of PNG and JPEG images of several sizes; returns ``root``."""
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            fmt, ext = ("png", "png") if i % 2 else ("jpeg", "jpg")
            (folder / f"{i:03d}.{ext}").write_bytes(image_bytes(10 * c + i, fmt, size=(18 + i, 30 - i)))
    return root


def keras_load(directory: Path, image_size: int, class_names=None):
    """What ``image_dataset_from_directory`` gives, rounded to uint8 as the folder reader does."""
    ds = keras.utils.image_dataset_from_directory(
        directory,
        label_mode="int",
        class_names=class_names,
        image_size=(image_size, image_size),
        batch_size=None,
        shuffle=False,
        verbose=False,
    )
    xs, ys = zip(*ds.as_numpy_iterator())
    return np.clip(np.rint(np.stack(xs)), 0, 255).astype(np.uint8), np.asarray(ys, np.int32), ds.class_names


def read_all(directory: Path, image_size: int):
    names = folder_module.class_folders(directory)
    return (*folder_module.load_images(directory, names, image_size), names)


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return tf.io.encode_jpeg(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).numpy()


BAD_IMAGES = {
    # id: (file name, contents)
    "text_as_png": ("notes.png", b"these are my notes, not an image\n"),
    "random_as_jpg": ("noise.jpg", np.random.default_rng(1).integers(0, 256, 900, np.uint8).tobytes()),
    "truncated_jpeg_half": ("cut.jpeg", jpeg(2)[: len(jpeg(2)) // 2]),
    "truncated_jpeg_end": ("cut2.jpg", jpeg(3)[:-2]),
    "truncated_jpeg_header": ("cut3.jpg", jpeg(4)[:150]),
    "truncated_png": ("cut.png", image_bytes(5, "png")[:-20]),
    "empty_png": ("empty.png", b""),
    "gif_header_only": ("anim.gif", b"GIF89a" + b"\0" * 20),
    "random_as_bmp": ("x.bmp", b"BM" + bytes(range(256)) * 3),
    "upper_case_ext": ("SHOUT.PNG", b"not a png either"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_undecodable_image_is_named(tmp_path, case):
    name, contents = BAD_IMAGES[case]
    root = image_folder(tmp_path / "data")
    bad = root / "dog" / name
    bad.write_bytes(contents)
    message = refused(
        lambda: load_data(DataConfig(name="folder", path=str(root), val_size=0)),
        f"data.path={root}",
        f"{bad} is not a readable image",
        "replace it",
        seconds=30,
        peak_mib=64,
    )
    assert "{{" not in message and "[Op:" not in message  # TensorFlow's op names are stripped


@pytest.mark.parametrize("position", [0, 5, 9, 10, 17])
def test_the_failing_file_is_found_in_any_chunk(tmp_path, monkeypatch, position):
    monkeypatch.setattr(folder_module, "_CHUNK", 4)  # 18 images in chunks of 4: first, middle, last
    root = image_folder(tmp_path, per_class=6)
    files = sorted(p for p in root.rglob("*") if p.is_file())  # class, then name: the reading order
    files[position].write_bytes(b"garbage")
    refused(lambda: read_all(root, 16), f"{files[position]} is not a readable image", seconds=30, peak_mib=64)


def test_bad_image_in_the_test_split_or_a_nested_folder_is_named(tmp_path):
    root = tmp_path / "data"
    image_folder(root / "train")
    image_folder(root / "test", per_class=2)
    nested = root / "test" / "emu" / "more" / "deeper.png"
    nested.parent.mkdir()
    nested.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature and nothing valid after it
    refused(lambda: read_folder_cfg(root), f"data.path={root / 'test'}", f"{nested} is not a readable image")


def read_folder_cfg(root: Path, image_size: int = 32):
    return load_data(DataConfig(name="folder", path=str(root), val_size=0, image_size=image_size))


@pytest.mark.parametrize("content", ["nothing", "ignored_files", "nested_empty", "unsupported_images"])
def test_empty_class_folder_is_refused_not_made_a_class(tmp_path, content):
    root = image_folder(tmp_path / "data")
    empty = root / "bird"
    empty.mkdir()
    ignored = {
        "nothing": [],
        "ignored_files": ["README.txt", ".DS_Store", "Thumbs.db"],
        "nested_empty": [],
        "unsupported_images": ["a.webp", "b.tiff", "c.jpe"],
    }[content]
    for name in ignored:
        (empty / name).write_bytes(image_bytes(0, "png"))  # image bytes, but names Keras does not read
    if content == "nested_empty":
        (empty / "sub" / "subsub").mkdir(parents=True)
    message = refused(
        lambda: read_folder_cfg(root), f"data.path={root}", "class folder 'bird' holds no images"
    )
    assert (f"({len(ignored)} other files, which are ignored)" in message) == bool(ignored)
    assert ".bmp, .gif, .jpeg, .jpg, .png" in message


def test_empty_class_folder_in_the_test_split_is_refused(tmp_path):
    root = tmp_path / "data"
    image_folder(root / "train")
    image_folder(root / "test", per_class=1)
    for file in (root / "test" / "dog").iterdir():
        file.unlink()
    refused(lambda: read_folder_cfg(root), f"data.path={root / 'test'}", "class folder 'dog' holds no images")


@pytest.mark.parametrize(
    "train, test, fragments",
    [
        (("cat", "dog"), ("cat", "dog", "emu"), ["only in test/: emu"]),
        (("cat", "dog", "emu"), ("cat",), ["only in train/: dog, emu"]),
        (("cat", "dog"), ("cat", "eel"), ["only in train/: dog", "only in test/: eel"]),
    ],
)
def test_train_and_test_must_have_the_same_classes(tmp_path, train, test, fragments):
    root = tmp_path / "data"
    image_folder(root / "train", per_class=1, classes=train)
    image_folder(root / "test", per_class=1, classes=test)
    refused(lambda: read_folder_cfg(root), "must have the same class sub-folders", *fragments)


def test_folder_without_class_folders_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(0, "png"))  # images directly in DIR are not a class
    (tmp_path / ".hidden").mkdir()
    refused(lambda: read_folder_cfg(tmp_path), f"data.path={tmp_path}", "no class sub-folders")


def test_image_names_that_are_not_regular_files_are_refused(tmp_path):
    root = image_folder(tmp_path / "data")
    fifo = root / "cat" / "pipe.png"
    os.mkfifo(fifo)  # reading it would block forever
    refused(lambda: read_folder_cfg(root), f"{fifo} is not a regular file")
    fifo.unlink()
    link = root / "emu" / "gone.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    refused(lambda: read_folder_cfg(root), f"{link} is not a regular file")


def test_hostile_names_still_give_one_line(tmp_path):
    root = image_folder(tmp_path / "data")
    bad = root / "cat" / "evil\nname\r.png"
    bad.write_bytes(b"junk")
    message = refused(lambda: read_folder_cfg(root), "evil\\nname\\r.png is not a readable image")
    assert str(root / "cat") in message
    member = f"{FOLDER}/data_batch_1\nINJECTED"
    archive = write_archive(tmp_path, [(member, b"", 2**40, tarfile.REGTYPE)], False)
    refused(lambda: read_cifar(archive), "data_batch_1\\nINJECTED", "64 MiB")


def test_folder_matches_keras_on_every_format_and_ignores_other_files(tmp_path):
    root = tmp_path / "data"
    for c, name in enumerate(["ant", "bee", "cow"]):
        folder = root / name
        (folder / "nested").mkdir(parents=True)
        (folder / "a.png").write_bytes(image_bytes(c, "png", (17, 40)))
        (folder / "b.PNG").write_bytes(image_bytes(c + 10, "png", (40, 17), mode="RGBA"))
        (folder / "c.jpg").write_bytes(image_bytes(c + 20, "jpeg", (32, 32)))
        (folder / "d.jpeg").write_bytes(image_bytes(c + 30, "jpeg", (9, 13), mode="L"))
        (folder / "e.bmp").write_bytes(image_bytes(c + 40, "bmp", (24, 20)))
        (folder / "f.gif").write_bytes(image_bytes(c + 50, "gif", (21, 21)))
        (folder / "g.png").write_bytes(image_bytes(c + 60, "png", (50, 50), mode="L"))
        (folder / "nested" / "h.jpg").write_bytes(image_bytes(c + 70, "jpeg", (33, 31)))
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    # files Keras does not read, in a class, nested in one, and directly in DIR
    for junk in ["ant/notes.txt", "bee/x.webp", "cow/nested/y.tiff", "z.png", "ant/.DS_Store"]:
        (root / junk).write_bytes(b"not read")
    (root / ".hidden_class").mkdir()
    (root / ".hidden_class" / "i.png").write_bytes(image_bytes(99, "png"))
    for image_size in (8, 24, 33):
        x, y, names = read_all(root, image_size)
        kx, ky, knames = keras_load(clean, image_size)
        assert names == knames == ["ant", "bee", "cow"]
        assert x.dtype == np.uint8 and x.shape == (24, image_size, image_size, 3)
        np.testing.assert_array_equal(y, ky)
        np.testing.assert_array_equal(x, kx)
        np.testing.assert_array_equal(x, keras_load(root, image_size)[0])  # Keras ignores the junk too


def test_train_test_layout_matches_keras(tmp_path):
    root = tmp_path / "data"
    image_folder(root / "train", per_class=3)
    image_folder(root / "test", per_class=2)
    data = read_folder_cfg(root, image_size=20)
    kx, ky, names = keras_load(root / "test", 20)
    np.testing.assert_array_equal(data.x_test, kx)
    np.testing.assert_array_equal(data.y_test, ky)
    assert data.class_names == names and len(data.x_train) == 9


# --------------------------------------------------------------------------------------------------
# 3. validate: arrays that are not images, labels that do not match
# --------------------------------------------------------------------------------------------------

IMAGES = np.zeros((6, 8, 8, 3), np.uint8)
LABELS = np.arange(6, dtype=np.int64) % 3


@pytest.mark.parametrize(
    "images",
    [
        IMAGES.astype(object),
        IMAGES.astype(str),
        IMAGES.astype(bytes),
        IMAGES.astype(bool),
        IMAGES.astype(np.complex64),
        IMAGES.astype("datetime64[s]"),
        np.zeros((6, 8, 8, 3), [("r", np.uint8)]),
    ],
    ids=["object", "str", "bytes", "bool", "complex", "datetime", "structured"],
)
def test_validate_refuses_images_that_are_not_numbers(images):
    refused(
        lambda: validate(images, LABELS, 3, "t"), "t: images must be numbers", f"got dtype {images.dtype}"
    )


@pytest.mark.parametrize("n_labels", [0, 5, 7, 60])
def test_validate_refuses_label_counts_that_differ(n_labels):
    labels = np.zeros(n_labels, np.int32)
    refused(lambda: validate(IMAGES, labels, 3, "t"), f"t: 6 images but {n_labels} labels")


@pytest.mark.parametrize(
    "labels, fragment",
    [
        (LABELS.reshape(6, 1), "expected labels of shape (N,), got (6, 1)"),
        (np.zeros((6, 2), np.int32), "expected labels of shape (N,), got (6, 2)"),
        (np.array(1, np.int32), "expected labels of shape (N,), got ()"),
        (LABELS + 0.5, "labels must be integers, got float64"),
        (LABELS.astype(np.float32), "labels must be integers, got float32"),  # whole floats too
        (LABELS.astype(bool), "labels must be integers, got bool"),
        (LABELS.astype(str), "labels must be integers, got <U21"),
        (np.array([0, 1, 2, 3, 2**40, 0]), "label 3 is outside 0..2 (2 such labels)"),
    ],
    ids=["column", "two_columns", "scalar", "fraction", "whole_float", "bool", "str", "out_of_range"],
)
def test_validate_refuses_malformed_labels(labels, fragment):
    refused(lambda: validate(IMAGES, labels, 3, "t"), f"t: {fragment}")


@pytest.mark.parametrize("which", ["images", "labels"])
def test_validate_refuses_lists(which):
    images, labels = (IMAGES.tolist(), LABELS) if which == "images" else (IMAGES, LABELS.tolist())
    refused(lambda: validate(images, labels, 3, "t"), "expected NumPy arrays", "got a list")


def test_validate_accepts_numeric_images_and_integer_labels():
    for images in (IMAGES, IMAGES.astype(np.float32), IMAGES.astype(np.int16)):
        for labels in (LABELS, LABELS.astype(np.uint8), LABELS.astype(np.int32)):
            validate(images, labels, 3, "t")

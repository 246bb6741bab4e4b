"""Tests of pipeline.data: every registered data set, splits, fitting, IDX.

IDX files are generated in tmp dirs; the ``folder`` data set has its own file
(tests/test_data_folder.py). The real Fashion-MNIST test reads the Debian
package's files and fails when they are missing (``make test`` installs
``dataset-fashion-mnist`` when run as root).
"""

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import (DATASETS, FASHION_MNIST_DIR, FASHION_MNIST_LABELS, SHAPES_LABELS, Splits, describe_datasets,
                           fashion_mnist, load_dataset, read_idx)
from pipeline.errors import ConfigError, DataError
from pipeline.recipe.schema import DataConfig
from tests.helpers.folders import folder_cfg, make_folder

SMALL = dict(train_samples=40, val_samples=20, test_samples=20)


# -- fixtures: generated files -----------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Writes ``array`` (uint8) as an IDX file, gzip-compressed if asked."""
    array = np.ascontiguousarray(array, np.uint8)
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = head + array.tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    return path


def make_fashion_dir(root: Path, n_train: int = 120, n_test: int = 40, compress: bool = True):
    """Four small IDX files in the Fashion-MNIST layout.

    Image i of class k has every pixel = 20 * k + (i % 7) + 1, so a test can read
    the label back from the pixels (never 0, so padding is distinguishable).
    """
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = np.broadcast_to((20 * y + np.arange(n) % 7 + 1)[:, None, None], (n, 28, 28)).astype(np.uint8)
        suffix = ".gz" if compress else ""
        files[f"{part}_images"] = write_idx(root / f"{part}-images-idx3-ubyte{suffix}", x, compress)
        files[f"{part}_labels"] = write_idx(root / f"{part}-labels-idx1-ubyte{suffix}", y, compress)
    return files



# -- the table: one case per registered data set -----------------------------------


def _fashion_real(tmp_path):
    assert Path(FASHION_MNIST_DIR).is_dir(), (
        f"{FASHION_MNIST_DIR} missing: install the Debian package "
        "(apt-get install -y dataset-fashion-mnist; make test does it when root)")
    return DataConfig(dataset="fashion-mnist", **SMALL)


CASES = {
    "shapes": lambda tmp: DataConfig(dataset="shapes", **SMALL),
    "fashion-mnist": _fashion_real,
    "digits": lambda tmp: DataConfig(dataset="digits", **SMALL),
    "folder": lambda tmp: folder_cfg(make_folder(tmp / "imgs"), **SMALL),
}


def _fashion_synthetic(tmp_path):
    make_fashion_dir(tmp_path / "fm")
    return DataConfig(dataset="fashion-mnist", path=str(tmp_path / "fm"), **SMALL)


# Synthetic IDX files stand in for the real ones where a test loads a data set repeatedly.
FAST_CASES = dict(CASES, **{"fashion-mnist": _fashion_synthetic})


def test_every_registered_dataset_has_a_case():
    assert set(DATASETS.names()) == set(CASES) == set(FAST_CASES)


def test_describe_datasets_lists_every_dataset_in_registry_order():
    described = describe_datasets()
    assert [name for name, _ in described] == DATASETS.names()
    for name, text in described:
        assert text and "\n" not in text, name


@pytest.mark.parametrize("shape", [(32, 32, 1), (40, 36, 3)])
@pytest.mark.parametrize("name", list(CASES))
def test_loader_contract(name, shape, tmp_path):
    cfg = CASES[name](tmp_path)
    s = load_dataset(cfg, shape, seed=3)
    assert isinstance(s, Splits)
    assert s.num_classes == len(s.labels) >= 2
    assert all(isinstance(v, str) for v in s.labels) and len(set(s.labels)) == len(s.labels)
    for split in ("train", "val", "test"):
        images, y = s.split(split)
        x = np.asarray(images)
        assert images.dtype == np.float32 and x.dtype == np.float32 and x.flags.c_contiguous
        assert images.shape == x.shape == (len(y),) + shape
        assert 0 < len(y) <= getattr(cfg, f"{split}_samples")
        assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() > 0.0
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() < s.num_classes
        assert s.report["counts"][split] == {
            lab: int(n) for lab, n in zip(s.labels, np.bincount(y, minlength=s.num_classes))}
    assert s.report["dataset"] == name
    assert s.report["labels"] == list(s.labels)
    json.dumps(s.report)  # goes into manifest.json as is


@pytest.mark.parametrize("name", list(FAST_CASES))
def test_same_seed_same_bytes_other_seed_differs(name, tmp_path):
    cfg = FAST_CASES[name](tmp_path)
    a, b, c = (load_dataset(cfg, (32, 32, 1), seed) for seed in (7, 7, 8))
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes(), field
    assert a.report == b.report
    assert a.x_train.tobytes() != c.x_train.tobytes()


@pytest.mark.parametrize("name", list(FAST_CASES))
def test_test_split_does_not_depend_on_train_samples(name, tmp_path):
    cfg = FAST_CASES[name](tmp_path)
    a = load_dataset(cfg, (32, 32, 1), 0)
    b = load_dataset(DataConfig(**{**cfg.__dict__, "train_samples": 10}), (32, 32, 1), 0)
    assert len(b.y_train) == 10
    assert a.x_test.tobytes() == b.x_test.tobytes() and a.x_val.tobytes() == b.x_val.tobytes()


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_zero_samples_is_an_empty_split_error(split):
    # DataConfig.validate rejects 0; a loader called without it still fails clearly.
    cfg = DataConfig(dataset="digits", **{f"{split}_samples": 0})
    avail = {"train": 1259, "val": 269, "test": 269}[split]
    with pytest.raises(DataError) as err:
        load_dataset(cfg, (32, 32, 1), 0)
    assert str(err.value) == (f"data set 'digits': the {split} split would be empty "
                              f"(0 requested, {avail} available)")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(dataset="imagenet"), (32, 32, 1), 0)
    assert str(err.value) == "unknown data set 'imagenet'; valid: shapes, fashion-mnist, digits, folder"


@pytest.mark.parametrize("shape", [(32, 32, 2), (32, 32), (0, 32, 1), "32x32"])
def test_bad_input_shape(shape):
    with pytest.raises(ConfigError, match=r"^input_shape: expected \(height, width, channels\)"):
        load_dataset(DataConfig(), shape, 0)


def test_negative_seed():
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(), (32, 32, 1), -1)
    assert str(err.value) == "seed: expected a non-negative integer, got -1"


# -- shapes ------------------------------------------------------------------------


def test_shapes_4500_images_at_32x32_in_under_5_seconds():
    cfg = DataConfig(train_samples=None, val_samples=None, test_samples=None)  # = defaults
    start = time.perf_counter()
    s = load_dataset(cfg, (32, 32, 1), 0)
    elapsed = time.perf_counter() - start
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (3000, 500, 1000)
    assert elapsed < 5.0, f"{elapsed:.2f} s"
    assert s.labels == SHAPES_LABELS and s.num_classes == 10
    assert set(s.report["counts"]["train"].values()) == {300}  # balanced
    # Not degenerate: images vary, and so does each class.
    assert np.asarray(s.x_train).std(axis=(1, 2, 3)).min() > 0.0
    assert len({x.tobytes() for x in s.x_train}) == 3000


def test_shapes_colour_carries_no_label_information():
    s = load_dataset(DataConfig(train_samples=1500, val_samples=10, test_samples=1000), (32, 32, 3), 1)

    def chroma(x):  # per-image mean colour offset from grey
        luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
        return (x - luma[..., None]).mean(axis=(1, 2))

    train, test = chroma(s.x_train), chroma(s.x_test)
    assert np.abs(train).mean() > 0.01  # there is colour
    centroids = np.stack([train[s.y_train == k].mean(axis=0) for k in range(10)])
    guess = np.argmin(((test[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (guess == s.y_test).mean() < 0.2  # nearest class colour: chance is 0.1


def test_shapes_other_sizes():
    s = load_dataset(DataConfig(train_samples=20, val_samples=10, test_samples=10), (48, 64, 3), 0)
    assert s.x_train.shape == (20, 48, 64, 3)
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(), (23, 23, 1), 0)
    assert str(err.value) == "shapes: input height and width must be >= 24, got 23x23"


@pytest.mark.parametrize("size", [24, 28])
def test_shapes_under_32_are_rendered_at_32_and_fitted_down(size):
    from pipeline.data.resize import resize_images

    cfg = DataConfig(train_samples=20, val_samples=10, test_samples=10)
    small = load_dataset(cfg, (size, size, 1), 0)
    full = load_dataset(cfg, (32, 32, 1), 0)
    assert small.x_train.shape == (20, size, size, 1)
    assert small.report["fit"] == "rendered at 32x32, then resize"
    assert np.array_equal(small.y_train, full.y_train)
    # the same images, fitted down (both stored as 8-bit: one level apart at most)
    np.testing.assert_allclose(small.x_test[:], resize_images(full.x_test[:], size, size), atol=1.01 / 255)


# -- digits ------------------------------------------------------------------------


def test_digits_pad_upscales_by_4_and_keeps_labels_aligned():
    from sklearn.datasets import load_digits

    ref = load_digits()
    lookup = {}
    for img, label in zip(ref.images, ref.target):
        lookup.setdefault((img / 16).astype(np.float32).tobytes(), set()).add(int(label))
    cfg = DataConfig(dataset="digits", train_samples=None, val_samples=None, test_samples=None, fit="pad")
    s = load_dataset(cfg, (32, 32, 1), 0)
    assert s.report["available"] == {"train": 1259, "val": 269, "test": 269}
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 1797
    for x, y in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        small = x[:, ::4, ::4, 0]  # 8x8 replicated 4x fills 32x32 exactly
        assert np.array_equal(x[:, 1::4, 3::4, 0], small)
        for img, label in zip(small, y):
            assert int(label) in lookup[img.tobytes()]
    # every class is in every split, in proportion (70/15/15 per class)
    for split in ("val", "test"):
        assert min(s.report["counts"][split].values()) >= 26


def test_digits_resize_is_smooth_and_stratified():
    s = load_dataset(DataConfig(dataset="digits", train_samples=100, val_samples=50, test_samples=50),
                     (40, 40, 1), 0)
    counts = np.bincount(s.y_train, minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11
    assert len(np.unique(s.x_train)) > 17 * 4  # interpolated, not just 17 levels


# -- fashion-mnist -----------------------------------------------------------------


def test_fashion_mnist_real_debian_files():
    """Fails (does not skip) when the Debian package is missing."""
    cfg = _fashion_real(None)
    s = load_dataset(DataConfig(**{**cfg.__dict__, "test_samples": 1000}), (32, 32, 1), 0)
    assert s.labels == FASHION_MNIST_LABELS
    assert s.report["available"] == {"train": 54000, "val": 6000, "test": 10000}
    assert set(s.report["counts"]["test"].values()) == {100}  # official t10k: 1000 a class
    assert s.report["fit"] == "resize"


def test_fashion_pad_centres_28x28_on_zero_border(tmp_path):
    make_fashion_dir(tmp_path)
    cfg = DataConfig(dataset="fashion-mnist", path=str(tmp_path), fit="pad", **SMALL)
    s = load_dataset(cfg, (32, 32, 1), 0)
    x = s.x_train[..., 0]
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (x[:, border] == 0).all()
    inner = x[:, 2:30, 2:30]
    assert (inner == inner[:, :1, :1]).all() and (inner > 0).all()
    # labels travel with their images: pixel = 20 * label + (i % 7) + 1
    assert np.array_equal((np.round(inner[:, 0, 0] * 255) - 1) // 20, s.y_train)
    # 64x64: enlarged by 2 (pixel replication) to 56x56, border 4
    s64 = load_dataset(cfg, (64, 64, 3), 0)
    assert (s64.x_train[:, :4] == 0).all() and (s64.x_train[:, 4:60, 4:60] > 0).all()
    assert np.array_equal(s64.x_train[:, 4:60:2, 4:60:2, 0], inner)
    assert s64.report["converted"] == {"grey to RGB (channel repeated)": 70}  # val: 10 available


def test_fashion_resize_fills_the_input(tmp_path):
    make_fashion_dir(tmp_path, compress=False)  # plain IDX files work too
    cfg = DataConfig(dataset="fashion-mnist", path=str(tmp_path), fit="resize", **SMALL)
    s = load_dataset(cfg, (32, 32, 3), 0)
    # flat images stay flat (resize weights sum to 1), border included
    assert np.allclose(s.x_train, s.x_train[:, :1, :1, :1], atol=1e-6)
    assert np.array_equal((np.round(s.x_train[:, 0, 0, 0] * 255) - 1) // 20, s.y_train)
    assert s.report["available"] == {"train": 110, "val": 10, "test": 40}


@pytest.mark.parametrize("fit", ["resize", "pad"])
@pytest.mark.parametrize("size", [24, 28])
def test_fashion_fits_down_to_a_smaller_input(tmp_path, fit, size):
    # 28x28 sources onto a 24x24 input shrink (both fits fill it: the images are
    # square); onto 28x28 they pass through unchanged.
    make_fashion_dir(tmp_path)
    s = load_dataset(DataConfig(dataset="fashion-mnist", path=str(tmp_path), fit=fit, **SMALL), (size, size, 1), 0)
    assert s.x_train.shape == (len(s.y_train), size, size, 1)
    assert np.allclose(s.x_train, s.x_train[:, :1, :1, :1], atol=1e-6)  # flat images stay flat, no border
    assert np.array_equal((np.round(s.x_train[:, 0, 0, 0] * 255) - 1) // 20, s.y_train)


def test_fashion_missing_default_dir_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="fashion-mnist"), (32, 32, 1), 0)
    assert str(err.value) == (
        f"fashion-mnist directory not found: {tmp_path / 'nope'} (install it with: apt-get install "
        "dataset-fashion-mnist, or set data.path to a directory holding the four IDX files)")


def test_fashion_missing_file(tmp_path):
    files = make_fashion_dir(tmp_path)
    files["t10k_labels"].unlink()
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="fashion-mnist", path=str(tmp_path)), (32, 32, 1), 0)
    assert str(err.value) == (f"fashion-mnist: t10k-labels-idx1-ubyte (or t10k-labels-idx1-ubyte.gz) "
                              f"not found in {tmp_path}")


def test_fashion_truncated_idx_names_the_file(tmp_path):
    files = make_fashion_dir(tmp_path, compress=False)
    p = files["train_images"]
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="fashion-mnist", path=str(tmp_path)), (32, 32, 1), 0)
    assert str(err.value) == (f"IDX file {p}: truncated: header says 120x28x28 uint8 "
                              f"(94080 bytes of data), found 93980 bytes")


def test_fashion_images_and_labels_disagree(tmp_path):
    files = make_fashion_dir(tmp_path)
    write_idx(files["train_labels"], np.zeros(119, np.uint8), compress=True)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="fashion-mnist", path=str(tmp_path)), (32, 32, 1), 0)
    assert str(err.value) == ("fashion-mnist: train-images-idx3-ubyte.gz holds 120 images but "
                              "train-labels-idx1-ubyte.gz holds 119 labels")


def test_fashion_label_out_of_range(tmp_path):
    files = make_fashion_dir(tmp_path)
    write_idx(files["t10k_labels"], np.full(40, 10, np.uint8), compress=True)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="fashion-mnist", path=str(tmp_path)), (32, 32, 1), 0)
    assert str(err.value) == f"IDX file {files['t10k_labels']}: label 10 out of range 0..9"


def test_fashion_empty_official_test_set(tmp_path):
    make_fashion_dir(tmp_path, n_test=0)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="fashion-mnist", path=str(tmp_path), **SMALL), (32, 32, 1), 0)
    assert str(err.value) == ("data set 'fashion-mnist': the test split would be empty "
                              "(20 requested, 0 available)")


def test_fashion_labels_file_with_image_dims(tmp_path):
    files = make_fashion_dir(tmp_path)
    write_idx(files["train_labels"], np.zeros((120, 2), np.uint8), compress=True)
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="fashion-mnist", path=str(tmp_path)), (32, 32, 1), 0)
    assert str(err.value) == (f"IDX file {files['train_labels']}: expected unsigned-byte labels "
                              "(1 dimension), got uint8 with 2 dimension(s)")


# -- IDX parser (never needs the package) ------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    p = write_idx(tmp_path / "a.idx", arr, compress)
    out = read_idx(p)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_read_idx_big_endian_int32(tmp_path):
    p = tmp_path / "i32"
    p.write_bytes(bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + np.array([1, -2, 70000], ">i4").tobytes())
    assert read_idx(p).tolist() == [1, -2, 70000]


IDX_ERRORS = {
    "truncated data": (
        bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (5, 28, 28)) + bytes(3000),
        "truncated: header says 5x28x28 uint8 (3920 bytes of data), found 3000 bytes"),
    "truncated header": (
        bytes([0, 0, 8, 3, 0, 0]),
        "truncated header (6 bytes; 16 expected for 3 dimensions)"),
    "shorter than magic": (b"\0\0", "truncated header (2 bytes; at least 4 expected)"),
    "empty": (b"", "truncated header (0 bytes; at least 4 expected)"),
    "bad magic": (
        b"\x12\x34\x08\x03" + bytes(12),
        "bad magic number 0x12340803 (expected 0x0000TTNN: two zero bytes, a type code TT "
        "(08 = unsigned byte) and the number of dimensions NN, e.g. 0x00000803 for images)"),
    "unknown type": (
        bytes([0, 0, 0x07, 1]) + (1).to_bytes(4, "big") + b"x",
        "bad magic number 0x00000701 (expected 0x0000TTNN: two zero bytes, a type code TT "
        "(08 = unsigned byte) and the number of dimensions NN, e.g. 0x00000803 for images)"),
    "trailing bytes": (
        bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + b"abc",
        "1 unexpected trailing bytes after 2 uint8 data"),
}


@pytest.mark.parametrize("case", list(IDX_ERRORS))
def test_read_idx_errors(tmp_path, case):
    content, message = IDX_ERRORS[case]
    p = tmp_path / "f-idx"
    p.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_idx(p)
    assert str(err.value) == f"IDX file {p}: {message}"


def test_read_idx_gzip_errors(tmp_path):
    good = gzip.compress(bytes([0, 0, 8, 1]) + (1000).to_bytes(4, "big") + bytes(range(256)) * 4, mtime=0)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as err:
        read_idx(cut)
    assert str(err.value) == f"IDX file {cut}: truncated gzip stream"
    plain = tmp_path / "plain.gz"
    plain.write_bytes(bytes([0, 0, 8, 1]) + (1).to_bytes(4, "big") + b"x")
    with pytest.raises(DataError) as err:
        read_idx(plain)
    assert str(err.value) == f"IDX file {plain}: not a gzip file (expected gzip magic bytes 1f 8b)"

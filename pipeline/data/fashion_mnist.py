"""The ``fashion-mnist`` data set, read from IDX files (the MNIST format).

The official test set (t10k) is kept; validation is carved from the official
training set (10% of each class).
"""

import gzip
import zlib
from pathlib import Path
from typing import Tuple

import numpy as np

from pipeline.data.resize import channel_note, fit_images
from pipeline.data.splits import (SPLITS, Splits, assemble, check_input_shape, partition, requested_counts, stream_rng,
                                  take_stratified)
from pipeline.errors import DataError
from pipeline.recipe.schema import DataConfig

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Fraction of each Fashion-MNIST training class held out for validation.
FASHION_VAL_FRACTION = 0.10


def load_fashion_mnist(cfg: DataConfig, input_shape: Tuple[int, int, int], seed: int,
               log=None) -> Splits:
    """Fashion-MNIST: 70k 28x28 grey clothing images, 10 classes, from IDX files.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each possibly ``.gz``)
    from ``cfg.path``, by default from FASHION_MNIST_DIR (Debian package
    ``dataset-fashion-mnist``). Test = the official t10k set; val = 10% of each
    training class. ``fit: pad`` centres the 28x28 images on a zero canvas.
    """
    input_shape = check_input_shape(input_shape)
    root = Path(cfg.path) if cfg.path else Path(FASHION_MNIST_DIR)
    hint = ("" if cfg.path else
            " (install it with: apt-get install dataset-fashion-mnist, or set data.path "
            "to a directory holding the four IDX files)")
    if not root.exists():
        raise DataError(f"fashion-mnist directory not found: {root}{hint}")
    if not root.is_dir():
        raise DataError(f"fashion-mnist: data.path is not a directory: {root}")
    raw = {}
    for key, name in FASHION_MNIST_FILES.items():
        path = next((root / f for f in (name, name + ".gz") if (root / f).is_file()), None)
        if path is None:
            raise DataError(f"fashion-mnist: {name} (or {name}.gz) not found in {root}{hint}")
        raw[key] = read_idx(path)
        raw[key + "_path"] = path
    for part in ("train", "test"):
        x, y = raw[f"{part}_images"], raw[f"{part}_labels"]
        xp, yp = raw[f"{part}_images_path"], raw[f"{part}_labels_path"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(f"IDX file {xp}: expected unsigned-byte images (3 dimensions), "
                            f"got {x.dtype} with {x.ndim} dimension(s)")
        if y.ndim != 1 or y.dtype != np.uint8:
            raise DataError(f"IDX file {yp}: expected unsigned-byte labels (1 dimension), "
                            f"got {y.dtype} with {y.ndim} dimension(s)")
        if len(x) != len(y):
            raise DataError(f"fashion-mnist: {xp.name} holds {len(x)} images but "
                            f"{yp.name} holds {len(y)} labels")
        if y.size and y.max() >= len(FASHION_MNIST_LABELS):
            raise DataError(f"IDX file {yp}: label {int(y.max())} out of range "
                            f"0..{len(FASHION_MNIST_LABELS) - 1}")
    y_train_all = raw["train_labels"].astype(np.int64)
    y_test_all = raw["test_labels"].astype(np.int64)
    pools = {}
    pools["train"], pools["val"], _ = partition(y_train_all, stream_rng(seed, "partition"),
                                                 FASHION_VAL_FRACTION, 0.0)
    pools["test"] = np.arange(len(y_test_all))
    source = {"train": (raw["train_images"], y_train_all), "val": (raw["train_images"], y_train_all),
              "test": (raw["test_images"], y_test_all)}
    parts = {}
    for name in SPLITS:
        x_all, y_all = source[name]
        idx = take_stratified(pools[name], y_all, getattr(cfg, f"{name}_samples"), stream_rng(seed, name), name)
        x = x_all[idx].astype(np.float32)[..., None] / np.float32(255)
        parts[name] = (fit_images(x, input_shape, cfg.fit), y_all[idx])
    report = {
        "source": str(root),
        "files": {k: str(raw[k + "_path"]) for k in FASHION_MNIST_FILES},
        "requested": requested_counts(cfg),
        "available": {k: len(v) for k, v in pools.items()},
        "fit": cfg.fit,
        "converted": channel_note(1, input_shape[2], sum(len(v[1]) for v in parts.values())),
    }
    return assemble("fashion-mnist", parts, FASHION_MNIST_LABELS, input_shape, report)


_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: "str | Path") -> np.ndarray:
    """Reads one IDX file (the MNIST format), gzip-compressed or not.

    The header is checked: two zero bytes, a known type code, the number of
    dimensions, one big-endian uint32 per dimension; then the data must be exactly
    the size the header announces.

    Raises:
        DataError: naming the file and what was wrong (not gzip, truncated, bad
            magic number, unknown type, trailing bytes).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"IDX file {path}: cannot read: {exc.strerror or exc}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except EOFError:
            raise DataError(f"IDX file {path}: truncated gzip stream") from None
        except (OSError, zlib.error) as exc:
            raise DataError(f"IDX file {path}: corrupt gzip data ({exc})") from None
    elif path.suffix == ".gz":
        raise DataError(f"IDX file {path}: not a gzip file (expected gzip magic bytes 1f 8b)")
    if len(data) < 4:
        raise DataError(f"IDX file {path}: truncated header ({len(data)} bytes; "
                        "at least 4 expected)")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\0\0" or type_code not in _IDX_TYPES or ndim == 0:
        raise DataError(f"IDX file {path}: bad magic number 0x{magic:08x} (expected 0x0000TTNN: "
                        "two zero bytes, a type code TT (08 = unsigned byte) and the number "
                        "of dimensions NN, e.g. 0x00000803 for images)")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DataError(f"IDX file {path}: truncated header ({len(data)} bytes; "
                        f"{head} expected for {ndim} dimensions)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(data) - head
    shape_txt = "x".join(map(str, dims))
    if found < expected:
        raise DataError(f"IDX file {path}: truncated: header says {shape_txt} {dtype.name} "
                        f"({expected} bytes of data), found {found} bytes")
    if found > expected:
        raise DataError(f"IDX file {path}: {found - expected} unexpected trailing bytes after "
                        f"{shape_txt} {dtype.name} data")
    return np.frombuffer(data, dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))

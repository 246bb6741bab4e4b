"""Data sets: labelled images -> deterministic train/val/test splits.

Every data set is a loader ``(cfg: DataConfig, input_shape, seed) -> Splits``
registered in :data:`DATASETS`. Loaders are pure: the same config, input shape and
seed give identical arrays, byte for byte; nothing is cached or written.

Images come out as float32 NHWC in [0, 1] at the model's input shape; labels as
int64 class indices into ``Splits.labels``. ``Splits.report`` is plain JSON-able
data saying what was available, what was taken per class, what was skipped and
what was converted; the data stage writes it into the manifest.

How splits are made:

* ``shapes`` renders each split from its own random stream (seed, split).
* ``fashion-mnist`` keeps the official test set (t10k); validation is carved
  from the official training set (10% of each class).
* ``digits`` and ``folder`` have no official split: each class is cut
  70/15/15 into train/val/test (at least one image per split), so every split
  holds every class.

Sample counts (``DataConfig.*_samples``; ``None`` = all) then truncate each split
after a stratified shuffle: a prefix of n samples holds each class in proportion.

This module imports numpy and Pillow only (scikit-learn lazily, for ``digits``):
no TensorFlow, so the CLI and the tests stay light.
"""

import gzip
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.recipe.schema import DataConfig
from pipeline.errors import ConfigError, DataError
from pipeline.registry import Registry

SPLITS = ("train", "val", "test")

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

SHAPES_LABELS = ("disc", "ring", "square", "frame", "triangle",
                 "plus", "cross", "h-stripes", "v-stripes", "dot-grid")

#: File types the ``folder`` data set reads; anything else is skipped and reported.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
#: Colour behind transparent pixels: black, the same as ``fit: pad`` borders.
ALPHA_BACKGROUND = "black"
#: Per-class fractions cut for val and test where a data set has no official split.
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
#: Fraction of each Fashion-MNIST training class held out for validation.
FASHION_VAL_FRACTION = 0.10
#: How many offending files an error message lists before "... and N more".
MAX_LISTED = 10


@dataclass(frozen=True, eq=False)
class Splits:
    """Train/val/test arrays of one data set at the model's input shape.

    ``x_*`` are float32 NHWC in [0, 1]; ``y_*`` are int64 indices into ``labels``.
    ``report`` is JSON-able: available and taken counts per class, skipped files,
    conversions.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: Tuple[str, ...]
    report: dict

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


Loader = Callable[[DataConfig, Tuple[int, int, int], int], Splits]

DATASETS: Registry[Loader] = Registry("data set")


def _register(name: str):
    def deco(fn: Loader) -> Loader:
        return DATASETS.register(name, fn)
    return deco


def load_dataset(cfg: DataConfig, input_shape: Sequence[int], seed: int) -> Splits:
    """Loads data set ``cfg.dataset`` at ``input_shape`` with splits drawn from ``seed``.

    Args:
        cfg: which data set, where its files are, samples per split, fit mode.
        input_shape: the model input ``(height, width, channels)``, channels 1 or 3.
        seed: non-negative integer; the same seed gives identical arrays.

    Returns:
        Splits: float32 NHWC images in [0, 1], int64 labels, names, report.

    Raises:
        ConfigError: unknown data set, bad input shape, fit mode or seed.
        DataError: files missing, unreadable or unusable; a split would be empty.
    """
    loader = DATASETS.get(cfg.dataset)
    shape = _check_input_shape(input_shape)
    if cfg.fit not in ("resize", "pad"):
        raise ConfigError(f"data.fit: expected one of resize, pad; got {cfg.fit!r}")
    _check_seed(seed)
    return loader(cfg, shape, seed)


def describe_datasets() -> List[Tuple[str, str]]:
    """``(name, one-line description)`` of every registered data set, for CLI help."""
    return [(name, (fn.__doc__ or "").strip().splitlines()[0]) for name, fn in DATASETS.items()]


# -- shapes ----------------------------------------------------------------------


@_register("shapes")
def load_shapes(cfg: DataConfig, input_shape: Tuple[int, int, int], seed: int) -> Splits:
    """Generated shapes, 10 classes, with noise, clutter and occlusion (no files needed).

    Rendered directly at ``input_shape`` (height and width >= 32; 1 or 3 channels,
    colour carries no label information). ``None`` sample counts mean the
    ``DataConfig`` defaults, since the supply is unlimited. Balanced classes.
    """
    h, w, c = _check_input_shape(input_shape)
    if min(h, w) < 32:
        raise ConfigError(f"shapes: input height and width must be >= 32, got {h}x{w}")
    _check_seed(seed)
    defaults = DataConfig()
    parts = {}
    for i, name in enumerate(SPLITS):
        n = getattr(cfg, f"{name}_samples")
        n = getattr(defaults, f"{name}_samples") if n is None else n
        _check_count(name, n)
        # One stream per split: the test set does not change when train_samples does.
        rng = _rng(seed, "shapes", name)
        y = rng.permutation(np.arange(n) % len(SHAPES_LABELS)).astype(np.int64)
        parts[name] = (render_shapes(y, (h, w, c), rng), y)
    report = {
        "source": "generated",
        "requested": {k: len(v[1]) for k, v in parts.items()},
        "available": {k: len(v[1]) for k, v in parts.items()},
        "fit": "rendered at the input size",
    }
    return _assemble("shapes", parts, SHAPES_LABELS, input_shape, report)


# Shape kinds: oriented classes are only rotated a little around a base angle
# (plus vs cross differ by 45 degrees, h- vs v-stripes by 90); the rest spin freely.
_FREE_ROTATION = {"disc", "ring", "square", "frame", "triangle", "dot-grid"}
_BASE_ANGLE = {"plus": 0.0, "cross": np.pi / 4, "h-stripes": 0.0, "v-stripes": np.pi / 2}
_MAX_JITTER = np.deg2rad(20.0)  # leaves a 5 degree gap between plus and cross
_CHUNK = 512  # images rendered at once: bounds memory at large input sizes
# Style of an ordinary image and of a deliberately hard one (small, faint, noisy,
# off-centre, often occluded, either polarity). Measured with MobileNetV2-0.35
# (first stride 1, BN momentum 0.9, Adam 3e-3 cosine, batch 64), 3000 32x32 train
# images, 3 epochs, seeds 0 and 1: test accuracy 88.1/85.5% grey, 85.8/86.7% RGB
# (2-core CPU). Every extra difficulty in the ordinary style costs 5-10 points at
# that budget (off-centre placement alone cost 12); the hard 6% stay ambiguous
# however long one trains (12 epochs: 93.6% grey).
_NORMAL = dict(r=(0.32, 0.45), contrast=(0.6, 0.9), noise=(0.0, 0.05), grad=(0.0, 0.08),
               blotch=(0.0, 0.03), bg=(0.0, 0.25), bright=0.97, pos=0.15, occlude=0.03,
               distract=0.1)
_HARD = dict(r=(0.12, 0.2), contrast=(0.12, 0.3), noise=(0.15, 0.3), grad=(0.0, 0.35),
             blotch=(0.0, 0.2), bg=(0.0, 1.0), bright=0.5, pos=1.0, occlude=0.5, distract=0.6)
_HARD_FRACTION = 0.06


def render_shapes(y: np.ndarray, input_shape: Tuple[int, int, int],
                  rng: np.random.Generator) -> np.ndarray:
    """Renders one image of class ``y[i]`` (index into SHAPES_LABELS) per label.

    Each image: a background (level, gradient, smooth blotches), the shape at a
    random position, size, aspect, rotation, stroke thickness and contrast
    (either polarity), sometimes partly erased by an occluder, up to three small
    distractors (dots, thin lines) and per-pixel Gaussian noise. Returns float32
    NHWC in [0, 1].
    """
    h, w, c = input_shape
    n = len(y)
    s = float(min(h, w))
    u = rng.uniform
    # All per-image parameters are drawn up front, so chunking changes nothing.
    hard = rng.random(n) < _HARD_FRACTION

    def style(key, size=None):  # uniform in the image's style range, or a probability
        lo_n, hi_n = _NORMAL[key] if isinstance(_NORMAL[key], tuple) else (_NORMAL[key],) * 2
        lo_h, hi_h = _HARD[key] if isinstance(_HARD[key], tuple) else (_HARD[key],) * 2
        shape = (n,) if size is None else (n, size)
        lo = np.where(hard, lo_h, lo_n).reshape((n,) + (1,) * (len(shape) - 1))
        hi = np.where(hard, hi_h, hi_n).reshape(lo.shape)
        return lo + (hi - lo) * rng.random(shape)

    p = {
        "r": style("r") * s,                          # shape radius, pixels
        "aspect": np.exp(u(-0.12, 0.12, n)),
        "t": u(0.12, 0.28, n),                        # stroke half-thickness, shape units
        "k": rng.integers(2, 4, n),                   # bars / dots per row
        "jitter": u(-_MAX_JITTER, _MAX_JITTER, n),
        "spin": u(0, 2 * np.pi, n),
        "bg": style("bg"),
        "contrast": style("contrast"),
        "polarity": rng.random(n) < style("bright"),
        "grad_amp": style("grad"),
        "grad_dir": u(0, 2 * np.pi, n),
        "blotch_amp": style("blotch"),
        "noise": style("noise"),
        "occlude": rng.random(n) < style("occlude"),
        "occ_off": u(-0.9, 0.9, (n, 2)),
        "occ_half": u(0.25, 0.55, (n, 2)),
        "tint_bg": _hue_tint(u(-0.2, 0.2, (n, c))) if c == 3 else np.zeros((n, 1)),
        "tint_fg": _hue_tint(u(-0.2, 0.2, (n, c))) if c == 3 else np.zeros((n, 1)),
        "d_on": rng.random((n, 3)) < style("distract", 3),
        "d_line": rng.random((n, 3)) < 0.5,
        "d_pos": u(0, 1, (n, 3, 2)) * [w, h],
        "d_size": u(0.03, 0.08, (n, 3)) * s,          # dot radius, or line half-length / 3
        "d_angle": u(0, np.pi, (n, 3)),
        "d_level": u(0.0, 1.0, (n, 3)),
    }
    margin = 0.6 * p["r"]
    pos = style("pos")
    p["cx"] = w / 2 + u(-0.5, 0.5, n) * pos * (w - 2 * margin)
    p["cy"] = h / 2 + u(-0.5, 0.5, n) * pos * (h - 2 * margin)
    names = np.array(SHAPES_LABELS)[y]
    free = np.isin(names, list(_FREE_ROTATION))
    base = np.array([_BASE_ANGLE.get(k, 0.0) for k in names])
    p["angle"] = np.where(free, p["spin"], base + p["jitter"])
    # Foreground level: bg +- contrast. Where the drawn polarity has no room for the
    # contrast, take the side with more room, and at most that room.
    room_up, room_down = 1 - p["bg"], p["bg"]
    fits = np.where(p["polarity"], room_up, room_down) >= p["contrast"]
    up = np.where(fits, p["polarity"], room_up > room_down)
    p["fg"] = p["bg"] + np.where(up, np.minimum(p["contrast"], room_up),
                                 -np.minimum(p["contrast"], room_down))
    blotch_grid = rng.standard_normal((n, 4, 4))
    out = np.empty((n, h, w, c), np.float32)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(n, lo + _CHUNK))
        noise = rng.standard_normal((sl.stop - lo, h, w, c), dtype=np.float32)
        out[sl] = _render_chunk(y[sl], {k: v[sl] for k, v in p.items()}, blotch_grid[sl], noise, h, w, c)
    return out


def _hue_tint(t: np.ndarray) -> np.ndarray:
    """Random RGB offsets with zero luma: colour that leaves the grey image unchanged."""
    return t - (t @ np.array([0.299, 0.587, 0.114]))[:, None]


def _render_chunk(y, p, blotch_grid, noise, h, w, c) -> np.ndarray:
    f32 = np.float32
    n = len(y)
    ys = (np.arange(h, dtype=f32) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=f32) + 0.5)[None, None, :]

    def col(a):  # per-image scalar -> broadcastable (n, 1, 1)
        return np.asarray(a, f32)[:, None, None]

    dx, dy = xs - col(p["cx"]), ys - col(p["cy"])
    cos, sin = col(np.cos(p["angle"])), col(np.sin(p["angle"]))
    r = col(p["r"])
    rx, ry = r * col(p["aspect"]), r / col(p["aspect"])
    uu = (cos * dx + sin * dy) / rx
    vv = (-sin * dx + cos * dy) / ry
    sd = np.empty((n, h, w), f32)
    for k, name in enumerate(SHAPES_LABELS):
        idx = np.flatnonzero(y == k)
        if idx.size:
            sd[idx] = _SDF[name](uu[idx], vv[idx], col(p["t"])[idx], p["k"][idx])
    alpha = np.clip(0.5 - sd * r, 0, 1)  # signed distance in pixels, 1 px anti-aliasing
    # Occluder: a box near the shape that erases it (the background shows through).
    # Distractors and occluders are drawn only on the images that have them.
    occ = np.flatnonzero(p["occlude"])
    if occ.size:
        ro = r[occ]
        ox = dx[occ] - col(p["occ_off"][occ, 0]) * ro
        oy = dy[occ] - col(p["occ_off"][occ, 1]) * ro
        occ_sd = np.maximum(np.abs(ox) - col(p["occ_half"][occ, 0]) * ro,
                            np.abs(oy) - col(p["occ_half"][occ, 1]) * ro)
        alpha[occ] *= np.clip(occ_sd + 0.5, 0, 1)

    # Background: level + linear gradient + smooth blotches (a 4x4 grid upsampled).
    gx, gy = xs / w - 0.5, ys / h - 0.5
    grad = col(p["grad_amp"]) * (col(np.cos(p["grad_dir"])) * gx + col(np.sin(p["grad_dir"])) * gy)
    blotch = _resize_matrix(4, h) @ blotch_grid.astype(f32) @ _resize_matrix(4, w).T
    field = (grad + blotch * col(p["blotch_amp"]))[..., None]
    bg = np.asarray(p["bg"][:, None] + p["tint_bg"], f32)[:, None, None, :]
    fg = np.asarray(p["fg"][:, None] + p["tint_fg"], f32)[:, None, None, :]
    a = alpha[..., None]
    img = (bg + field) * (1 - a) + (fg + 0.3 * field) * a

    # Distractors: small dots or thin short lines of a random level, over everything.
    for j in range(3):
        for is_line in (False, True):
            on = np.flatnonzero(p["d_on"][:, j] & (p["d_line"][:, j] == is_line))
            if not on.size:
                continue
            ddx, ddy = xs - col(p["d_pos"][on, j, 0]), ys - col(p["d_pos"][on, j, 1])
            size = col(p["d_size"][on, j])
            if is_line:  # a 1-pixel-wide segment, 6 x size long
                ca, sa = col(np.cos(p["d_angle"][on, j])), col(np.sin(p["d_angle"][on, j]))
                along = np.clip(ca * ddx + sa * ddy, -3 * size, 3 * size)
                d_sd = np.hypot(ddx - along * ca, ddy - along * sa) - 0.5
            else:
                d_sd = np.hypot(ddx, ddy) - size
            da = np.clip(0.5 - d_sd, 0, 1)[..., None]
            img[on] = img[on] * (1 - da) + col(p["d_level"][on, j])[..., None] * da

    img += noise * col(p["noise"])[..., None]
    return np.clip(img, 0, 1, out=img)


def _sdf_disc(u, v, t, k):
    return np.hypot(u, v) - 1


def _sdf_ring(u, v, t, k):
    return np.abs(np.hypot(u, v) - (1 - t)) - t


def _sdf_square(u, v, t, k):
    return np.maximum(np.abs(u), np.abs(v)) - 0.8


def _sdf_frame(u, v, t, k):
    return np.abs(np.maximum(np.abs(u), np.abs(v)) - (0.8 - t)) - t


def _sdf_triangle(u, v, t, k):
    # Equilateral, circumradius 1: the largest of the three edge half-plane distances.
    d = None
    for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        e = np.float32(np.cos(a)) * u + np.float32(np.sin(a)) * v - 0.5
        d = e if d is None else np.maximum(d, e)
    return d


def _sdf_plus(u, v, t, k):
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 1, av - t), np.maximum(au - t, av - 1))


def _sdf_stripes(u, v, t, k):
    # k (2 or 3) horizontal bars spread over [-0.75, 0.75]; thin enough not to merge.
    k = k[:, None, None].astype(np.float32)
    spacing = 1.5 / (k - 1)
    t = np.minimum(t, 0.3 * spacing)
    centre = np.clip(np.round((v + 0.75) / spacing), 0, k - 1) * spacing - 0.75
    return np.maximum(np.abs(u) - 0.9, np.abs(v - centre) - t)


def _sdf_dot_grid(u, v, t, k):
    k = k[:, None, None].astype(np.float32)
    spacing = 1.4 / (k - 1)
    gu = np.clip(np.round((u + 0.7) / spacing), 0, k - 1) * spacing - 0.7
    gv = np.clip(np.round((v + 0.7) / spacing), 0, k - 1) * spacing - 0.7
    return np.hypot(u - gu, v - gv) - np.minimum(t + 0.08, 0.3 * spacing)


# Signed distance (shape units, < 0 inside) of each class in its own rotated frame:
# cross and v-stripes are plus and h-stripes turned by their _BASE_ANGLE.
_SDF = {
    "disc": _sdf_disc, "ring": _sdf_ring, "square": _sdf_square, "frame": _sdf_frame,
    "triangle": _sdf_triangle, "plus": _sdf_plus, "cross": _sdf_plus,
    "h-stripes": _sdf_stripes, "v-stripes": _sdf_stripes, "dot-grid": _sdf_dot_grid,
}


# -- fashion-mnist ---------------------------------------------------------------


@_register("fashion-mnist")
def load_fashion_mnist(cfg: DataConfig, input_shape: Tuple[int, int, int], seed: int) -> Splits:
    """Fashion-MNIST: 70k 28x28 grey clothing images, 10 classes, from IDX files.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each possibly ``.gz``)
    from ``cfg.path``, by default from FASHION_MNIST_DIR (Debian package
    ``dataset-fashion-mnist``). Test = the official t10k set; val = 10% of each
    training class. ``fit: pad`` centres the 28x28 images on a zero canvas.
    """
    input_shape = _check_input_shape(input_shape)
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
    pools["train"], pools["val"], _ = _partition(y_train_all, _rng(seed, "partition"),
                                                 FASHION_VAL_FRACTION, 0.0)
    pools["test"] = np.arange(len(y_test_all))
    source = {"train": (raw["train_images"], y_train_all), "val": (raw["train_images"], y_train_all),
              "test": (raw["test_images"], y_test_all)}
    parts = {}
    for name in SPLITS:
        x_all, y_all = source[name]
        idx = _take(pools[name], y_all, getattr(cfg, f"{name}_samples"), _rng(seed, name), name)
        x = x_all[idx].astype(np.float32)[..., None] / np.float32(255)
        parts[name] = (_fit(x, input_shape, cfg.fit), y_all[idx])
    report = {
        "source": str(root),
        "files": {k: str(raw[k + "_path"]) for k in FASHION_MNIST_FILES},
        "requested": _requested(cfg),
        "available": {k: len(v) for k, v in pools.items()},
        "fit": cfg.fit,
        "converted": _channel_note(1, input_shape[2], sum(len(v[1]) for v in parts.values())),
    }
    return _assemble("fashion-mnist", parts, FASHION_MNIST_LABELS, input_shape, report)


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


# -- digits ----------------------------------------------------------------------


@_register("digits")
def load_digits(cfg: DataConfig, input_shape: Tuple[int, int, int], seed: int) -> Splits:
    """scikit-learn's bundled digits: 1797 8x8 images (16 grey levels), 10 classes, upscaled.

    No official split: each class is cut 70/15/15 into train/val/test.
    """
    input_shape = _check_input_shape(input_shape)
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: ~1 s import

    bunch = sk_load_digits()
    x_all = (bunch.images.astype(np.float32) / np.float32(16))[..., None]
    y_all = bunch.target.astype(np.int64)
    pools = dict(zip(SPLITS, _partition(y_all, _rng(seed, "partition"), VAL_FRACTION, TEST_FRACTION)))
    parts = {}
    for name in SPLITS:
        idx = _take(pools[name], y_all, getattr(cfg, f"{name}_samples"), _rng(seed, name), name)
        parts[name] = (_fit(x_all[idx], input_shape, cfg.fit), y_all[idx])
    report = {
        "source": "sklearn.datasets.load_digits",
        "requested": _requested(cfg),
        "available": {k: len(v) for k, v in pools.items()},
        "fit": cfg.fit,
        "converted": _channel_note(1, input_shape[2], sum(len(v[1]) for v in parts.values())),
    }
    labels = tuple(str(int(v)) for v in bunch.target_names)
    return _assemble("digits", parts, labels, input_shape, report)


# -- folder ----------------------------------------------------------------------


@_register("folder")
def load_folder(cfg: DataConfig, input_shape: Tuple[int, int, int], seed: int) -> Splits:
    """Your images: one sub-folder per class of .jpg/.jpeg/.png files under data.path.

    Class names are the sorted sub-folder names. Each class is cut 70/15/15 into
    train/val/test (so a class needs at least 3 images). Images of any size and
    mode are converted to the input shape: grey, RGB, palette, 16-bit grey;
    transparency is composited over black (ALPHA_BACKGROUND); JPEG EXIF rotation
    is applied. Hidden files and files of other types are skipped and listed in
    the report. Empty class folders, zero-byte and corrupt images are errors
    that list the offending files.
    """
    input_shape = _check_input_shape(input_shape)
    if not cfg.path:
        raise ConfigError("data.path: the 'folder' data set needs a path to a directory "
                          "with one sub-folder per class")
    root = Path(cfg.path)
    files, skipped = _scan_folder(root)
    labels = tuple(files)
    y_all = np.concatenate([np.full(len(v), i, np.int64) for i, v in enumerate(files.values())])
    paths = [p for v in files.values() for p in v]
    pools = dict(zip(SPLITS, _partition(y_all, _rng(seed, "partition"), VAL_FRACTION, TEST_FRACTION)))
    taken = {name: _take(pools[name], y_all, getattr(cfg, f"{name}_samples"), _rng(seed, name), name)
             for name in SPLITS}
    wanted = {int(i) for idx in taken.values() for i in idx}

    # Decode every image (a corrupt file is reported whether or not it was drawn)
    # but keep only the drawn ones.
    h, w, c = input_shape
    images: Dict[int, np.ndarray] = {}
    bad: List[str] = []
    modes: Counter = Counter()
    notes: Counter = Counter()
    for i, path in enumerate(paths):
        rel = _shown(path.relative_to(root).as_posix())
        try:
            arr, mode, conv = _decode_image(path)
        except _BadImage as exc:
            bad.append(f"{rel}: {exc}")
            continue
        if i in wanted:
            modes[mode] += 1
            notes.update(conv)
            notes.update(_channel_note(arr.shape[2], c))
            images[i] = _fit(arr[None], input_shape, cfg.fit)[0]
    if bad:
        raise DataError(_listing(f"{len(bad)} unreadable image file{'s' if len(bad) > 1 else ''} "
                                 f"in {root}", bad))
    parts = {}
    for name in SPLITS:
        idx = taken[name]
        x = np.stack([images[int(i)] for i in idx]) if len(idx) else np.zeros((0, h, w, c), np.float32)
        parts[name] = (x, y_all[idx])
    report = {
        "source": str(root),
        "requested": _requested(cfg),
        "available": {k: len(v) for k, v in pools.items()},
        "available_per_class": {lab: len(v) for lab, v in files.items()},
        "fit": cfg.fit,
        "source_modes": dict(sorted(modes.items())),
        "converted": dict(sorted(notes.items())),
        "alpha_background": ALPHA_BACKGROUND,
        "skipped": skipped,
    }
    return _assemble("folder", parts, labels, input_shape, report)


class _BadImage(Exception):
    pass


def _scan_folder(root: Path) -> Tuple[Dict[str, List[Path]], List[str]]:
    """Class name -> sorted image paths, and the skipped entries ("rel: reason")."""
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a directory: {root}")
    skipped: List[str] = []
    class_dirs: List[Path] = []
    loose_images = 0
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skipped.append(f"{_shown(entry.name)}: hidden")
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            loose_images += entry.suffix.lower() in IMAGE_SUFFIXES
            skipped.append(f"{_shown(entry.name)}: not in a class folder")
    if not class_dirs:
        extra = (f"; found {loose_images} image(s) directly in it: move them into "
                 "one sub-folder per class" if loose_images else "")
        raise DataError(f"no class folders in {root}: expected one sub-folder per class, "
                        f"each holding {_suffix_text()} images{extra}")
    odd = [_shown(d.name) for d in class_dirs if _shown(d.name) != d.name]
    if odd:
        # Class names become labels.txt lines and JSON strings: they must be printable UTF-8.
        raise DataError(_listing(f"class folder names in {root} that are not printable UTF-8 text "
                                 "(rename them; they become the model's labels)", odd))
    if len(class_dirs) == 1:
        raise DataError(f"data directory {root} has only one class folder "
                        f"({class_dirs[0].name!r}); needs at least 2 classes")
    files: Dict[str, List[Path]] = {}
    for d in class_dirs:
        found = []
        for entry in sorted(d.iterdir(), key=lambda p: p.name):
            rel = _shown(entry.relative_to(root).as_posix())
            if entry.name.startswith("."):
                skipped.append(f"{rel}: hidden")  # .DS_Store, macOS ._name.jpg forks
            elif entry.is_dir():
                skipped.append(f"{rel}: nested folder (not read)")
            elif entry.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(f"{rel}: not {_suffix_text()}")
            else:
                found.append(entry)
        files[d.name] = found
    empty = [name for name, v in files.items() if not v]
    if empty:
        names = ", ".join(repr(n) for n in empty)
        raise DataError(f"empty class folder{'s' if len(empty) > 1 else ''} in {root}: {names} "
                        f"(no {_suffix_text()} images)")
    few = [f"{name!r} ({len(v)})" for name, v in files.items() if len(v) < 3]
    if few:
        raise DataError(f"too few images in class folder(s) of {root}: {', '.join(few)}; each "
                        "class needs at least 3 (one each for train, val and test)")
    return files, skipped


def _shown(name: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 appear as ``\\xff``,
    control characters as ``\\t``, ``\\n``, ..."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _suffix_text() -> str:
    return ", ".join(IMAGE_SUFFIXES[:-1]) + " or " + IMAGE_SUFFIXES[-1]


_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _decode_image(path: Path) -> Tuple[np.ndarray, str, List[str]]:
    """One image file -> (float32 HxWx{1,3} in [0, 1], source mode, conversions)."""
    try:
        if path.is_symlink() and not path.exists():
            raise _BadImage(f"broken symbolic link (to {os.readlink(path)})")
        if path.stat().st_size == 0:
            raise _BadImage("zero-byte file")
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            conv: List[str] = []
            if im.getexif().get(0x0112, 1) not in (1, None):  # EXIF Orientation
                im = ImageOps.exif_transpose(im)
                conv.append("EXIF orientation applied")
            return _image_to_array(im, conv), mode, conv
    except PermissionError:
        raise _BadImage("cannot read (permission denied)") from None
    except UnidentifiedImageError:
        raise _BadImage("not a readable image (unknown format)") from None
    except _PIL_ERRORS as exc:
        raise _BadImage(f"corrupt image ({exc})") from None


def _image_to_array(im: Image.Image, conv: List[str]) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey PNGs: keep the full 0..65535 range instead of Pillow's 8-bit clip.
        conv.append("16-bit grey scaled from 0..65535")
        arr = np.asarray(im).astype(np.float32) / np.float32(65535)
        return np.clip(arr, 0, 1)[..., None]
    if mode == "P" or mode == "PA":
        conv.append("palette expanded")
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        conv.append(f"{mode} converted to RGB")
        im = im.convert("RGB")
    arr = np.asarray(im, dtype=np.float32) / np.float32(255)
    if arr.ndim == 2:
        arr = arr[..., None]
    if im.mode in ("LA", "RGBA"):
        conv.append(f"alpha composited over {ALPHA_BACKGROUND}")
        arr = arr[..., :-1] * arr[..., -1:]  # over black: colour x alpha
    return arr


# -- splitting -------------------------------------------------------------------


def _rng(seed: int, *stream: str) -> np.random.Generator:
    """An independent generator per (seed, stream): e.g. the test split's draw does
    not change when train_samples does."""
    _check_seed(seed)
    return np.random.default_rng([seed, *(zlib.crc32(s.encode()) for s in stream)])


def _partition(y: np.ndarray, rng: np.random.Generator, val_frac: float,
               test_frac: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cuts each class at random into train/val/test index arrays.

    A non-zero fraction gives each class at least one sample in that split.
    """
    out: Tuple[List[np.ndarray], ...] = ([], [], [])
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        n = len(idx)
        n_test = max(1, round(n * test_frac)) if test_frac else 0
        n_val = max(1, round(n * val_frac)) if val_frac else 0
        out[2].append(idx[:n_test])
        out[1].append(idx[n_test:n_test + n_val])
        out[0].append(idx[n_test + n_val:])
    return tuple(np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
                 for parts in out)  # type: ignore[return-value]


def _take(pool: np.ndarray, y: np.ndarray, n: Optional[int], rng: np.random.Generator,
          split: str) -> np.ndarray:
    """The first ``n`` of a stratified shuffle of ``pool`` (all if ``n`` is None), shuffled.

    Each class gets random keys spread evenly over [0, 1): sorting by key
    interleaves the classes, so any prefix holds them in proportion.
    """
    if n is not None:
        _check_count(split, n)
    keys = np.empty(len(pool))
    labels = y[pool]
    for k in np.unique(labels):
        where = np.flatnonzero(labels == k)
        m = len(where)
        keys[where[rng.permutation(m)]] = (np.arange(m) + rng.random(m)) / m
    order = pool[np.argsort(keys, kind="stable")]
    return rng.permutation(order if n is None else order[:n])


def _requested(cfg: DataConfig) -> Dict[str, Optional[int]]:
    return {split: getattr(cfg, f"{split}_samples") for split in SPLITS}


def _check_count(split: str, n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"data.{split}_samples: expected a positive integer or null, got {n!r}")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")


def _check_input_shape(shape) -> Tuple[int, int, int]:
    try:
        h, w, c = (int(v) for v in shape)
        ok = all(int(v) == v for v in shape) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok or c not in (1, 3):
        raise ConfigError(f"input_shape: expected (height, width, channels) with positive "
                          f"sizes and 1 or 3 channels, got {shape!r}")
    return h, w, c


def _assemble(name: str, parts, labels, input_shape, report: dict) -> Splits:
    for split in SPLITS:
        x, y = parts[split]
        if len(y) == 0:
            wanted = report["requested"][split]
            raise DataError(f"data set {name!r}: the {split} split would be empty "
                            f"({'all' if wanted is None else wanted} requested, "
                            f"{report['available'][split]} available)")
    counts = {split: {lab: int(np.sum(parts[split][1] == i)) for i, lab in enumerate(labels)}
              for split in SPLITS}
    full = {"dataset": name, "labels": list(labels), "input_shape": list(input_shape),
            **report, "counts": counts}
    flat = {f"{k}_{split}": v for split in SPLITS for k, v in zip(("x", "y"), parts[split])}
    for split in SPLITS:
        flat[f"x_{split}"] = np.ascontiguousarray(flat[f"x_{split}"], np.float32)
        flat[f"y_{split}"] = np.ascontiguousarray(flat[f"y_{split}"], np.int64)
    return Splits(**flat, labels=tuple(labels), report=full)


# -- image fitting ---------------------------------------------------------------


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a triangle filter, Pillow BILINEAR style.

    Interpolates when enlarging; when shrinking the filter widens to the scale
    factor, so it averages (anti-aliases) instead of skipping pixels.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    j = np.arange(n_in) + 0.5
    wts = np.maximum(0.0, 1.0 - np.abs(j[None, :] - centres[:, None]) / support)
    return (wts / wts.sum(axis=1, keepdims=True)).astype(np.float32)


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resizes float NHWC images to h x w (separable triangle filter)."""
    n, h0, w0, c = x.shape
    if (h0, w0) == (h, w):
        return x
    a, b = _resize_matrix(h0, h), _resize_matrix(w0, w)
    out = a @ x.transpose(0, 3, 1, 2) @ b.T  # (n, c, h, w)
    return np.clip(out.transpose(0, 2, 3, 1), 0, 1)


def _fit(x: np.ndarray, input_shape, fit: str) -> np.ndarray:
    """Float NHWC images -> input height and width, by ``resize`` or ``pad``.

    ``resize`` stretches to the input size (aspect ratio not kept). ``pad`` keeps
    the aspect ratio: it enlarges by the largest whole factor that fits (pixel
    replication, so 28x28 -> 32x32 is a pure 2-pixel zero border) or shrinks to
    fit, then centres the image on a zero (black) canvas. Channels pass through.
    """
    h, w = int(input_shape[0]), int(input_shape[1])
    n, h0, w0, c = x.shape
    if fit not in ("resize", "pad"):
        raise ConfigError(f"data.fit: expected one of resize, pad; got {fit!r}")
    if fit == "resize":
        out = _resize(x, h, w)
    else:
        k = min(h // h0, w // w0)
        if k >= 1:
            y = np.repeat(np.repeat(x, k, axis=1), k, axis=2) if k > 1 else x
        else:
            s = min(h / h0, w / w0)
            y = _resize(x, max(1, round(h0 * s)), max(1, round(w0 * s)))
        out = np.zeros((n, h, w, c), np.float32)
        top, left = (h - y.shape[1]) // 2, (w - y.shape[2]) // 2
        out[:, top:top + y.shape[1], left:left + y.shape[2]] = y
    c_out = int(input_shape[2]) if len(input_shape) > 2 else c
    if c == 1 and c_out == 3:
        out = np.repeat(out, 3, axis=3)
    elif c == 3 and c_out == 1:
        out = _to_grey(out)
    return out.astype(np.float32, copy=False)


def _to_grey(x: np.ndarray) -> np.ndarray:
    """RGB (last axis) -> one channel, ITU-R 601 luma (what Pillow's "L" uses)."""
    return (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def _channel_note(src: int, dst: int, n: int = 1) -> Dict[str, int]:
    """{conversion: number of images} for a channel-count change, else {}."""
    if src == 1 and dst == 3:
        return {"grey to RGB (channel repeated)": n}
    if src == 3 and dst == 1:
        return {"RGB to grey (ITU-R 601 luma)": n}
    return {}


def _listing(head: str, items: List[str]) -> str:
    lines = [f"  {s}" for s in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return head + ":\n" + "\n".join(lines)

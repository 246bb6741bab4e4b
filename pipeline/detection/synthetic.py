"""The synthetic detection set: coloured shapes with tight boxes on a textured background.

No files: every split is rendered from its own random stream (seed, split) directly
at the model's input size (height and width >= 64; 1 or 3 channels). Each image holds
1-4 objects of five classes, each a solid colour (random hue, clearly lighter or darker
than the background) with a little shading, their sides 12-50% of the image side, drawn
largest first, two objects' boxes overlapping at most IoU 0.2 (and at most 30% of the
smaller one). The background is a base colour with smooth blotches, a faint sinusoidal
texture, small clutter (dots, thin lines: unlabelled, smaller than any object) and
pixel noise.

Boxes are tight: a box's corners are whole pixels and its shape reaches each of its
four edges (an object is drawn only inside its box, with 1-pixel anti-aliasing).
"""

from typing import Dict, List, Optional, Tuple

import numpy as np

from pipeline.data.resize import resize_matrix
from pipeline.data.splits import SPLITS, check_count, check_input_shape, check_seed, stream_rng
from pipeline.detection.boxes import box_iou
from pipeline.detection.sets import DetectionSet, DetectionSplits
from pipeline.errors import ConfigError

SYNTHETIC_LABELS = ("disc", "ring", "square", "triangle", "plus")
#: Images rendered per split when no count is given.
SYNTHETIC_COUNTS = {"train": 2000, "val": 300, "test": 500}
#: Smallest input height and width: a 12% object is then still 7 pixels.
MIN_SIZE = 64
#: Object side, a fraction of the image's shorter side.
SIDE_RANGE = (0.12, 0.5)
MAX_OBJECTS = 4
#: Largest IoU of two objects' boxes, and largest share of the smaller box they may overlap.
MAX_IOU = 0.2
MAX_COVER = 0.3
_PLACE_TRIES = 30
_CHUNK = 64  # backgrounds rendered at once
_LUMA = np.array([0.299, 0.587, 0.114])


def load_synthetic(input_shape=(224, 224, 3), seed: int = 0,
                   counts: Optional[Dict[str, int]] = None) -> DetectionSplits:
    """The synthetic detection set's train, val and test splits.

    Args:
        input_shape: ``(height, width, channels)``; height and width >= 64.
        seed: the same seed gives the same images, boxes and classes, byte for byte.
        counts: images per split (missing splits: :data:`SYNTHETIC_COUNTS`).

    Raises:
        ConfigError: the input is smaller than 64x64, or a seed or count is invalid.
    """
    h, w, c = _check_size(input_shape)
    check_seed(seed)
    counts = {**SYNTHETIC_COUNTS, **(counts or {})}
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise ConfigError(f"synthetic detection set: unknown split(s) {unknown}; valid: {', '.join(SPLITS)}")
    parts = {}
    for split in SPLITS:
        check_count(split, counts[split])
        # One stream per split: the test set does not change when the train count does.
        parts[split] = render_synthetic(counts[split], (h, w, c), stream_rng(seed, "detection-synthetic", split),
                                        f"synthetic-{split}", f"synthetic shapes (seed {seed}, {split})")
    return DetectionSplits(**parts)


def render_synthetic(n: int, input_shape: Tuple[int, int, int], rng: np.random.Generator,
                     prefix: str = "synthetic", source: str = "synthetic shapes") -> DetectionSet:
    """Renders ``n`` images (names ``<prefix>-00000`` ...) from ``rng``.

    Raises:
        ConfigError: the input is smaller than 64x64 or has neither 1 nor 3 channels.
    """
    h, w, c = _check_size(input_shape)
    layouts = [_layout(rng, h, w) for _ in range(n)]
    images = np.empty((n, h, w, c), np.uint8)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        rgb = _backgrounds(hi - lo, h, w, rng)
        for j in range(hi - lo):
            _draw_objects(rgb[j], layouts[lo + j], rng)
        sigma = rng.uniform(0.01, 0.03, (hi - lo, 1, 1, 1)).astype(np.float32)
        rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * sigma
        out = rgb if c == 3 else (rgb @ _LUMA.astype(np.float32))[..., None]
        images[lo:hi] = np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
    boxes, classes = [], []
    for px, cls in layouts:
        boxes.append((px / np.array([h, w, h, w], np.float64)).astype(np.float32).reshape(-1, 4))
        classes.append(cls)
    names = tuple(f"{prefix}-{i:05d}" for i in range(n))
    return DetectionSet(images, tuple(boxes), tuple(classes), SYNTHETIC_LABELS, names, source)


def _check_size(input_shape) -> Tuple[int, int, int]:
    h, w, c = check_input_shape(input_shape)
    if min(h, w) < MIN_SIZE:
        raise ConfigError(f"synthetic detection set: input height and width must be >= {MIN_SIZE}, "
                          f"got {h}x{w}")
    return h, w, c


def _layout(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Integer pixel boxes ``[k, 4]`` (y0, x0, y1, x1), largest first, and their classes."""
    want = int(rng.integers(1, MAX_OBJECTS + 1))
    s = min(h, w)
    lo = int(np.ceil(SIDE_RANGE[0] * s))
    hi_h, hi_w = int(SIDE_RANGE[1] * h), int(SIDE_RANGE[1] * w)
    placed: List[List[int]] = []
    for _ in range(want):
        for _ in range(_PLACE_TRIES):
            side = rng.uniform(*SIDE_RANGE) * s
            aspect = np.exp(rng.uniform(-0.25, 0.25))
            bh = int(np.clip(round(side * aspect), lo, hi_h))
            bw = int(np.clip(round(side / aspect), lo, hi_w))
            y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            box = [y0, x0, y0 + bh, x0 + bw]
            if not placed or _fits(np.array(box, np.float64), np.array(placed, np.float64)):
                placed.append(box)
                break
    px = np.array(placed, np.int64).reshape(-1, 4)
    order = np.argsort(-(px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1]), kind="stable")
    cls = rng.integers(0, len(SYNTHETIC_LABELS), len(px)).astype(np.int64)
    return px[order], cls


def _fits(box: np.ndarray, others: np.ndarray) -> bool:
    if box_iou(box, others).max() > MAX_IOU:
        return False
    ih = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iw = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    area = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    smaller = np.minimum((box[2] - box[0]) * (box[3] - box[1]), area)
    return bool((ih * iw / smaller).max() <= MAX_COVER)


def _backgrounds(n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Float32 RGB ``[n, h, w, 3]``: base colour, smooth blotches, a faint texture, clutter."""
    f32 = np.float32
    base = rng.uniform(0.15, 0.85, (n, 1, 1, 3))
    grid = rng.standard_normal((n, 3, 4, 4)) * rng.uniform(0.03, 0.1, (n, 1, 1, 1))
    blotch = (resize_matrix(4, h) @ grid.astype(f32) @ resize_matrix(4, w).T).transpose(0, 2, 3, 1)
    ys = (np.arange(h, dtype=f32) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=f32) + 0.5)[None, None, :]
    angle, period = rng.uniform(0, np.pi, n), rng.uniform(0.03, 0.12, n) * min(h, w)
    amp, phase = rng.uniform(0.0, 0.05, n), rng.uniform(0, 2 * np.pi, n)

    def col(a):
        return np.asarray(a, f32)[:, None, None]

    wave = np.sin((col(np.cos(angle)) * xs + col(np.sin(angle)) * ys) * col(2 * np.pi / period) + col(phase))
    img = (base.astype(f32) + blotch + (wave * col(amp))[..., None]).astype(f32)
    for i in range(n):
        _clutter(img[i], rng)
    return img


def _clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Up to three small dots and two thin lines, each drawn only inside its own window."""
    h, w, _ = img.shape
    s = min(h, w)
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(0.01, 0.025) * s  # at most 5% across: well under the 12% smallest object
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        _paint(img, (cy - r, cx - r, cy + r, cx + r), lambda yy, xx: np.hypot(yy - cy, xx - cx) - r,
               rng.uniform(0, 1, 3))
    for _ in range(int(rng.integers(0, 3))):
        half = rng.uniform(0.03, 0.06) * s
        cy, cx, a = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, np.pi)
        dy, dx = np.sin(a), np.cos(a)

        def seg(yy, xx, cy=cy, cx=cx, dy=dy, dx=dx, half=half):
            t = np.clip((yy - cy) * dy + (xx - cx) * dx, -half, half)
            return np.hypot(yy - cy - t * dy, xx - cx - t * dx) - 0.6

        _paint(img, (cy - half - 1, cx - half - 1, cy + half + 1, cx + half + 1), seg, rng.uniform(0, 1, 3))


def _paint(img: np.ndarray, window, sdf, colour) -> None:
    """Blends ``colour`` over ``img`` where ``sdf`` (pixels, negative inside) says, in ``window``."""
    h, w, _ = img.shape
    y0, x0 = max(0, int(np.floor(window[0]))), max(0, int(np.floor(window[1])))
    y1, x1 = min(h, int(np.ceil(window[2]))), min(w, int(np.ceil(window[3])))
    if y1 <= y0 or x1 <= x0:
        return
    yy = (np.arange(y0, y1, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(x0, x1, dtype=np.float32) + 0.5)[None, :]
    alpha = np.clip(0.5 - sdf(yy, xx), 0, 1)[..., None].astype(np.float32)
    patch = img[y0:y1, x0:x1]
    patch += (np.asarray(colour, np.float32) - patch) * alpha


def _draw_objects(img: np.ndarray, layout, rng: np.random.Generator) -> None:
    px, classes = layout
    for (y0, x0, y1, x1), k in zip(px, classes):
        local = img[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
        colour = _contrasting(local, rng)
        name = SYNTHETIC_LABELS[int(k)]
        b, a = (y1 - y0) / 2, (x1 - x0) / 2
        cy, cx = y0 + b, x0 + a
        t = rng.uniform(0.25, 0.38)
        down = bool(rng.random() < 0.5)
        shade = rng.uniform(-0.08, 0.08, 2)
        yy = (np.arange(y0, y1, dtype=np.float32) + 0.5)[:, None]
        xx = (np.arange(x0, x1, dtype=np.float32) + 0.5)[None, :]
        sd = _SHAPES[name](yy - cy, xx - cx, b, a, t, down)
        alpha = np.clip(0.5 - sd, 0, 1)[..., None].astype(np.float32)
        # A gentle linear shading across the object (a solid colour that is not flat), away
        # from the background's luma so that it never lowers the object's contrast.
        away = 1.0 if colour @ _LUMA > local @ _LUMA else -1.0
        ramp = np.abs(shade[0]) * (0.5 + np.sign(shade[0]) * (yy - cy) / (2 * b)) \
            + np.abs(shade[1]) * (0.5 + np.sign(shade[1]) * (xx - cx) / (2 * a))
        fill = np.clip(colour[None, None, :] + away * ramp[..., None], 0, 1).astype(np.float32)
        patch = img[y0:y1, x0:x1]
        patch += (fill - patch) * alpha


def _contrasting(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random hue whose luma is 0.35-0.5 away from the background's (grey images keep it)."""
    bl = float(background @ _LUMA)
    step = rng.uniform(0.35, 0.5)
    luma = bl + step if (bl < 0.5) else bl - step
    tint = rng.uniform(-0.35, 0.35, 3)
    tint -= tint @ _LUMA  # a hue change that keeps the luma
    luma = np.clip(luma, 0.03, 0.97)
    for scale in (1.0, 0.5, 0.0):  # less hue where clipping to [0, 1] would eat the contrast
        colour = np.clip(luma + scale * tint, 0, 1)
        if abs(colour @ _LUMA - bl) >= 0.3:
            break
    return colour.astype(np.float32)


# Signed distances in pixels (negative inside) of shapes filling a box of half-sizes (b, a),
# from offsets (dy, dx) to the box centre. Each reaches all four edges of its box.

def _disc(dy, dx, b, a, t, down):
    return (np.hypot(dy / b, dx / a) - 1) * min(a, b)


def _ring(dy, dx, b, a, t, down):
    return (np.abs(np.hypot(dy / b, dx / a) - (1 - t / 2)) - t / 2) * min(a, b)


def _square(dy, dx, b, a, t, down):
    return np.maximum(np.abs(dx) - a, np.abs(dy) - b)


def _triangle(dy, dx, b, a, t, down):
    # Apex at the middle of the top edge (bottom edge when pointing down), base on the other.
    # The apex is cut 2 pixels wide: a sharp one covers too little of its edge pixels to show.
    v = -dy if down else dy
    c = 1.0
    norm = np.hypot(2 * b, a - c)
    side = (2 * b * (np.abs(dx) - c) - (a - c) * (v + b)) / norm  # distance to a slanted edge
    return np.maximum(v - b, side)


def _plus(dy, dx, b, a, t, down):
    ay, ax = np.abs(dy), np.abs(dx)
    return np.minimum(np.maximum(ax - a, ay - t * b), np.maximum(ax - t * a, ay - b))


_SHAPES = {"disc": _disc, "ring": _ring, "square": _square, "triangle": _triangle, "plus": _plus}
if set(_SHAPES) != set(SYNTHETIC_LABELS):  # pragma: no cover - a label added without its shape
    raise ValueError("pipeline.detection.synthetic: every label needs a shape")

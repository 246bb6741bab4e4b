"""Detection augmentation: images and their boxes transformed together.

Each image gets a random horizontal flip, zoom about its centre and shift, drawn from
a generator the caller seeds. The map is axis-aligned, so it is sampled separably
(bilinear, pixel centres at ``i + 0.5``); what falls outside the source image is black,
as ``fit: pad`` borders are. Boxes go through the same map
(:func:`pipeline.detection.boxes.affine_boxes`), are clipped to the image, and those
left mostly outside are dropped with their classes
(:func:`pipeline.detection.boxes.clip_boxes`).
"""

from typing import List, Sequence, Tuple

import numpy as np

from pipeline.detection.boxes import affine_boxes, clip_boxes, flip_boxes
from pipeline.errors import ConfigError


def augment_detection(images: np.ndarray, boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray],
                      rng: np.random.Generator, flip: bool = True, shift: float = 0.1,
                      zoom: float = 0.2) -> Tuple[np.ndarray, List[np.ndarray], List[np.ndarray]]:
    """Randomly flipped, zoomed and shifted copies of images, with their boxes.

    Args:
        images: NHWC, uint8 or float (values kept in the input's range and dtype).
        boxes: per image, normalized ``[ymin, xmin, ymax, xmax]`` ``[k, 4]``.
        classes: per image, int64 ``[k]``.
        rng: every random draw comes from it (same generator state, same output).
        flip: mirror each image left-right with probability 1/2.
        shift: largest shift, a fraction of the image side (per axis, uniform).
        zoom: zoom factors are uniform in ``[1 - zoom, 1 + zoom]`` (1 + zoom enlarges).

    Returns:
        (images of the input's shape and dtype, boxes per image, classes per image); a
        box left with too little inside the image is dropped with its class.

    Raises:
        ConfigError: ``shift`` is not in [0, 1) or ``zoom`` not in [0, 1).
    """
    for name, value in (("shift", shift), ("zoom", zoom)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"detection augmentation: {name} must be in [0, 1), got {value!r}")
    n, h, w, _ = images.shape
    if len(boxes) != n or len(classes) != n:
        raise ValueError(f"augment_detection: {n} images but {len(boxes)} box and {len(classes)} class arrays")
    # Every parameter for all images in a fixed order: the same rng state gives the same draw.
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    zooms = rng.uniform(1.0 - zoom, 1.0 + zoom, n)
    shifts = rng.uniform(-shift, shift, (n, 2))
    out = np.empty_like(images)
    new_boxes, new_classes = [], []
    for i in range(n):
        out[i] = _warp(images[i], bool(flips[i]), float(zooms[i]), shifts[i])
        b = flip_boxes(boxes[i]) if flips[i] else np.asarray(boxes[i], np.float32).reshape(-1, 4)
        b, c = clip_boxes(affine_boxes(b, zooms[i], tuple(shifts[i])), classes[i], (h, w))
        new_boxes.append(b)
        new_classes.append(c)
    return out, new_boxes, new_classes


def warp_image(image: np.ndarray, flip: bool, zoom: float, shift: Tuple[float, float]) -> np.ndarray:
    """One HWC image under the map of :func:`augment_detection` (flip, then zoom about the
    centre, then shift ``(dy, dx)`` in fractions of the side): the pixel twin of
    ``affine_boxes(flip_boxes(b) if flip else b, zoom, shift)``."""
    return _warp(image, flip, zoom, np.asarray(shift, np.float64))


def _axis(size: int, zoom: float, offset: float, mirror: bool):
    """Per output index along one axis: the two source indexes, the weight of the second,
    and whether the output lies inside the source at all."""
    # Output continuous coordinate p = 0.5 + (q - 0.5) * zoom + offset, q the (flipped) source one.
    p = (np.arange(size) + 0.5) / size
    q = (p - offset - 0.5) / zoom + 0.5
    if mirror:
        q = 1.0 - q
    src = q * size - 0.5  # in source pixel-centre units
    inside = (q >= 0.0) & (q <= 1.0)
    s = np.clip(src, 0.0, size - 1.0)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, (s - i0), inside


def _warp(image: np.ndarray, flip: bool, zoom: float, shift) -> np.ndarray:
    h, w, _ = image.shape
    y0, y1, fy, in_y = _axis(h, zoom, float(shift[0]), False)
    x0, x1, fx, in_x = _axis(w, zoom, float(shift[1]), flip)
    x = image.astype(np.float32)
    fy = fy.astype(np.float32)[:, None, None]
    fx = fx.astype(np.float32)[None, :, None]
    rows = x[y0] * (1 - fy) + x[y1] * fy
    out = rows[:, x0] * (1 - fx) + rows[:, x1] * fx
    out *= (in_y[:, None] & in_x[None, :])[..., None]
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.round(out), info.min, info.max).astype(image.dtype)
    return out.astype(image.dtype)

"""Boxes: conversions from the pixel formats of annotation files, validation, and the
geometric transforms that images undergo, applied to boxes.

Every box here is float32 ``[ymin, xmin, ymax, xmax]``, normalized to [0, 1] by the
image's height and width, in *continuous* coordinates: pixel ``i`` covers ``[i, i + 1)``,
so a box around pixels 2..5 of a 10-pixel row is ``[0.2, 0.6)``. Under that convention a
box transforms exactly as the pixels do:

* ``resize`` (stretch to the input size) leaves normalized boxes unchanged;
* ``pad`` (:func:`pad_geometry`, the rule of :func:`pipeline.data.resize.fit_images` and
  of Pillow's twin in :mod:`pipeline.data.cache`) scales them into the inner image and
  offsets them by its border;
* a horizontal flip mirrors ``x`` about the centre;
* shift and zoom (:func:`affine_boxes`) move and scale them about the centre, after which
  :func:`clip_boxes` clips them to the image and drops those left mostly outside.
"""

from typing import Sequence, Tuple

import numpy as np

from pipeline.errors import DataError
from pipeline.vocabulary import FIT_MODES, check_implements

#: How far (pixels) a box may reach past the image border before it is an error; within
#: it the box is clipped. Annotation tools round corners (COCO to 0.01 px, VOC's 1-based
#: corners are sometimes written 0-based), so an edge can overshoot by a fraction of a pixel.
BORDER_TOLERANCE_PX = 1.0
#: A transformed box is dropped when less than this fraction of its area stays in the image...
MIN_KEPT_FRACTION = 0.4
#: ... or when its clipped height or width is under this many pixels.
MIN_SIDE_PX = 2.0


def empty_boxes() -> Tuple[np.ndarray, np.ndarray]:
    """No boxes: float32 ``[0, 4]`` and int64 ``[0]`` classes."""
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)


# Conversions from the annotation formats ---------------------------------------------------

def xyxy_to_boxes(xyxy, width: float, height: float) -> np.ndarray:
    """Pixel corners ``[x0, y0, x1, y1]`` (continuous, 0-based) -> normalized boxes ``[k, 4]``."""
    a = np.asarray(xyxy, np.float64).reshape(-1, 4)
    out = np.stack([a[:, 1] / height, a[:, 0] / width, a[:, 3] / height, a[:, 2] / width], axis=1)
    return out.astype(np.float32)


def coco_to_boxes(xywh, width: float, height: float) -> np.ndarray:
    """COCO ``[x, y, width, height]`` in pixels -> normalized boxes ``[k, 4]``."""
    a = np.asarray(xywh, np.float64).reshape(-1, 4)
    return xyxy_to_boxes(np.concatenate([a[:, :2], a[:, :2] + a[:, 2:]], axis=1), width, height)


def voc_to_boxes(corners, width: float, height: float) -> np.ndarray:
    """VOC ``[xmin, ymin, xmax, ymax]`` (1-based, inclusive pixel indexes) -> normalized boxes.

    Pixel ``xmin`` (1-based) starts at continuous 0-based ``xmin - 1``; pixel ``xmax``
    ends at ``xmax``.
    """
    a = np.asarray(corners, np.float64).reshape(-1, 4)
    return xyxy_to_boxes(a - np.array([1.0, 1.0, 0.0, 0.0]), width, height)


def boxes_to_coco(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalized boxes -> COCO ``[x, y, width, height]`` in pixels (float64)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 1] * width, b[:, 0] * height,
                     (b[:, 3] - b[:, 1]) * width, (b[:, 2] - b[:, 0]) * height], axis=1)


def check_box(given, xyxy: Sequence[float], width: float, height: float, where: str) -> np.ndarray:
    """Validates one box in pixels and returns its corners clipped to the image.

    Args:
        given: the box as the file writes it (quoted in the message).
        xyxy: its continuous 0-based pixel corners ``[x0, y0, x1, y1]``.
        width, height: the image's size in pixels.
        where: what names the box in a message (the file, and the annotation in it).

    Raises:
        DataError: a corner is not a finite number, the size is not positive, or the box
            reaches more than :data:`BORDER_TOLERANCE_PX` past the image.
    """
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    if not np.all(np.isfinite([x0, y0, x1, y1])):
        raise DataError(f"{where}: box {given} has a coordinate that is not a finite number")
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"{where}: box {given} has a non-positive size "
                        f"({x1 - x0:g} x {y1 - y0:g} pixels)")
    tol = BORDER_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise DataError(f"{where}: box {given} lies outside the {width:g}x{height:g} image "
                        f"(corners x {x0:g}..{x1:g}, y {y0:g}..{y1:g})")
    out = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)])
    if out[2] <= out[0] or out[3] <= out[1]:
        raise DataError(f"{where}: box {given} lies outside the {width:g}x{height:g} image")
    return out


# Fitting to the input size -----------------------------------------------------------------

def pad_geometry(src_hw: Tuple[int, int], dst_hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """Where ``fit: pad`` puts a ``src_hw`` image in a ``dst_hw`` canvas: (top, left, height, width).

    The rule of :func:`pipeline.data.resize.fit_images`: enlarge by the largest whole
    factor that fits, else shrink to fit (sides rounded, at least 1), then centre.
    """
    (h0, w0), (h, w) = src_hw, dst_hw
    k = min(h // h0, w // w0)
    if k >= 1:
        ih, iw = h0 * k, w0 * k
    else:
        s = min(h / h0, w / w0)
        ih, iw = max(1, round(h0 * s)), max(1, round(w0 * s))
    return (h - ih) // 2, (w - iw) // 2, ih, iw


def pad_boxes(boxes: np.ndarray, src_hw: Tuple[int, int], dst_hw: Tuple[int, int]) -> np.ndarray:
    """Boxes of a ``src_hw`` image -> the same boxes after ``fit: pad`` to ``dst_hw``."""
    top, left, ih, iw = pad_geometry(src_hw, dst_hw)
    h, w = dst_hw
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = np.array([ih / h, iw / w, ih / h, iw / w])
    offset = np.array([top / h, left / w, top / h, left / w])
    return (b * scale + offset).astype(np.float32)


def resize_boxes(boxes: np.ndarray, src_hw: Tuple[int, int], dst_hw: Tuple[int, int]) -> np.ndarray:
    """Boxes after ``fit: resize`` (a stretch): normalized boxes do not change."""
    return np.asarray(boxes, np.float32).reshape(-1, 4).copy()


#: Fit mode -> how boxes follow the image (the twins of pipeline.data.resize.FITS).
BOX_FITS = {"resize": resize_boxes, "pad": pad_boxes}
check_implements(FIT_MODES, BOX_FITS, "pipeline.detection.boxes")


def fit_boxes(boxes: np.ndarray, src_hw: Tuple[int, int], dst_hw: Tuple[int, int], fit: str) -> np.ndarray:
    """Boxes of a ``src_hw`` image after it is fitted to ``dst_hw`` by ``fit`` (resize or pad)."""
    return BOX_FITS[fit](boxes, tuple(src_hw), tuple(dst_hw))


# Augmentation geometry ---------------------------------------------------------------------

def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes of a horizontally mirrored image: ``x -> 1 - x`` (xmin and xmax swap)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack([b[:, 0], 1 - b[:, 3], b[:, 2], 1 - b[:, 1]], axis=1).astype(np.float32)


def affine_boxes(boxes: np.ndarray, zoom: float = 1.0, shift: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Boxes under a zoom about the image centre, then a shift: ``p -> 0.5 + (p - 0.5) * zoom + shift``.

    ``zoom > 1`` enlarges the content; ``shift = (dy, dx)`` in fractions of the image
    height and width. Not clipped: follow with :func:`clip_boxes`.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    dy, dx = shift
    out = 0.5 + (b - 0.5) * zoom + np.array([dy, dx, dy, dx])
    return out.astype(np.float32)


def clip_boxes(boxes: np.ndarray, classes: np.ndarray, image_hw: Tuple[int, int],
               min_kept: float = MIN_KEPT_FRACTION,
               min_side_px: float = MIN_SIDE_PX) -> Tuple[np.ndarray, np.ndarray]:
    """Clips boxes to the image and drops, with their classes, those left mostly outside.

    A box is dropped when less than ``min_kept`` of its area remains inside, or when its
    clipped height or width is under ``min_side_px`` pixels of an ``image_hw`` image.

    Returns:
        (clipped float32 boxes ``[m, 4]``, their int64 classes ``[m]``).
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c = np.asarray(classes, np.int64).reshape(-1)
    clipped = np.clip(b, 0.0, 1.0)
    hh, ww = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    ch, cw = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = hh * ww
    kept = np.where(area > 0, ch * cw / np.where(area > 0, area, 1.0), 0.0)
    h, w = image_hw
    keep = (kept >= min_kept) & (ch * h >= min_side_px) & (cw * w >= min_side_px)
    return clipped[keep].astype(np.float32), c[keep]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``[n, 4]`` with every box of ``b`` ``[m, 4]`` (both
    ``[ymin, xmin, ymax, xmax]``): float64 ``[n, m]``, 0 where the union is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

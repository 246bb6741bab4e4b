"""SSD anchors, box IoU, the center-size box encoding and anchor matching (numpy).

Anchors are ``[yc, xc, h, w]`` normalized to the image; boxes are
``[ymin, xmin, ymax, xmax]``. The encoding is SSD's center-size one with the scales
TFLite's ``TFLite_Detection_PostProcess`` op decodes with (y 10, x 10, h 5, w 5):

    ty = (yc - ya) / ha * 10    tx = (xc - xa) / wa * 10
    th = log(h / ha) * 5        tw = log(w / wa) * 5

Anchor order is the order the SSDLite head flattens its outputs in
(:mod:`models.ssdlite`): feature maps in order, and in each map row-major over y,
then x, then the anchors of a cell (the aspect ratios in order, then the extra scale).
"""

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from pipeline.errors import ConfigError

#: Box-encoding scales (y, x, h, w), as TFLite's detection post-processing op takes them.
SCALES = np.array([10.0, 10.0, 5.0, 5.0], np.float32)

#: Smallest height or width an encoded box or anchor is given (a zero-size box has no log).
_EPS = 1e-8

#: Largest |th/5| or |tw/5| decoded: boxes at most ~60x their anchor (exp would overflow).
_MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))


@dataclass(frozen=True)
class AnchorSpec:
    """How anchors are laid out on the feature maps (SSD, Liu et al. 2016, sec. 2.2).

    The scale of map k of m is ``min_scale + (max_scale - min_scale) * k / (m - 1)``;
    each cell has one anchor per aspect ratio (width / height) at that scale, and with
    ``extra_scale`` one more at ratio 1 and scale ``sqrt(s_k * s_{k+1})`` (``s_m`` = 1).
    """

    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: Tuple[float, ...] = (1.0, 2.0, 0.5)
    extra_scale: bool = True

    def __post_init__(self):
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ConfigError("anchor scales must satisfy 0 < min_scale <= max_scale <= 1; "
                              f"got min_scale {self.min_scale!r}, max_scale {self.max_scale!r}")
        if not self.aspect_ratios or any(r <= 0 for r in self.aspect_ratios):
            raise ConfigError("anchor aspect_ratios must be a non-empty list of numbers > 0; "
                              f"got {self.aspect_ratios!r}")

    @property
    def per_cell(self) -> int:
        """Anchors per feature-map cell (the head predicts this many boxes per cell)."""
        return len(self.aspect_ratios) + int(self.extra_scale)

    def scales(self, maps: int) -> np.ndarray:
        """The scale of each of ``maps`` feature maps, from min_scale to max_scale."""
        if maps == 1:
            return np.array([self.min_scale], np.float64)
        return np.linspace(self.min_scale, self.max_scale, maps)


def generate_anchors(feature_shapes: Sequence[Tuple[int, int]], spec: AnchorSpec = AnchorSpec()) -> np.ndarray:
    """The anchors of feature maps of the given (height, width) sizes, in head order.

    Args:
        feature_shapes: (rows, cols) of each feature map, largest first (as
            :func:`models.ssdlite.build_ssdlite` returns them).
        spec: scales and aspect ratios.

    Returns:
        float32 ``[N, 4]`` anchors ``[yc, xc, h, w]``, N = sum(rows * cols) * per_cell;
        cell (i, j) of a map is centred at ``((i + 0.5) / rows, (j + 0.5) / cols)``.
    """
    scales = spec.scales(len(feature_shapes))
    out = []
    for k, (rows, cols) in enumerate(feature_shapes):
        s = scales[k]
        s_next = scales[k + 1] if k + 1 < len(scales) else 1.0
        sizes = [(s / np.sqrt(r), s * np.sqrt(r)) for r in spec.aspect_ratios]  # (h, w)
        if spec.extra_scale:
            sizes.append((np.sqrt(s * s_next),) * 2)
        hw = np.array(sizes, np.float64)  # [A, 2]
        yc, xc = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
        centres = np.stack([yc.ravel(), xc.ravel()], axis=1)  # [rows*cols, 2], row-major
        a = len(hw)
        out.append(np.concatenate([np.repeat(centres, a, axis=0), np.tile(hw, (rows * cols, 1))], axis=1))
    return np.concatenate(out).astype(np.float32)


def to_corners(anchors: np.ndarray) -> np.ndarray:
    """``[yc, xc, h, w]`` -> ``[ymin, xmin, ymax, xmax]``."""
    centre, size = anchors[:, :2], anchors[:, 2:]
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def to_centres(boxes: np.ndarray) -> np.ndarray:
    """``[ymin, xmin, ymax, xmax]`` -> ``[yc, xc, h, w]``."""
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The intersection over union of every box of ``a`` [n, 4] with every box of ``b``
    [m, 4] (both ``[ymin, xmin, ymax, xmax]``): float32 ``[n, m]``, 0 where the union is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).astype(np.float32)


def encode(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Encodes boxes [N, 4] against their anchors [N, 4]: float32 ``[N, 4]`` of
    ``[ty, tx, th, tw]`` (see the module docstring)."""
    box = to_centres(np.asarray(boxes, np.float64))
    anchors = np.asarray(anchors, np.float64)
    ha, wa = np.maximum(anchors[:, 2], _EPS), np.maximum(anchors[:, 3], _EPS)
    h, w = np.maximum(box[:, 2], _EPS), np.maximum(box[:, 3], _EPS)
    t = np.stack([(box[:, 0] - anchors[:, 0]) / ha, (box[:, 1] - anchors[:, 1]) / wa,
                  np.log(h / ha), np.log(w / wa)], axis=1)
    return (t * SCALES).astype(np.float32)


def decode(encodings: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode`: encodings [..., N, 4] and anchors [N, 4] -> float32
    boxes ``[..., N, 4]`` (not clipped to the image)."""
    t = np.asarray(encodings, np.float64) / SCALES
    anchors = np.asarray(anchors, np.float64)
    yc = t[..., 0] * anchors[:, 2] + anchors[:, 0]
    xc = t[..., 1] * anchors[:, 3] + anchors[:, 1]
    h = np.exp(np.minimum(t[..., 2], _MAX_LOG_SCALE)) * anchors[:, 2]
    w = np.exp(np.minimum(t[..., 3], _MAX_LOG_SCALE)) * anchors[:, 3]
    return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1).astype(np.float32)


def match(gt_boxes: np.ndarray, gt_classes: np.ndarray, anchors: np.ndarray, pos_iou: float = 0.5,
          neg_iou: float = 0.4) -> Tuple[np.ndarray, np.ndarray]:
    """Assigns ground-truth boxes to anchors (SSD's argmax matcher with forced matches).

    An anchor whose best IoU with a box is >= ``pos_iou`` matches that box; below
    ``neg_iou`` it is background; in between it is ignored. Then every box is put on
    the anchor it overlaps most (even below ``neg_iou``), so that no box goes
    unmatched; where two boxes share that anchor the later one has it. A box that
    overlaps no anchor (an empty one) matches nothing.

    Args:
        gt_boxes: float ``[k, 4]`` boxes ``[ymin, xmin, ymax, xmax]`` (k may be 0).
        gt_classes: int ``[k]`` 0-based classes.
        anchors: float32 ``[N, 4]`` ``[yc, xc, h, w]``.
        pos_iou: IoU from which an anchor is positive.
        neg_iou: IoU below which an anchor is background (<= ``pos_iou``).

    Returns:
        (box_targets float32 ``[N, 4]`` encodings, zero where not positive;
        class_targets int64 ``[N]``: 0 background, c + 1 for class c, -1 ignored).
    """
    if neg_iou > pos_iou:
        raise ConfigError(f"neg_iou must be <= pos_iou; got neg_iou {neg_iou}, pos_iou {pos_iou}")
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
    n = len(anchors)
    box_targets = np.zeros((n, 4), np.float32)
    class_targets = np.zeros(n, np.int64)
    if len(gt_boxes) == 0:
        return box_targets, class_targets
    overlaps = iou(to_corners(anchors), gt_boxes)  # [N, k]
    best_gt = overlaps.argmax(axis=1)
    best_iou = overlaps[np.arange(n), best_gt]
    class_targets[best_iou >= pos_iou] = 1
    class_targets[(best_iou >= neg_iou) & (best_iou < pos_iou)] = -1
    forced = overlaps.argmax(axis=0)  # [k]: each box's best anchor
    boxes_on = np.flatnonzero(overlaps[forced, np.arange(len(gt_boxes))] > 0)  # not an empty box
    best_gt[forced[boxes_on]] = boxes_on  # a later box wins a shared anchor
    class_targets[forced[boxes_on]] = 1
    positive = class_targets == 1
    class_targets[positive] = gt_classes[best_gt[positive]] + 1
    box_targets[positive] = encode(gt_boxes[best_gt[positive]], anchors[positive])
    return box_targets, class_targets


def match_batch(boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray], anchors: np.ndarray,
                pos_iou: float = 0.5, neg_iou: float = 0.4) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`match` for each image: (box_targets ``[B, N, 4]``, class_targets ``[B, N]``)."""
    pairs = [match(b, c, anchors, pos_iou, neg_iou) for b, c in zip(boxes, classes)]
    if not pairs:
        return np.zeros((0, len(anchors), 4), np.float32), np.zeros((0, len(anchors)), np.int64)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

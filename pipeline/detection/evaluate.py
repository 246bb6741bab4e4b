"""Evaluating detectors: running a ``.tflite`` detector, COCO mAP, host-vs-device
agreement, and drawing detections.

Per image, detections are boxes ``[m, 4]`` (normalized ``[ymin, xmin, ymax, xmax]``),
classes ``[m]`` (0-based, background removed) and scores ``[m]``: a
:class:`Detections`, or any mapping or object with those three fields. Ground truth
is the same without scores.
"""

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from pipeline.detection.boxes import box_iou
from pipeline.detection.types import Detections, as_detections, find_postprocess_op
from pipeline.errors import ConfigError, DataError, ModelFileError
from pipeline.tflite.host import ModelSource, allocate, make_interpreter, quantize_input
from pipeline.tflite.reader import parse_tflite, read_tflite
from pipeline.tflite.verify import schema

#: Image sizes in pixels: one ``(height, width)`` for all images, or one per image.
ImageSize = Union[Tuple[int, int], Sequence[Tuple[int, int]]]


# -- running a .tflite detector ----------------------------------------------------

def postprocess_options(tflite: bytes, source: str = "model") -> Dict[str, Any]:
    """The settings (custom options, a flexbuffer map) of a detector's postprocess op.

    Raises:
        ModelFileError: not a detector, or options that are not a flexbuffer map.
    """
    from flatbuffers import flexbuffers

    model = parse_tflite(tflite, source)  # checks every offset the generated reader below follows
    index = model.operators.index(find_postprocess_op(model, source))
    raw = schema().Model.GetRootAs(tflite, 0).Subgraphs(0).Operators(index).CustomOptionsAsNumpy()
    try:
        options = flexbuffers.Loads(raw.tobytes()) if not isinstance(raw, int) else None
    except (ValueError, IndexError, TypeError) as e:
        raise ModelFileError(f"{source}: unreadable TFLite_Detection_PostProcess options ({e})") from None
    if not isinstance(options, dict):
        raise ModelFileError(f"{source}: TFLite_Detection_PostProcess has no options map")
    return options


def run_tflite_detector(model: ModelSource, images: np.ndarray,
                        score_threshold: float = 0.0) -> List[Detections]:
    """Runs a detector ``.tflite`` (a file or its bytes) on the host, one image per invoke.

    Args:
        images: float images in [0, 1], ``[B, H, W, C]`` as the model's input; an int8
            or uint8 input is fed the images quantized with its scale and zero point.
        score_threshold: drop detections scoring under it.

    Returns:
        One :class:`Detections` per image: the first ``count`` rows of the outputs.

    Raises:
        ModelFileError: not a TFLite file, or not a detector.
        ConfigError: images of another shape than the model's input, or not float.
    """
    name = "model bytes" if isinstance(model, (bytes, bytearray)) else str(model)
    parsed = parse_tflite(bytes(model), name) if isinstance(model, (bytes, bytearray)) else read_tflite(model)
    op = find_postprocess_op(parsed, name)
    images = np.asarray(images)
    want = tuple(parsed.tensors[parsed.inputs[0]].shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != want or not np.issubdtype(images.dtype, np.floating):
        raise ConfigError(f"{name}: expected float images [B, {', '.join(map(str, want))}] in [0, 1], "
                          f"got {images.dtype} {list(images.shape)}")
    interp = make_interpreter(model)
    allocate(interp)
    inp = interp.get_input_details()[0]
    results = []
    for image in images:
        interp.set_tensor(inp["index"], quantize_input(image[None], inp))
        interp.invoke()
        boxes, classes, scores, count = (interp.get_tensor(i) for i in op.outputs)
        results.extend(detections_from_outputs(boxes, classes, scores, count, score_threshold))
    return results


def detections_from_outputs(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, count: np.ndarray,
                            score_threshold: float = 0.0) -> List[Detections]:
    """Per-image detections from the postprocess op's four outputs stacked over images
    (``[B, M, 4]``, ``[B, M]``, ``[B, M]``, ``[B]``), as a device run returns them.

    Raises:
        DataError: the shapes do not fit together, or a count outside [0, M].
    """
    boxes, classes, scores = np.asarray(boxes), np.asarray(classes), np.asarray(scores)
    count = np.asarray(count, np.float64).reshape(-1)
    m = boxes.shape[1] if boxes.ndim == 3 else -1
    if boxes.ndim != 3 or boxes.shape[2] != 4 or classes.shape != boxes.shape[:2] or scores.shape != classes.shape \
            or len(count) != len(boxes) or np.any(count < 0) or np.any(count > m):
        raise DataError(f"detector outputs do not fit together: boxes {list(boxes.shape)}, classes "
                        f"{list(classes.shape)}, scores {list(scores.shape)}, counts {count.tolist()[:4]}")
    results = []
    for b, c, s, n in zip(boxes, classes, scores, count.astype(np.int64)):
        d = Detections(b[:n].astype(np.float32), c[:n].astype(np.int64), s[:n].astype(np.float32))
        results.append(d.above(score_threshold) if score_threshold > 0 else d)
    return results


# -- COCO mAP ----------------------------------------------------------------------

@dataclass(frozen=True)
class CocoMetrics:
    """COCO box metrics (pycocotools), all over 100 detections per image at most.

    Attributes:
        map: mAP averaged over IoU 0.50:0.95; map_50, map_75: at IoU 0.5 and 0.75.
        images, boxes, detections: what was evaluated.
    """

    map: float
    map_50: float
    map_75: float
    images: int
    boxes: int
    detections: int


def _pixel_xywh(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalized ``[ymin, xmin, ymax, xmax]`` -> pixel ``[x, y, w, h]`` (clipped to the image)."""
    b = np.clip(np.asarray(boxes, np.float64), 0.0, 1.0)
    return np.stack([b[:, 1] * width, b[:, 0] * height, (b[:, 3] - b[:, 1]) * width,
                     (b[:, 2] - b[:, 0]) * height], axis=1)


def _check_ground_truth(gt: Detections, where: str) -> None:
    b = gt.boxes
    bad = np.flatnonzero(~np.all(np.isfinite(b), axis=1) | np.any(b < 0, axis=1) | np.any(b > 1, axis=1)
                         | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
    if len(bad):
        raise DataError(f"{where}: box {int(bad[0])} [{', '.join(f'{v:.4g}' for v in b[bad[0]])}] is not a normalized "
                        "[ymin, xmin, ymax, xmax] with ymin < ymax, xmin < xmax in [0, 1]")


def _sizes(image_size: ImageSize, n: int, source: str) -> List[Tuple[int, int]]:
    sizes = [tuple(image_size)] * n if np.ndim(image_size) == 1 else [tuple(s) for s in image_size]
    if len(sizes) != n or any(len(s) != 2 or min(s) <= 0 for s in sizes):
        raise ConfigError(f"{source}: image_size must be one (height, width) or one per image ({n}), "
                          f"got {image_size!r}")
    return [(int(h), int(w)) for h, w in sizes]


def coco_datasets(ground_truth: Sequence[Any], detections: Sequence[Any], image_size: ImageSize,
                  source: str = "ground truth") -> Tuple[dict, List[dict]]:
    """The COCO ground-truth dataset and the detection results, in pixels.

    Category ids are the 0-based class indexes plus one (COCO's ids start at 1).
    """
    if len(ground_truth) != len(detections):
        raise ConfigError(f"{source}: {len(ground_truth)} images of ground truth, {len(detections)} of detections")
    sizes = _sizes(image_size, len(ground_truth), source)
    gts = [as_detections(g, f"{source}, image {i}", scores=False) for i, g in enumerate(ground_truth)]
    dets = [as_detections(d, f"detections, image {i}") for i, d in enumerate(detections)]
    for i, g in enumerate(gts):
        _check_ground_truth(g, f"{source}, image {i}")
    if not any(len(g.classes) for g in gts):
        raise DataError(f"{source}: no ground-truth boxes in {len(gts)} images: mAP needs at least one")
    top = max(int(x.classes.max()) for x in gts + dets if len(x.classes))
    images, annotations, results = [], [], []
    for i, ((h, w), g, d) in enumerate(zip(sizes, gts, dets)):
        images.append({"id": i + 1, "height": h, "width": w})
        for box, cls in zip(_pixel_xywh(g.boxes, h, w), g.classes):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
        for box, cls, score in zip(_pixel_xywh(d.boxes, h, w), d.classes, d.scores):
            results.append({"image_id": i + 1, "category_id": int(cls) + 1, "bbox": box.tolist(),
                            "score": float(score)})
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": k + 1, "name": str(k)} for k in range(top + 1)]}
    return dataset, results


def coco_map(ground_truth: Sequence[Any], detections: Sequence[Any], image_size: Optional[ImageSize] = None,
             source: str = "ground truth") -> CocoMetrics:
    """COCO mAP@[.5:.95], mAP@0.5 and mAP@0.75 of ``detections`` against ``ground_truth``.

    Args:
        ground_truth, detections: one entry per image (see the module's docstring).
        image_size: ``(height, width)`` in pixels of every image, or one per image:
            the boxes are evaluated in pixels, where COCO's area ranges apply. The
            figures returned (over all areas) do not depend on it: IoU is the same at
            any scale. None: the normalized boxes as they are (a 1 x 1 image).
        source: names the ground truth in messages (its file).

    Returns:
        The metrics; an image without detections is fine (its boxes are misses).

    Raises:
        DataError: no ground-truth box at all, a malformed or out-of-range box.
        ConfigError: different numbers of images, or a bad ``image_size``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, results = coco_datasets(ground_truth, detections, (1, 1) if image_size is None else image_size, source)
    counts = dict(images=len(dataset["images"]), boxes=len(dataset["annotations"]), detections=len(results))
    if not results:  # pycocotools cannot load an empty result list; every box is a miss
        return CocoMetrics(0.0, 0.0, 0.0, **counts)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and the table
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [max(float(s), 0.0) for s in evaluation.stats[:3]]  # -1: no category with ground truth
    return CocoMetrics(stats[0], stats[1], stats[2], **counts)


# -- agreement of two runs (host and device) ---------------------------------------

@dataclass(frozen=True)
class DetectionAgreement:
    """How far two runs' detections agree (one-to-one: same class, IoU >= ``iou``).

    Attributes:
        host_count: the host's detections scoring >= ``score_threshold``.
        matched: how many of those the device has (at any score).
        fraction: matched / host_count (1.0 when host_count is 0).
        device_count, device_matched, reverse_fraction: the same the other way round.
    """

    iou: float
    score_threshold: float
    host_count: int
    matched: int
    fraction: float
    device_count: int
    device_matched: int
    reverse_fraction: float


def _matched(ref: Detections, other: Detections, iou: float, threshold: float) -> Tuple[int, int]:
    """(count of ``ref`` >= threshold, how many of them ``other`` has), greedily by score."""
    ref = ref.above(threshold)
    order = np.argsort(-ref.scores, kind="stable")
    ious = box_iou(ref.boxes, other.boxes)
    free = np.ones(len(other.classes), bool)
    matched = 0
    for i in order:
        ok = np.flatnonzero(free & (other.classes == ref.classes[i]) & (ious[i] >= iou))
        if len(ok):
            free[ok[np.argmax(ious[i, ok])]] = False
            matched += 1
    return len(ref.classes), matched


def detection_agreement(host: Sequence[Any], device: Sequence[Any], iou: float = 0.9,
                        score_threshold: float = 0.5) -> DetectionAgreement:
    """The share of the host's detections that the device also has, and the reverse.

    A host detection scoring at least ``score_threshold`` is matched by a device
    detection of the same class with IoU >= ``iou`` (any score: a score on either
    side of the threshold is still the same detection), each device detection
    matching one host detection at most.

    Raises:
        ConfigError: different numbers of images.
    """
    if len(host) != len(device):
        raise ConfigError(f"detection agreement: the host has {len(host)} images, the device {len(device)}")
    totals = np.zeros(4, np.int64)
    for i, (h, d) in enumerate(zip(host, device)):
        h, d = as_detections(h, f"host detections, image {i}"), as_detections(d, f"device detections, image {i}")
        totals += (*_matched(h, d, iou, score_threshold), *_matched(d, h, iou, score_threshold))
    hc, hm, dc, dm = (int(v) for v in totals)
    return DetectionAgreement(iou, score_threshold, hc, hm, hm / hc if hc else 1.0, dc, dm, dm / dc if dc else 1.0)


# -- drawing -------------------------------------------------------------------------

#: Box colours, one per class in turn (Tableau 10).
COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")


def draw_detections(image: np.ndarray, detections: Any, labels: Sequence[str], score_threshold: float = 0.0,
                    min_side: int = 256, ground_truth: Optional[Any] = None):
    """An RGB PIL image of ``image`` with the detections' boxes, labels and scores.

    Args:
        image: ``[H, W, C]`` float in [0, 1] or uint8 (1 or 3 channels).
        labels: class names, indexed by the 0-based classes.
        min_side: the picture is enlarged (nearest neighbour) so that its shorter
            side is at least this, for readable labels on small model inputs.
        ground_truth: its boxes are drawn in white under the detections.

    Raises:
        DataError: a class with no label.
    """
    from PIL import Image, ImageDraw

    d = as_detections(detections, "detections").above(score_threshold)
    pixels = np.asarray(image)
    if np.issubdtype(pixels.dtype, np.floating):
        pixels = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).convert("RGB")
    scale = max(1, int(np.ceil(min_side / min(picture.size))))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    w, h = picture.size

    def rect(box):
        return [float(box[1] * w), float(box[0] * h), float(box[3] * w), float(box[2] * h)]

    if ground_truth is not None:
        for box in as_detections(ground_truth, "ground truth", scores=False).boxes:
            draw.rectangle(rect(box), outline="white", width=1)
    for box, cls, score in zip(d.boxes, d.classes, d.scores):
        if cls >= len(labels):
            raise DataError(f"detections: class {int(cls)} has no label (labels: {len(labels)})")
        colour = COLOURS[int(cls) % len(COLOURS)]
        x0, y0, x1, y1 = rect(box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        text = f"{labels[int(cls)]} {score:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((x0 + 2, y0 + 1), text)
        draw.rectangle([tx0 - 2, ty0 - 1, tx1 + 2, ty1 + 1], fill=colour)
        draw.text((x0 + 2, y0 + 1), text, fill="white")
    return picture


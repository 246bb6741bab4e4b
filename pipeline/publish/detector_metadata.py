"""Object-detector TFLite metadata (MediaPipe's writer) and MediaPipe Tasks' ObjectDetector as a client.

A detector's ``.tflite`` (:mod:`pipeline.detection.export`) ends in TFLite's
``TFLite_Detection_PostProcess`` op. MediaPipe's object-detector metadata writer for
models with that op (``object_detector.MetadataWriter.create_for_models_with_nms``),
run in its own environment (:mod:`pipeline.publish.mediapipe_env`), records:

- the input's normalization, ``(pixel - 0) / 255`` per RGB channel: the [0, 1] images
  the pipeline trains and evaluates with;
- the roles of the four outputs, by name: ``location``, ``category``, ``score``,
  ``number of detections`` (the op's order), boxes as ``[ymin, xmin, ymax, xmax]``
  ratios;
- the labels as ``labels.txt`` on the category tensor: line i names class i, the op's
  0-based class (no background line: the op has already dropped that column).

What MediaPipe 0.10.21 does with such a file (checked by ``tests/test_mediapipe_detector.py``):

- The writer gives the roles in the order of the output tensors' *indexes*, so the
  op's four outputs must have increasing tensor indexes (checked before it runs).
- ObjectDetector keeps every detection the op returns when no score threshold is set
  (the metadata has none) and ``max_results`` is -1.
- With labels it reports a category's name and leaves its index empty; the index is
  the name's line in the labels file.
- Boxes come in whole pixels: ``x = trunc(xmin * W)`` and ``width = trunc((xmax -
  xmin) * W)``, each clamped to [0, W] (y and height alike). A box over the left or
  top edge keeps its size with its corner moved to 0; one over the right or bottom
  edge keeps its size.
"""

import json
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from pipeline.detection.types import Detections, find_postprocess_op
from pipeline.errors import ConfigError, DeviceOutputError, ModelFileError
from pipeline.publish.mediapipe_env import MediaPipeEnv, ensure_env
from pipeline.publish.tflite_metadata import read_metadata
from pipeline.tflite.reader import TFLiteModel, parse_tflite

#: MediaPipe's names for the postprocess op's four outputs, in the op's order.
OUTPUT_ROLES = ("location", "category", "score", "number of detections")
#: The op as the reader names it (a custom op).
#: Input types MediaPipe Tasks' ObjectDetector accepts.
INPUT_TYPES = ("float32", "uint8")

__all__ = ["OUTPUT_ROLES", "detect_with_mediapipe", "embed_detector_metadata", "read_metadata"]


def _check_detector(model: TFLiteModel, labels: Sequence[str], source: str) -> None:
    """Raises unless MediaPipe's writer and ObjectDetector can take ``model`` with ``labels``."""
    op = find_postprocess_op(model, source)
    if tuple(model.outputs) != tuple(op.outputs) or list(op.outputs) != sorted(op.outputs):
        raise ModelFileError(f"{source}: MediaPipe's metadata writer needs the model's outputs to be the "
                             f"postprocess op's four (boxes, classes, scores, count) with increasing tensor "
                             f"indexes; the op's are {list(op.outputs)}, the model's {list(model.outputs)}")
    scores = model.tensors[op.inputs[1]].shape
    classes = int(scores[-1]) - 1  # the class scores have a background column first
    if len(labels) != classes:
        raise ConfigError(f"{source}: {len(labels)} labels for a detector of {classes} classes (its class "
                          f"scores are {list(scores)}, background first); give one label per class")
    bad = [label for label in labels if not isinstance(label, str) or not label.strip() or "\n" in label]
    if bad:
        raise ConfigError(f"{source}: label {bad[0]!r} is not a one-line name")
    if len(set(labels)) != len(labels):
        twice = next(label for label in labels if list(labels).count(label) > 1)
        raise ConfigError(f"{source}: label {twice!r} is given twice (MediaPipe reports a class by its name)")
    inputs = [model.tensors[i] for i in model.inputs]
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[0] != 1 or inputs[0].shape[3] != 3 \
            or inputs[0].dtype not in INPUT_TYPES:
        raise ModelFileError(f"{source}: MediaPipe's ObjectDetector needs one {' or '.join(INPUT_TYPES)} RGB "
                             f"image input [1, H, W, 3]; the model's inputs are "
                             f"{', '.join(f'{t.dtype} {list(t.shape)}' for t in inputs)}")


def embed_detector_metadata(model_bytes: bytes, labels: Sequence[str], name: str, description: str, *,
                            source: str = "model bytes", env: Optional[MediaPipeEnv] = None) -> bytes:
    """The detector with object-detector metadata embedded by MediaPipe's metadata writer.

    The associated file (``labels.txt``) is packed with a fixed time, so the same model
    and labels give the same bytes.

    Args:
        model_bytes: a detector's ``.tflite`` ending in the postprocess op, with a
            float32 (images in [0, 1]) or uint8 RGB input.
        labels: class names in class-index order, one per class of the model.
        name, description: the model's name and description in the metadata.
        source: what the model is called in error messages (its file).
        env: the MediaPipe environment (built if None and missing).

    Returns:
        The ``.tflite`` with metadata.

    Raises:
        ModelFileError: not a TFLite file, not a detector, or a model MediaPipe's
            ObjectDetector cannot take (input, outputs).
        ConfigError: labels that do not match the model's classes, or duplicate or
            empty labels.
        DeviceUnavailableError: the MediaPipe environment cannot be built or its writer failed.
    """
    labels = list(labels)
    _check_detector(parse_tflite(bytes(model_bytes), source), labels, source)
    env = env or ensure_env()
    spec = {"name": name, "description": description, "labels": labels, "mean": [0.0] * 3, "std": [255.0] * 3}
    with tempfile.TemporaryDirectory(prefix="mm-metadata-") as tmp:
        (Path(tmp) / "in.tflite").write_bytes(bytes(model_bytes))
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        meta = env.run(["write-detector", Path(tmp) / "in.tflite", Path(tmp) / "out.tflite", Path(tmp) / "spec.json"],
                       "writing object-detector metadata")
        out = (Path(tmp) / "out.tflite").read_bytes()
    roles = [t.get("name") for t in meta["subgraph_metadata"][0]["output_tensor_metadata"]]
    if tuple(roles) != OUTPUT_ROLES:
        raise DeviceOutputError(f"{source}: MediaPipe's writer gave the outputs the roles {roles}, "
                                f"expected {list(OUTPUT_ROLES)}")
    return out


def detect_with_mediapipe(model_path: Path, images: np.ndarray,
                          env: Optional[MediaPipeEnv] = None) -> List[Detections]:
    """The detections of MediaPipe Tasks' ObjectDetector on ``images``, in the pipeline's convention.

    Every detection the model returns is kept (no score threshold, ``max_results``
    -1). Boxes are MediaPipe's whole-pixel boxes as ratios of the image size (see the
    module's notes for how MediaPipe rounds and clamps them).

    Args:
        model_path: a detector ``.tflite`` with object-detector metadata.
        images: uint8 RGB images ``[N, H, W, 3]``.

    Returns:
        Per image a :class:`pipeline.detection.types.Detections` (normalized boxes,
        0-based classes, scores) in MediaPipe's order.

    Raises:
        ConfigError: images that are not uint8 RGB ``[N, H, W, 3]``.
        DeviceUnavailableError: the environment or the ObjectDetector failed.
        DeviceOutputError: MediaPipe named a category that is not one of the model's labels.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(f"MediaPipe's ObjectDetector on {model_path}: expected uint8 RGB images [N, H, W, 3], "
                          f"got {images.dtype} {list(images.shape)}")
    env = env or ensure_env()
    with tempfile.TemporaryDirectory(prefix="mm-mediapipe-") as tmp:
        np.save(Path(tmp) / "images.npy", np.ascontiguousarray(images))
        info = env.run(["detect", Path(model_path).resolve(), Path(tmp) / "images.npy", Path(tmp) / "found.json"],
                       "MediaPipe Tasks' object detector")
        found = json.loads((Path(tmp) / "found.json").read_text())
    height, width = images.shape[1:3]
    scale = np.asarray([height, width, height, width], np.float64)
    results = []
    for detections in found:
        boxes = [[y, x, y + h, x + w] for x, y, w, h in (d["box"] for d in detections)]
        best = [d["categories"][0] for d in detections]  # one class per box (the op's max_classes_per_detection)
        results.append(Detections(
            boxes=(np.asarray(boxes, np.float64).reshape(-1, 4) / scale).astype(np.float32),
            classes=np.asarray([_class_index(c, info.get("labels"), model_path) for c in best], np.int64),
            scores=np.asarray([c["score"] for c in best], np.float32)))
    return results


def _class_index(category: dict, labels: Optional[List[str]], model_path: Path) -> int:
    """A category's index: MediaPipe's, or without one the line of its name in the labels."""
    if category.get("index") is not None:
        return int(category["index"])
    if not labels or category.get("name") not in labels:
        raise DeviceOutputError(f"MediaPipe's ObjectDetector on {model_path} reported category "
                                f"{category.get('name')!r}, which is not one of the model's labels")
    return labels.index(category["name"])


def mediapipe_pixel_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalized ``[ymin, xmin, ymax, xmax]`` boxes as MediaPipe's ObjectDetector reports
    them: whole-pixel ``[x, y, width, height]``, each truncated and clamped to [0, side]."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32([height, width, height, width])
    xywh = np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], axis=1)
    return np.clip(np.trunc(xywh), 0, np.float32([width, height, width, height]))


def matches_mediapipe(ours: Sequence[Detections], theirs: Sequence[Detections], height: int, width: int,
                      score_tolerance: float = 1e-5, pixel_tolerance: float = 1.0) -> int:
    """How many of ``ours`` (the pipeline's detections of a file) MediaPipe's ObjectDetector
    reports too (:func:`detect_with_mediapipe`, same images): the same class, the same score
    within ``score_tolerance``, and the box MediaPipe makes of ours (:func:`mediapipe_pixel_boxes`)
    within ``pixel_tolerance`` pixels. Each of theirs matches one of ours at most."""
    matched = 0
    for mine, found in zip(ours, theirs):
        their_pixels = np.round(np.asarray(found.boxes, np.float64).reshape(-1, 4)
                                * np.float64([height, width, height, width]))
        their_xywh = np.stack([their_pixels[:, 1], their_pixels[:, 0], their_pixels[:, 3] - their_pixels[:, 1],
                               their_pixels[:, 2] - their_pixels[:, 0]], axis=1)
        my_xywh = mediapipe_pixel_boxes(mine.boxes, height, width)
        free = np.ones(len(found.scores), bool)
        for i in np.argsort(-np.asarray(mine.scores), kind="stable"):
            same = (free & (np.asarray(found.classes) == mine.classes[i])
                    & (np.abs(np.asarray(found.scores) - mine.scores[i]) <= score_tolerance)
                    & (np.abs(their_xywh - my_xywh[i]).max(axis=1, initial=0) <= pixel_tolerance))
            if same.any():
                free[np.argmax(same)] = False
                matched += 1
    return matched

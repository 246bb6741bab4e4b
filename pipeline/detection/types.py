"""What detections are, and which op gives them: shared by evaluation, export and
publishing (this module loads no runtime: :mod:`pipeline.publish` may use it)."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import DataError, ModelFileError
from pipeline.tflite.reader import Operator, TFLiteModel

#: The custom op whose four outputs (boxes, classes, scores, count) a detector's .tflite gives.
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
POSTPROCESS_OPCODE = f"CUSTOM:{POSTPROCESS_OP}"


@dataclass(frozen=True)
class Detections:
    """The detections of one image.

    Attributes:
        boxes: float32 ``[m, 4]``, normalized ``[ymin, xmin, ymax, xmax]``.
        classes: int64 ``[m]``, 0-based indexes into the labels.
        scores: float32 ``[m]``.
    """

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray

    def above(self, threshold: float) -> "Detections":
        """The detections scoring at least ``threshold``."""
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.classes[keep], self.scores[keep])


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def as_detections(obj: Any, where: str, scores: bool = True) -> Detections:
    """A :class:`Detections` from a mapping or an object with ``boxes``, ``classes``
    (and ``scores``, else all 1 when ``scores`` is False: ground truth).

    Raises:
        DataError: a field is missing or of the wrong shape, naming ``where``.
    """
    boxes, classes = _field(obj, "boxes"), _field(obj, "classes")
    given = _field(obj, "scores") if scores else None
    if boxes is None or classes is None or (scores and given is None):
        raise DataError(f"{where}: needs fields boxes, classes{', scores' if scores else ''}")
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) if np.size(boxes) == 0 else np.asarray(boxes, np.float32)
    classes = np.asarray(classes).reshape(-1)
    values = np.ones(len(classes), np.float32) if given is None else np.asarray(given, np.float32).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes) == len(classes) == len(values):
        raise DataError(f"{where}: boxes {list(boxes.shape)} (expected [m, 4]), classes {len(classes)} "
                        f"and scores {len(values)} do not match")
    if len(classes) and (not np.all(np.mod(classes, 1) == 0) or classes.min() < 0):
        raise DataError(f"{where}: classes must be 0-based integers, got {classes.tolist()[:5]}")
    return Detections(boxes, classes.astype(np.int64), values)


def find_postprocess_op(model: TFLiteModel, source: str = "model") -> Operator:
    """The model's detection postprocess op (its outputs: boxes, classes, scores, count).

    Raises:
        ModelFileError: the model has none, or more than one.
    """
    ops = [op for op in model.operators if op.opcode == POSTPROCESS_OPCODE]
    if len(ops) != 1 or len(ops[0].outputs) != 4:
        raise ModelFileError(f"{source}: not a detector: expected one TFLite_Detection_PostProcess op "
                             f"with four outputs, found {len(ops)}")
    return ops[0]

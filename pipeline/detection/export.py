"""Export of a detector to TFLite with TFLite's detection postprocess op, validated.

A detector (see :mod:`pipeline.detection`) maps images to ``box_encodings [1, N, 4]``
and ``class_logits [1, N, C + 1]``. Export wraps it in a graph that takes the sigmoid
of the logits and hands both, with the anchors as a constant, to a ``tf.function``
marked ``experimental_implements="TFLite_Detection_PostProcess"``: the converter
replaces that function by TFLite's custom op of the same name (it reads the op's
attributes from the marker), so the ``.tflite`` outputs, like TFLite's and
MediaPipe's SSD detectors, boxes ``[1, M, 4]``, classes ``[1, M]``, scores
``[1, M]`` and a count ``[1]``, all float32.

Each variant of :data:`pipeline.variants.VARIANTS` converts the same way as a
classifier (float32, float16 weights, dynamic range, full int8 with a representative
set; the ``int8-qat`` family from a tfmot-annotated model); in the int8 variants the
network is int8 and the postprocess op stays float, after a DEQUANTIZE, as in
TFLite's own detectors. Every export is validated: the ``.tflite`` detections
against :func:`reference_postprocess` of the Keras model's outputs.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from pipeline.detection.types import POSTPROCESS_OP, POSTPROCESS_OPCODE
from pipeline.detection.evaluate import (Detections, detection_agreement, find_postprocess_op,
                                         postprocess_options, run_tflite_detector)
from pipeline.errors import ConfigError, ConversionMismatchError, Log
from pipeline.native import captured_stderr
from pipeline.plain import from_plain
from pipeline.store.atomic import atomic_write_bytes
from pipeline.tflite.converter import apply_variant
from pipeline.tflite.reader import float_compute_ops, parse_tflite
from pipeline.tflite.verify import schema
from pipeline.variants import VARIANTS, Variant

#: The SSD center-size box coder's scales (y, x, h, w): the pipeline's box encoding.
BOX_SCALES = (10.0, 10.0, 5.0, 5.0)
#: The op's ``detections_per_class`` (regular NMS only): the converter does not pass
#: this attribute on (TF 2.21's nms_utils), so the runtime's default of 100 applies.
DETECTIONS_PER_CLASS = 100
#: Detections each anchor may give (one class per box, as MediaPipe's detectors).
MAX_CLASSES_PER_DETECTION = 1

#: Validation: the IoU at which a .tflite detection is the Keras one, by number
#: format (float variants must give the same box; quantized ones the same object).
VALIDATION_IOU = {"float32": 0.9, "float16": 0.9, "hybrid": 0.5, "int8": 0.5}
#: Validation floor on detection agreement for the float variants (the quantized
#: ones use their variant's ``min_agreement``).
FLOAT_MIN_AGREEMENT = 0.95


@dataclass(frozen=True)
class PostprocessConfig:
    """The detection postprocess op's settings.

    Attributes:
        max_detections: detections per image (M, the outputs' second dimension).
        score_threshold: lowest score kept (the op's ``nms_score_threshold``); low,
            so that mAP sees the whole precision-recall curve.
        iou_threshold: a box overlapping a higher-scoring one by more than this is dropped.
        use_regular_nms: NMS per class (up to :data:`DETECTIONS_PER_CLASS` each) instead
            of the fast NMS over each anchor's best class.
    """

    max_detections: int = 25
    score_threshold: float = 0.01
    iou_threshold: float = 0.5
    use_regular_nms: bool = False

    def __post_init__(self):
        if self.max_detections < 1:
            raise ConfigError(f"postprocess max_detections must be >= 1, got {self.max_detections}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ConfigError(f"postprocess score_threshold must be in [0, 1), got {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ConfigError(f"postprocess iou_threshold must be in (0, 1], got {self.iou_threshold}")

    @classmethod
    def from_dict(cls, data) -> "PostprocessConfig":
        """From plain data; an unknown key or a wrong type is a ConfigError naming it."""
        return from_plain(cls, data, "postprocess", ConfigError)


def implements_signature(config: PostprocessConfig, num_classes: int) -> str:
    """The ``experimental_implements`` text the converter fuses into the custom op.

    A ``NameAttrList`` in protobuf text form: the op's name and its attributes
    (integers ``i``, floats ``f``, the NMS kind a bool ``b``).
    """
    y, x, h, w = BOX_SCALES
    attrs = [("max_detections", "i", config.max_detections),
             ("max_classes_per_detection", "i", MAX_CLASSES_PER_DETECTION),
             ("detections_per_class", "i", DETECTIONS_PER_CLASS),
             ("num_classes", "i", num_classes),
             ("nms_score_threshold", "f", float(config.score_threshold)),
             ("nms_iou_threshold", "f", float(config.iou_threshold)),
             ("y_scale", "f", y), ("x_scale", "f", x), ("h_scale", "f", h), ("w_scale", "f", w),
             ("use_regular_nms", "b", "true" if config.use_regular_nms else "false")]
    fields = " ".join(f'attr {{ key: "{k}" value {{ {kind}: {v!r} }} }}' if kind != "b"
                      else f'attr {{ key: "{k}" value {{ b: {v} }} }}' for k, kind, v in attrs)
    return f'name: "{POSTPROCESS_OP}" {fields}'


def check_detector(model, anchors: np.ndarray) -> int:
    """Checks a detector's input and outputs against the contract and its anchors; returns C.

    Raises:
        ConfigError: not one input of a fixed size, not two outputs ``[B, N, 4]`` and
            ``[B, N, C + 1]``, or anchors that are not ``[N, 4]`` finite
            ``[yc, xc, h, w]`` with positive sizes.
    """
    if len(model.inputs) != 1 or None in tuple(model.inputs[0].shape)[1:]:
        raise ConfigError(f"detector {model.name!r}: expected one image input of a fixed size, got "
                          f"{[list(t.shape) for t in model.inputs]}")
    shapes = [tuple(t.shape) for t in model.outputs]
    if len(shapes) != 2 or any(len(s) != 3 for s in shapes) or shapes[0][2] != 4 or shapes[0][1] is None \
            or shapes[0][1] != shapes[1][1] or (shapes[1][2] or 0) < 2:
        raise ConfigError(f"detector {model.name!r}: expected outputs box_encodings [B, N, 4] and "
                          f"class_logits [B, N, C + 1], got {[list(s) for s in shapes]}")
    n = shapes[0][1]
    a = np.asarray(anchors)
    if a.shape != (n, 4):
        raise ConfigError(f"detector {model.name!r} has outputs for {n} anchors; anchors have shape "
                          f"{list(a.shape)}, expected [{n}, 4]")
    if not np.all(np.isfinite(a)) or np.any(a[:, 2:] <= 0):
        raise ConfigError(f"detector {model.name!r}: anchors must be finite [yc, xc, h, w] with h, w > 0")
    return int(shapes[1][2]) - 1


def op_options(config: PostprocessConfig, num_classes: int) -> Dict[str, float]:
    """The custom options the converted op should carry (the attributes the converter
    passes on: all but ``detections_per_class``)."""
    y, x, h, w = BOX_SCALES
    return {"max_detections": config.max_detections, "max_classes_per_detection": MAX_CLASSES_PER_DETECTION,
            "num_classes": num_classes, "nms_score_threshold": config.score_threshold,
            "nms_iou_threshold": config.iou_threshold, "y_scale": y, "x_scale": x, "h_scale": h, "w_scale": w,
            "use_regular_nms": int(config.use_regular_nms)}


def detection_function(model, anchors: np.ndarray, config: PostprocessConfig):
    """The concrete function (batch 1) of the detector, sigmoid and postprocess op."""
    import tensorflow as tf

    num_classes = check_detector(model, anchors)
    m = config.max_detections

    @tf.function(experimental_implements=implements_signature(config, num_classes))
    def postprocess(box_encodings, class_scores, anchor_boxes):
        # A stand-in the converter replaces by the custom op; it fixes the outputs'
        # shapes and types only.
        del box_encodings, class_scores, anchor_boxes
        return tf.zeros([1, m, 4]), tf.zeros([1, m]), tf.zeros([1, m]), tf.zeros([1])

    anchor_boxes = tf.constant(np.asarray(anchors, np.float32))

    @tf.function
    def detect(images):
        box_encodings, class_logits = model(images, training=False)
        return postprocess(box_encodings, tf.sigmoid(class_logits), anchor_boxes)

    return detect.get_concrete_function(tf.TensorSpec((1, *model.input_shape[1:]), tf.float32))


def is_qat_model(model) -> bool:
    """Whether ``model`` is tfmot-annotated for QAT (``quantize_model``/``quantize_apply``)."""
    return any(type(layer).__name__ in ("QuantizeLayer", "QuantizeWrapper", "QuantizeWrapperV2")
               for layer in model.layers)


def convert_detector(model, anchors: np.ndarray, variant: Variant, calibration: Optional[np.ndarray] = None,
                     config: PostprocessConfig = PostprocessConfig(), int8_input: bool = False) -> bytes:
    """Runs the TFLite converter on a detector for ``variant``; returns the flatbuffer.

    Args:
        model: the float detector, or for a variant of another source (``int8-qat``)
            the tfmot-annotated one.
        calibration: float images in [0, 1] (full-integer variants: the
            representative set).
        int8_input: an int8 input tensor (full-integer variants); outputs stay float.

    Raises:
        ConfigError: the model does not fit the contract or the variant's source, or
            a full-integer variant without calibration images.
    """
    import tensorflow as tf

    kinds = {True: "a QAT-annotated", False: "a float"}
    qat, wanted = is_qat_model(model), variant.source != "float"
    if qat != wanted:
        raise ConfigError(f"variant {variant.name} converts {kinds[wanted]} detector; got {kinds[qat]} one")
    if variant.full_integer and (calibration is None or len(calibration) == 0):
        raise ConfigError(f"variant {variant.name}: full-integer conversion needs calibration images")
    fn = detection_function(model, anchors, config)
    # The converter fuses an experimental_implements function only on the SavedModel
    # path (the default): freezing the function directly inlines it first. It saves the
    # object it is given; given the Keras model, that save traces every layer's call
    # (minutes for a QAT-wrapped SSDLite). Given only the variables the function
    # captures, it saves those: the same flatbuffer, 5-10x sooner.
    captured = tf.Module()
    captured.variables_of_the_model = list(model.variables)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], captured)
    conv.allow_custom_ops = True
    apply_variant(conv, variant, calibration, int8_input=int8_input)
    with captured_stderr():  # the converter's C++ chatter
        tflite = conv.convert()
    return outputs_in_op_order(tflite)


def outputs_in_op_order(tflite: bytes) -> bytes:
    """The model with its outputs in the postprocess op's order (boxes, classes,
    scores, count), as TFLite's detectors list them: the converter orders a
    function's outputs its own way.

    Only the four entries of the subgraph's output list are permuted, in place; the
    signature maps outputs by name and is left as it is.
    """
    op = find_postprocess_op(parse_tflite(tflite, "converted detector"))
    data = bytearray(tflite)
    sg = schema().Model.GetRootAs(data, 0).Subgraphs(0)
    if sorted(sg.OutputsAsNumpy().tolist()) != sorted(op.outputs):
        raise ConversionMismatchError("converted detector: its outputs are not the postprocess op's four")
    start = sg._tab.Vector(sg._tab.Offset(8))  # SubGraph.outputs: the generated reader's field offset 8
    data[start:start + 4 * len(op.outputs)] = np.asarray(op.outputs, "<i4").tobytes()
    return bytes(data)


# -- the reference postprocess (numpy) ---------------------------------------------

def decode_boxes(box_encodings: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """SSD center-size encodings ``[N, 4]`` -> boxes ``[ymin, xmin, ymax, xmax]``, as
    the op decodes them (float64 arithmetic, float32 results; not clipped)."""
    t = np.asarray(box_encodings, np.float64)
    a = np.asarray(anchors, np.float32).astype(np.float64)
    y, x, h, w = BOX_SCALES
    yc = (t[:, 0] / y * a[:, 2] + a[:, 0]).astype(np.float32)
    xc = (t[:, 1] / x * a[:, 3] + a[:, 1]).astype(np.float32)
    half_h = (0.5 * np.exp(t[:, 2] / h) * a[:, 2]).astype(np.float32)
    half_w = (0.5 * np.exp(t[:, 3] / w) * a[:, 3]).astype(np.float32)
    return np.stack([yc - half_h, xc - half_w, yc + half_h, xc + half_w], axis=1)


def _iou(boxes: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    """IoU of box ``i`` with ``others`` (indexes), in float32; 0 where an area is <= 0."""
    b, o = boxes[i], boxes[others]
    area = (b[2] - b[0]) * (b[3] - b[1])
    areas = (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1])
    inter = (np.maximum(np.minimum(b[2], o[:, 2]) - np.maximum(b[0], o[:, 0]), np.float32(0))
             * np.maximum(np.minimum(b[3], o[:, 3]) - np.maximum(b[1], o[:, 1]), np.float32(0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area + areas - inter)
    return np.where((area <= 0) | (areas <= 0), np.float32(0), iou)


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float,
        limit: int) -> List[int]:
    """Greedy NMS as the op runs it: scores >= threshold, stably sorted by decreasing
    score; a box overlapping a kept one by IoU > ``iou_threshold`` is dropped."""
    keep = np.flatnonzero(scores >= np.float32(score_threshold))
    order = keep[np.argsort(-scores[keep], kind="stable")]
    active = np.ones(len(order), bool)
    selected: List[int] = []
    for k in range(len(order)):
        if len(selected) >= limit:
            break
        if not active[k]:
            continue
        selected.append(int(order[k]))
        rest = k + 1 + np.flatnonzero(active[k + 1:])
        if len(rest):
            active[rest[_iou(boxes, order[k], order[rest]) > np.float32(iou_threshold)]] = False
    return selected


def reference_postprocess(box_encodings: np.ndarray, class_logits: np.ndarray, anchors: np.ndarray,
                          config: PostprocessConfig = PostprocessConfig()) -> Detections:
    """What the exported graph computes for one image, in numpy: sigmoid, decode, NMS.

    Args:
        box_encodings: ``[N, 4]``; class_logits: ``[N, C + 1]`` (column 0 background).

    Returns:
        The detections in the op's order (decreasing score; ties by anchor, then class).
    """
    boxes = decode_boxes(box_encodings, anchors)
    logits = np.asarray(class_logits, np.float32)[:, 1:]
    scores = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    c = config
    if not c.use_regular_nms:
        best = np.argmax(scores, axis=1)
        best_scores = scores[np.arange(len(scores)), best]
        picked = nms(boxes, best_scores, c.score_threshold, c.iou_threshold, c.max_detections)
        return Detections(boxes[picked], best[picked].astype(np.int64), best_scores[picked])
    found = [(a, k, scores[a, k]) for k in range(scores.shape[1])
             for a in nms(boxes, scores[:, k], c.score_threshold, c.iou_threshold, DETECTIONS_PER_CLASS)]
    found.sort(key=lambda f: -f[2])  # stable: ties keep class, then score order
    found = found[:c.max_detections]  # the op's final sort is not stable: equal scores may come in another order
    rows = [f[0] for f in found]
    return Detections(boxes[rows].reshape(-1, 4), np.asarray([f[1] for f in found], np.int64),
                      np.asarray([f[2] for f in found], np.float32))


def keras_detections(model, anchors: np.ndarray, images: np.ndarray,
                     config: PostprocessConfig = PostprocessConfig()) -> List[Detections]:
    """:func:`reference_postprocess` of the Keras detector's outputs on ``images``."""
    box_encodings, class_logits = model.predict(images, batch_size=16, verbose=0)
    return [reference_postprocess(b, c, anchors, config) for b, c in zip(box_encodings, class_logits)]


# -- export: convert, validate, write ----------------------------------------------

def validate_detector(tflite: bytes, expected: Sequence[Detections], images: np.ndarray, variant: Variant,
                      name: str, options: Optional[Dict[str, float]] = None, score_threshold: float = 0.5) -> Dict:
    """Compares the .tflite detections on ``images`` with the Keras reference's.

    Agreement is :func:`detection_agreement` both ways (same class, IoU of at least
    :data:`VALIDATION_IOU` of the variant's number format) over the detections
    scoring at least ``score_threshold``.

    Args:
        options: the postprocess op's expected settings (:func:`op_options`).

    Raises:
        ConversionMismatchError: the postprocess op is missing or has other settings,
            agreement is under the variant's floor, or a full-integer model computes
            in float before the postprocess op.
    """
    model = parse_tflite(tflite, name)
    find_postprocess_op(model, name)
    got_options = postprocess_options(tflite, name)
    wrong = [k for k, v in (options or {}).items() if not np.isclose(got_options.get(k, np.nan), v, rtol=1e-6)]
    if wrong:
        raise ConversionMismatchError(f"{name}: the postprocess op has {wrong[0]}={got_options.get(wrong[0])}, "
                                      f"expected {options[wrong[0]]}")
    got = run_tflite_detector(tflite, images)
    iou = VALIDATION_IOU[variant.number_format]
    agree = detection_agreement(expected, got, iou=iou, score_threshold=score_threshold)
    floor = variant.min_agreement if variant.min_agreement is not None else FLOAT_MIN_AGREEMENT
    worst = min(agree.fraction, agree.reverse_fraction)
    if worst < floor:
        raise ConversionMismatchError(
            f"{name}: TFLite detections agree with Keras on {worst:.1%} (minimum {floor:.0%}; same class, "
            f"IoU >= {iou}, score >= {score_threshold}) over {len(images)} validation images")
    float_ops = [op for op in float_compute_ops(model) if op not in (POSTPROCESS_OPCODE,)]
    if variant.full_integer and float_ops:
        raise ConversionMismatchError(
            f"{name}: full-integer detector still computes in float before the postprocess op: "
            f"{', '.join(sorted(set(float_ops)))}")
    return {"validation_agreement": worst, "validation_detections": agree.host_count,
            "validation_samples": int(len(images))}


def export_detector(model, anchors: np.ndarray, variant_name: str, out: Path, validation_images: np.ndarray,
                    calibration: Optional[np.ndarray] = None, config: PostprocessConfig = PostprocessConfig(),
                    int8_input: bool = False, log: Log = print) -> Dict:
    """Converts a detector to ``variant_name``, validates it, writes ``out``.

    Args:
        model: the float detector, or the tfmot-annotated one (``quantize_model``)
            for ``int8-qat`` and the other QAT variants.
        validation_images: float images in [0, 1] the .tflite is checked on.
        calibration: float images in [0, 1]: the representative set of the
            full-integer variants.

    Returns:
        metrics: validation figures and the converted size.

    Raises:
        ConfigError: unknown variant, a model or anchors off the contract.
        ConversionMismatchError: validation failed (nothing is written).
    """
    variant = VARIANTS.get(variant_name)
    log(f"[detection/{variant_name}] converting {model.name}")
    tflite = convert_detector(model, anchors, variant, calibration, config, int8_input)
    expected = keras_detections(model, anchors, validation_images, config)
    metrics = validate_detector(tflite, expected, validation_images, variant, f"{variant_name} ({Path(out).name})",
                                op_options(config, check_detector(model, anchors)))
    atomic_write_bytes(Path(out), tflite)
    metrics["size_bytes"] = len(tflite)
    log(f"[detection/{variant_name}] {len(tflite) / 1024:.1f} KiB, agreement {metrics['validation_agreement']:.1%} "
        f"on {metrics['validation_detections']} detections")
    return metrics

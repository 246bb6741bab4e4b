"""Training an SSDLite detector, and decoding its outputs into detections on the host.

    model, anchors = build_detector("mobilenet_v2", 0.35, (224, 224, 3), num_classes=3)
    model, history = train_detector(model, anchors, train, val, epochs=20, batch_size=32,
                                    learning_rate=1e-3, seed=0)
    detections = decode_predictions(*model.predict(x), anchors)

Training is a plain loop over batches (one ``tf.function`` step with the loss of
:mod:`pipeline.detection.loss`): each batch is drawn from (seed, epoch), augmented
if asked, matched to the anchors (:func:`pipeline.detection.anchors.match`) and
scaled to [0, 1]. Adam follows the cosine schedule of :mod:`pipeline.train.schedule`;
TensorFlow runs with op determinism, so a rerun with the same seed gives the same
weights.
"""

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from pipeline.data.splits import stream_rng
from pipeline.detection.anchors import AnchorSpec, decode, generate_anchors, iou, match_batch
from pipeline.errors import ConfigError, DataError, Log

#: The label of training's progress lines and random streams.
LABEL = "detect"


class DetectionSet(Protocol):
    """What training reads: uint8 images ``[N, H, W, C]`` and, per image, boxes
    ``[k, 4]`` (``[ymin, xmin, ymax, xmax]`` in [0, 1]) and 0-based classes ``[k]``."""

    images: np.ndarray
    boxes: Sequence[np.ndarray]
    classes: Sequence[np.ndarray]


#: A training augmentation: (uint8 images, boxes, classes, generator) -> the same,
#: transformed (boxes moved with the pixels; a box may be dropped with its class).
Augment = Callable[[np.ndarray, List[np.ndarray], List[np.ndarray], np.random.Generator],
                   Tuple[np.ndarray, List[np.ndarray], List[np.ndarray]]]


@dataclass(frozen=True)
class Detections:
    """The detections of one image: ``boxes [m, 4]``, 0-based ``classes [m]``, ``scores [m]``,
    highest score first."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


@dataclass
class EpochRecord:
    """The mean losses of one epoch (per image); the val ones are None without a val set."""

    epoch: int
    loss: float
    classification: float
    localization: float
    val_loss: Optional[float]
    val_classification: Optional[float]
    val_localization: Optional[float]
    seconds: float


@dataclass
class History:
    """Per-epoch losses of :func:`train_detector`."""

    epochs: List[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epochs": [asdict(e) for e in self.epochs]}


def build_detector(family: str, alpha: float, input_shape, num_classes: int,
                   spec: AnchorSpec = AnchorSpec(), **kwargs):
    """An SSDLite model (:func:`models.ssdlite.build_ssdlite`) and its anchors.

    Returns:
        (model, anchors float32 ``[N, 4]``), N matching the model's outputs.

    Raises:
        ConfigError: unknown family or an argument out of range.
    """
    from models.ssdlite import build_ssdlite

    try:
        model, shapes = build_ssdlite(family, alpha, input_shape, num_classes,
                                      anchors_per_cell=spec.per_cell, **kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return model, generate_anchors(shapes, spec)


def _check_set(data: DetectionSet, name: str, input_shape) -> None:
    images = np.asarray(data.images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != tuple(input_shape):
        raise DataError(f"{name} images must be uint8 [N, {', '.join(map(str, input_shape))}] "
                        f"(the model's input); got {images.dtype} {list(images.shape)}")
    if not len(images) == len(data.boxes) == len(data.classes):
        raise DataError(f"{name} set: {len(images)} images but {len(data.boxes)} box arrays "
                        f"and {len(data.classes)} class arrays")


def _targets(data: DetectionSet, index: np.ndarray, anchors, augment: Optional[Augment], rng):
    images = np.asarray(data.images)[index]
    boxes = [np.asarray(data.boxes[i], np.float32).reshape(-1, 4) for i in index]
    classes = [np.asarray(data.classes[i], np.int64).reshape(-1) for i in index]
    if augment is not None:
        images, boxes, classes = augment(images, boxes, classes, rng)
    box_targets, class_targets = match_batch(boxes, classes, anchors)
    return images.astype(np.float32) / 255.0, box_targets, class_targets


def _steps(model, optimizer, anchors: int):
    import tensorflow as tf

    from pipeline.detection.loss import detection_loss

    # Any batch size: the last, smaller batch of an epoch needs no second trace.
    signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32),
                 tf.TensorSpec([None, anchors, 4], tf.float32), tf.TensorSpec([None, anchors], tf.int64)]

    @tf.function(input_signature=signature)
    def train_step(x, box_targets, class_targets):
        with tf.GradientTape() as tape:
            box_encodings, class_logits = model(x, training=True)
            parts = detection_loss(box_targets, class_targets, box_encodings, class_logits)
            total = parts.total + tf.add_n(model.losses) if model.losses else parts.total
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return parts

    @tf.function(input_signature=signature)
    def eval_step(x, box_targets, class_targets):
        box_encodings, class_logits = model(x, training=False)
        return detection_loss(box_targets, class_targets, box_encodings, class_logits)

    return train_step, eval_step


def _run_epoch(step, data, anchors, order, batch_size, augment, rng, on_batch=None) -> np.ndarray:
    """Mean (total, classification, localization) per image over the batches of ``order``."""
    sums = np.zeros(3)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        if on_batch is not None:
            on_batch(start // batch_size)
        parts = step(*_targets(data, index, anchors, augment, rng))
        sums += np.array([float(p) for p in parts]) * len(index)
    return sums / max(len(order), 1)


def train_detector(model, anchors: np.ndarray, train: DetectionSet, val: Optional[DetectionSet], *,
                   epochs: int, batch_size: int, learning_rate: float, seed: int,
                   augment: Optional[Augment] = None, warmup_steps: int = 0, callbacks=(),
                   log: Log = print):
    """Trains ``model`` (built by :func:`build_detector`) on ``train``; reports ``val``.

    Args:
        model: a detector with outputs (box_encodings, class_logits) for ``anchors``.
        anchors: float32 ``[N, 4]`` ``[yc, xc, h, w]``.
        train: the training set (:class:`DetectionSet`).
        val: the validation set, or None (no validation losses).
        epochs: passes over ``train``.
        batch_size: images per step.
        learning_rate: Adam's peak learning rate (cosine decay to 0 over all steps).
        seed: seeds TensorFlow, the batch order and the augmentation.
        augment: a training augmentation (:data:`Augment`), or None.
        warmup_steps: linear warm-up steps before the cosine.
        callbacks: Keras callbacks (e.g. tfmot's ``UpdatePruningStep``) told of each
            train batch and epoch.
        log: receives one progress line per epoch.

    Returns:
        (model, :class:`History`); the model is trained in place, and compiled with
        its Adam optimizer (no loss) so that callbacks find ``model.optimizer``.

    Raises:
        ConfigError: epochs, batch size or learning rate out of range, or anchors
            that do not fit the model's outputs.
        DataError: a set whose images do not fit the model, or whose lists disagree.
    """
    import tf_keras as keras

    from pipeline.train.fit import setup_tensorflow
    from pipeline.train.schedule import warmup_cosine

    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise ConfigError(f"detector training needs epochs >= 1, batch_size >= 1 and learning_rate > 0; "
                          f"got {epochs}, {batch_size}, {learning_rate}")
    predicted = model.output_shape[0][1]
    if predicted != len(anchors):
        raise ConfigError(f"the detector predicts {predicted} boxes per image but {len(anchors)} anchors "
                          "were given (generate them for its feature maps)")
    input_shape = tuple(model.input_shape[1:])
    for data, name in ((train, "training"), (val, "validation")):
        if data is not None:
            _check_set(data, name, input_shape)
    setup_tensorflow(seed)
    n = len(train.images)
    steps = epochs * -(-n // batch_size)
    optimizer = keras.optimizers.Adam(warmup_cosine(learning_rate, steps, warmup_steps))
    model.compile(optimizer=optimizer)  # callbacks such as UpdatePruningStep read model.optimizer
    train_step, eval_step = _steps(model, optimizer, len(anchors))
    hooks = keras.callbacks.CallbackList(list(callbacks), model=model)
    hooks.on_train_begin()
    history = History()
    for epoch in range(epochs):
        started = time.perf_counter()
        hooks.on_epoch_begin(epoch)
        order = stream_rng(seed, LABEL, "order", str(epoch)).permutation(n)
        rng = stream_rng(seed, LABEL, "augment", str(epoch))
        losses = _run_epoch(train_step, train, anchors, order, batch_size, augment, rng,
                            on_batch=hooks.on_train_batch_begin)
        val_losses = (None,) * 3
        if val is not None:
            val_losses = tuple(_run_epoch(eval_step, val, anchors, np.arange(len(val.images)),
                                          batch_size, None, None))
        record = EpochRecord(epoch + 1, *map(float, losses), *val_losses,
                             seconds=time.perf_counter() - started)
        history.epochs.append(record)
        hooks.on_epoch_end(epoch, {"loss": record.loss})
        log(_progress(record, epochs))
    hooks.on_train_end()
    return model, history


def _progress(r: EpochRecord, epochs: int) -> str:
    line = (f"[{LABEL}] epoch {r.epoch}/{epochs}  loss {r.loss:.4f} "
            f"(class {r.classification:.4f}, box {r.localization:.4f})")
    if r.val_loss is not None:
        line += (f"  val_loss {r.val_loss:.4f} "
                 f"(class {r.val_classification:.4f}, box {r.val_localization:.4f})")
    return f"{line}  ({r.seconds:.1f} s)"


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy non-maximum suppression: indexes of the kept boxes, highest score first,
    at most ``limit``; a box is dropped when its IoU with a kept one exceeds ``iou_threshold``."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and len(keep) < limit:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        order = rest[iou(boxes[best:best + 1], boxes[rest])[0] <= iou_threshold]
    return np.array(keep, np.int64)


def decode_predictions(box_encodings: np.ndarray, class_logits: np.ndarray, anchors: np.ndarray,
                       score_threshold: float = 0.05, iou_threshold: float = 0.5,
                       max_detections: int = 100) -> List[Detections]:
    """Detections of a batch of detector outputs (numpy, for checks on the host).

    Boxes are decoded from the anchors and clipped to [0, 1]; scores are the sigmoid
    of the foreground logits (column 0, the background, is skipped); each class keeps
    its boxes above ``score_threshold`` after its own non-maximum suppression; the
    image keeps its ``max_detections`` best.

    Args:
        box_encodings: ``[B, N, 4]``.
        class_logits: ``[B, N, C + 1]``.
        anchors: ``[N, 4]`` ``[yc, xc, h, w]``.
        score_threshold: lowest score kept.
        iou_threshold: IoU above which NMS drops the lower-scoring box of a class.
        max_detections: most detections per image.

    Returns:
        One :class:`Detections` per image.
    """
    boxes = np.clip(decode(box_encodings, anchors), 0.0, 1.0)
    scores = 1.0 / (1.0 + np.exp(-np.asarray(class_logits, np.float64)[..., 1:]))
    out = []
    for image_boxes, image_scores in zip(boxes, scores):
        found = []
        for c in range(image_scores.shape[1]):
            candidates = np.flatnonzero(image_scores[:, c] > score_threshold)
            kept = candidates[nms(image_boxes[candidates], image_scores[candidates, c],
                                  iou_threshold, max_detections)]
            found += [(image_scores[i, c], c, i) for i in kept]
        found.sort(key=lambda f: -f[0])
        found = found[:max_detections]
        out.append(Detections(
            boxes=image_boxes[[f[2] for f in found]].reshape(-1, 4).astype(np.float32),
            classes=np.array([f[1] for f in found], np.int64),
            scores=np.array([f[0] for f in found], np.float32)))
    return out

"""SSD training losses: sigmoid focal loss on classes, Huber loss on box encodings.

Targets come from :func:`pipeline.detection.anchors.match`: box targets ``[B, N, 4]``
and class targets ``[B, N]`` (0 background, c + 1 for class c, -1 ignored).

The background column (logit 0) is left out of the loss: the focal loss is a
per-class sigmoid over the foreground columns only, a background anchor being one
whose foreground targets are all zero. Column 0 is never trained; TFLite's detection
post-processing op and :func:`pipeline.detection.train.decode_predictions` skip it.

Both parts are sums divided by the number of positive anchors in the batch (at
least 1), as in RetinaNet (Lin et al. 2017, sec. 3.3 and 4.1).
"""

from typing import NamedTuple

#: Focal loss parameters (RetinaNet: alpha 0.25, gamma 2).
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
#: Huber loss threshold on box encodings (the object detection API's default, 1).
HUBER_DELTA = 1.0


class LossParts(NamedTuple):
    """The loss of a batch: ``total = classification + localization`` (scalar tensors)."""

    total: object
    classification: object
    localization: object


def focal_loss(class_targets, class_logits, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA):
    """Summed sigmoid focal loss over the foreground columns of non-ignored anchors.

    Args:
        class_targets: int ``[B, N]`` (0 background, c + 1 for class c, -1 ignored).
        class_logits: float ``[B, N, C + 1]``; column 0 (background) is not used.
        alpha: weight of the positive targets (1 - alpha for the negatives).
        gamma: focusing exponent.

    Returns:
        A scalar tensor: the sum (not normalized).
    """
    import tensorflow as tf

    logits = class_logits[..., 1:]
    targets = tf.cast(class_targets, tf.int32)
    onehot = tf.one_hot(targets - 1, tf.shape(logits)[-1], dtype=logits.dtype)  # -1 and 0 -> all zeros
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=logits)
    p = tf.sigmoid(logits)
    p_t = onehot * p + (1.0 - onehot) * (1.0 - p)
    alpha_t = onehot * alpha + (1.0 - onehot) * (1.0 - alpha)
    per_class = alpha_t * tf.pow(1.0 - p_t, gamma) * cross_entropy
    valid = tf.cast(targets >= 0, logits.dtype)[..., None]
    return tf.reduce_sum(per_class * valid)


def box_loss(box_targets, class_targets, box_encodings, delta: float = HUBER_DELTA):
    """Summed Huber loss of the box encodings of the positive anchors (targets > 0)."""
    import tensorflow as tf

    error = tf.abs(box_encodings - box_targets)
    huber = tf.where(error <= delta, 0.5 * tf.square(error), delta * (error - 0.5 * delta))
    positive = tf.cast(class_targets > 0, box_encodings.dtype)[..., None]
    return tf.reduce_sum(huber * positive)


def detection_loss(box_targets, class_targets, box_encodings, class_logits) -> LossParts:
    """Focal + Huber losses of a batch, each divided by max(1, positive anchors).

    Args:
        box_targets: float ``[B, N, 4]`` encodings (only the positives' are used).
        class_targets: int ``[B, N]``.
        box_encodings: the model's ``[B, N, 4]`` output.
        class_logits: the model's ``[B, N, C + 1]`` output.

    Returns:
        :class:`LossParts` of scalar tensors.
    """
    import tensorflow as tf

    box_encodings = tf.cast(box_encodings, tf.float32)
    class_logits = tf.cast(class_logits, tf.float32)
    positives = tf.reduce_sum(tf.cast(class_targets > 0, tf.float32))
    norm = tf.maximum(positives, 1.0)
    classification = focal_loss(class_targets, class_logits) / norm
    localization = box_loss(tf.cast(box_targets, tf.float32), class_targets, box_encodings) / norm
    return LossParts(classification + localization, classification, localization)

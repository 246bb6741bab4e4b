"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", Table 2)."""

from typing import NamedTuple

import tf_keras as keras

from models.blocks import (BN_MOMENTUM, classifier, conv_bn_act,
                           inverted_residual, make_divisible,
                           validate_build_args)


class Bottleneck(NamedTuple):
    """One row of Table 2: ``n`` bottlenecks, the first with stride ``s``."""

    t: int  # expansion factor
    c: int  # output channels, at width 1.0
    n: int  # repeats
    s: int  # stride of the first repeat (the others have stride 1)


STEM_FILTERS = 32    # "conv2d 3x3, c=32, s=2"
HEAD_FILTERS = 1280  # "conv2d 1x1, c=1280"

BOTTLENECKS = (
    Bottleneck(t=1, c=16, n=1, s=1),
    Bottleneck(t=6, c=24, n=2, s=2),
    Bottleneck(t=6, c=32, n=3, s=2),
    Bottleneck(t=6, c=64, n=4, s=2),
    Bottleneck(t=6, c=96, n=3, s=1),
    Bottleneck(t=6, c=160, n=3, s=2),
    Bottleneck(t=6, c=320, n=1, s=1),
)


def build(alpha=1.0, input_shape=(224, 224, 3), classes=1000, *, first_stride=2,
          dropout=0.0, bn_momentum=BN_MOMENTUM):
    """Builds MobileNetV2.

    Args:
        alpha: width multiplier; channels are ``alpha`` times the paper's, rounded
            by ``make_divisible``. As in the paper, the 1280-channel head conv
            is only widened (alpha > 1), never narrowed.
        input_shape: (height, width, channels); height, width >= ``models.MIN_INPUT_SIZE``, channels 1 or 3.
            Inputs are floats in [0, 1]; the model does no rescaling.
        classes: number of classes (>= 2).
        first_stride: stride of the stem conv; 1 keeps a 2x2 final map at 32x32.
        dropout: dropout rate before the classifier (0 for none).
        bn_momentum: BatchNormalization momentum.

    Returns:
        A ``keras.Model`` that outputs class probabilities (softmax).

    Raises:
        ValueError: an argument is out of range.
    """
    validate_build_args(alpha, input_shape, classes, first_stride, dropout,
                        bn_momentum)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = conv_bn_act(inputs, make_divisible(STEM_FILTERS * alpha), 3, first_stride,
                    "relu6", "stem", bn_momentum)
    block = 0
    for row in BOTTLENECKS:
        for repeat in range(row.n):
            block += 1
            x = inverted_residual(
                x, expanded=x.shape[-1] * row.t,
                filters=make_divisible(row.c * alpha), kernel=3,
                stride=row.s if repeat == 0 else 1, act="relu6", se=0,
                name=f"block{block}", bn_momentum=bn_momentum)
    head = make_divisible(HEAD_FILTERS * alpha) if alpha > 1 else HEAD_FILTERS
    x = conv_bn_act(x, head, 1, 1, "relu6", "head", bn_momentum)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier(x, classes, dropout), name="mobilenet_v2")

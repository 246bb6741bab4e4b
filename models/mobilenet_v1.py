"""MobileNetV1 (Howard et al. 2017, "MobileNets", Table 1)."""

from typing import NamedTuple

import tf_keras as keras

from models.blocks import (BN_MOMENTUM, classifier, conv_bn_act,
                           depthwise_separable, make_divisible,
                           validate_build_args)


class DepthwiseSeparable(NamedTuple):
    """One "Conv dw / s + Conv / s1" pair of Table 1."""

    stride: int   # of the 3x3 depthwise conv
    filters: int  # of the 1x1 pointwise conv, at width 1.0


STEM_FILTERS = 32  # "Conv / s2, 3x3x3x32"

# Table 1 after the stem. Its second-to-last depthwise row says s2 but the map
# stays 7x7 (input and output of that row are both 7x7): it is stride 1.
BLOCKS = (
    DepthwiseSeparable(stride=1, filters=64),
    DepthwiseSeparable(stride=2, filters=128),
    DepthwiseSeparable(stride=1, filters=128),
    DepthwiseSeparable(stride=2, filters=256),
    DepthwiseSeparable(stride=1, filters=256),
    DepthwiseSeparable(stride=2, filters=512),
    *[DepthwiseSeparable(stride=1, filters=512)] * 5,  # "5x"
    DepthwiseSeparable(stride=2, filters=1024),
    DepthwiseSeparable(stride=1, filters=1024),
)


def build(alpha=1.0, input_shape=(224, 224, 3), classes=1000, *, first_stride=2,
          dropout=0.0, bn_momentum=BN_MOMENTUM):
    """Builds MobileNetV1.

    Args:
        alpha: width multiplier; every layer's channels are ``alpha`` times the
            paper's, rounded by ``make_divisible``.
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
    for i, row in enumerate(BLOCKS, start=1):
        x = depthwise_separable(x, make_divisible(row.filters * alpha), row.stride,
                                f"block{i}", bn_momentum)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier(x, classes, dropout), name="mobilenet_v1")

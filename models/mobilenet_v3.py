"""MobileNetV3-Large and -Small (Howard et al. 2019, "Searching for MobileNetV3",
Tables 1 and 2)."""

from typing import NamedTuple

import tf_keras as keras

from models.blocks import (BN_MOMENTUM, HardSwish, classifier, conv_bn_act,
                           inverted_residual, make_divisible,
                           validate_build_args)


class Bneck(NamedTuple):
    """One "bneck" row of Tables 1 and 2 (channels at width 1.0)."""

    kernel: int  # depthwise kernel size
    exp: int     # "exp size": channels after the 1x1 expand conv
    out: int     # "#out"
    se: bool     # "SE": squeeze-and-excite after the depthwise conv
    act: str     # "NL": "relu" (RE) or "hswish" (HS)
    stride: int  # "s"


class Spec(NamedTuple):
    stem: int        # "conv2d, 3x3, HS, s=2"
    bnecks: tuple
    head: int        # "conv2d, 1x1, HS" before the pool
    head_fc: int     # "conv2d 1x1, NBN, HS" after the pool


# Squeeze width of the SE block, as a fraction of the expanded channels (sec. 5.3).
SE_RATIO = 0.25

LARGE = Spec(
    stem=16,
    bnecks=(
        Bneck(kernel=3, exp=16, out=16, se=False, act="relu", stride=1),
        Bneck(kernel=3, exp=64, out=24, se=False, act="relu", stride=2),
        Bneck(kernel=3, exp=72, out=24, se=False, act="relu", stride=1),
        Bneck(kernel=5, exp=72, out=40, se=True, act="relu", stride=2),
        Bneck(kernel=5, exp=120, out=40, se=True, act="relu", stride=1),
        Bneck(kernel=5, exp=120, out=40, se=True, act="relu", stride=1),
        Bneck(kernel=3, exp=240, out=80, se=False, act="hswish", stride=2),
        Bneck(kernel=3, exp=200, out=80, se=False, act="hswish", stride=1),
        Bneck(kernel=3, exp=184, out=80, se=False, act="hswish", stride=1),
        Bneck(kernel=3, exp=184, out=80, se=False, act="hswish", stride=1),
        Bneck(kernel=3, exp=480, out=112, se=True, act="hswish", stride=1),
        Bneck(kernel=3, exp=672, out=112, se=True, act="hswish", stride=1),
        Bneck(kernel=5, exp=672, out=160, se=True, act="hswish", stride=2),
        Bneck(kernel=5, exp=960, out=160, se=True, act="hswish", stride=1),
        Bneck(kernel=5, exp=960, out=160, se=True, act="hswish", stride=1),
    ),
    head=960,
    head_fc=1280,
)

# Table 2 marks the last 1x1 conv (576) with SE; the reference implementation
# and the paper's 2.5M params / 56M MAdds have none there, so neither do we.
SMALL = Spec(
    stem=16,
    bnecks=(
        Bneck(kernel=3, exp=16, out=16, se=True, act="relu", stride=2),
        Bneck(kernel=3, exp=72, out=24, se=False, act="relu", stride=2),
        Bneck(kernel=3, exp=88, out=24, se=False, act="relu", stride=1),
        Bneck(kernel=5, exp=96, out=40, se=True, act="hswish", stride=2),
        Bneck(kernel=5, exp=240, out=40, se=True, act="hswish", stride=1),
        Bneck(kernel=5, exp=240, out=40, se=True, act="hswish", stride=1),
        Bneck(kernel=5, exp=120, out=48, se=True, act="hswish", stride=1),
        Bneck(kernel=5, exp=144, out=48, se=True, act="hswish", stride=1),
        Bneck(kernel=5, exp=288, out=96, se=True, act="hswish", stride=2),
        Bneck(kernel=5, exp=576, out=96, se=True, act="hswish", stride=1),
        Bneck(kernel=5, exp=576, out=96, se=True, act="hswish", stride=1),
    ),
    head=576,
    head_fc=1024,
)


def _build(spec, name, alpha, input_shape, classes, first_stride, dropout,
           bn_momentum):
    validate_build_args(alpha, input_shape, classes, first_stride, dropout,
                        bn_momentum)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = conv_bn_act(inputs, make_divisible(spec.stem * alpha), 3, first_stride,
                    "hswish", "stem", bn_momentum)
    for i, row in enumerate(spec.bnecks, start=1):
        expanded = make_divisible(row.exp * alpha)
        x = inverted_residual(
            x, expanded=expanded, filters=make_divisible(row.out * alpha),
            kernel=row.kernel, stride=row.stride, act=row.act,
            se=make_divisible(expanded * SE_RATIO) if row.se else 0,
            name=f"block{i}", bn_momentum=bn_momentum)
    x = conv_bn_act(x, make_divisible(spec.head * alpha), 1, 1, "hswish", "head",
                    bn_momentum)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    # On the pooled 1x1 map the paper's "conv2d 1x1, NBN" is a Dense layer. Like
    # the head conv of V2 it is only widened (alpha > 1), never narrowed.
    head_fc = make_divisible(spec.head_fc * alpha) if alpha > 1 else spec.head_fc
    x = keras.layers.Dense(head_fc, name="head_fc")(x)
    x = HardSwish(name="head_fc_hswish")(x)
    return keras.Model(inputs, classifier(x, classes, dropout), name=name)


def build_large(alpha=1.0, input_shape=(224, 224, 3), classes=1000, *,
                first_stride=2, dropout=0.0, bn_momentum=BN_MOMENTUM):
    """Builds MobileNetV3-Large.

    Args:
        alpha: width multiplier; channels are ``alpha`` times the paper's, rounded
            by ``make_divisible``. The 1280-unit layer after the pool is only
            widened (alpha > 1), never narrowed.
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
    return _build(LARGE, "mobilenet_v3_large", alpha, input_shape, classes,
                  first_stride, dropout, bn_momentum)


def build_small(alpha=1.0, input_shape=(224, 224, 3), classes=1000, *,
                first_stride=2, dropout=0.0, bn_momentum=BN_MOMENTUM):
    """Builds MobileNetV3-Small; arguments as for ``build_large`` (the layer after
    the pool has 1024 units)."""
    return _build(SMALL, "mobilenet_v3_small", alpha, input_shape, classes,
                  first_stride, dropout, bn_momentum)

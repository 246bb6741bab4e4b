"""Building blocks shared by the MobileNet families.

Every block takes a ``name`` prefix and names its layers under it
(``block3_expand_conv``, ``block3_depthwise_bn``, ``block3_se_squeeze``...): pruning
and QAT filters, golden op lists and per-layer reports key on these names.

Convolutions use ``padding="same"`` (a stride-2 conv on an even input pads bottom and
right only), which converts to a single TFLite op with no separate PAD.
"""

import tensorflow as tf
import tf_keras as keras

from models import MIN_INPUT_SIZE
from models.rounding import make_divisible  # noqa: F401  (re-exported: the families import it from here)


# Keras' default is 0.99 and tf_keras.applications uses 0.999: after a few short
# epochs the moving statistics are still far off and evaluation sits at chance.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-3

ACTIVATIONS = ("relu", "relu6", "hswish")


class HardSigmoid(keras.layers.Layer):
    """hard_sigmoid(x) = relu6(x + 3) / 6 (MobileNetV3, section 5.2).

    The inner relu6 is the ``activation`` attribute, Keras' ``relu`` called with
    ``max_value=6``: tfmot's QuantizeAwareActivation only accepts activations it
    knows by name ("relu"), so QAT can put a fake-quant right after it. Without
    one, the "+3" has no trained range: the converter keeps it and the "x1/6" in
    float unless a representative data set calibrates them.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.activation = keras.activations.relu

    def call(self, inputs):
        return self.activation(inputs + 3.0, max_value=6.0) * (1.0 / 6.0)


class HardSwish(keras.layers.Layer):
    """hard_swish(x) = x * relu6(x + 3) / 6 (MobileNetV3, section 5.2).

    Written in the form the TFLite converter fuses into one HARD_SWISH op.
    """

    def call(self, inputs):
        return inputs * tf.nn.relu6(inputs + 3.0) * (1.0 / 6.0)


def activation(kind, name):
    """Returns the activation layer ``kind`` ("relu", "relu6" or "hswish") named ``name``."""
    if kind == "relu":
        return keras.layers.ReLU(name=name)
    if kind == "relu6":
        return keras.layers.ReLU(6.0, name=name)
    if kind == "hswish":
        return HardSwish(name=name)
    raise ValueError(f"activation must be one of {ACTIVATIONS}; got {kind!r}")


def batch_norm(name, momentum):
    return keras.layers.BatchNormalization(
        momentum=momentum, epsilon=BN_EPSILON, name=name
    )


def conv_bn_act(x, filters, kernel, stride, act, name, bn_momentum=BN_MOMENTUM):
    """Conv2D (no bias) -> BatchNorm -> activation.

    Layers: ``{name}_conv``, ``{name}_bn``, ``{name}_{act}``.

    Args:
        x: input tensor.
        filters: output channels.
        kernel: square kernel size.
        stride: 1 or 2.
        act: one of ``ACTIVATIONS``, or None for no activation.
        name: layer-name prefix, e.g. "stem" or "head".
        bn_momentum: BatchNormalization momentum.

    Returns:
        The output tensor.
    """
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = batch_norm(f"{name}_bn", bn_momentum)(x)
    if act is not None:
        x = activation(act, f"{name}_{act}")(x)
    return x


def depthwise_bn_act(x, kernel, stride, act, name, bn_momentum=BN_MOMENTUM):
    """DepthwiseConv2D (no bias) -> BatchNorm -> activation.

    Layers: ``{name}_depthwise``, ``{name}_depthwise_bn``, ``{name}_depthwise_{act}``.
    """
    x = keras.layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False,
        name=f"{name}_depthwise",
    )(x)
    x = batch_norm(f"{name}_depthwise_bn", bn_momentum)(x)
    return activation(act, f"{name}_depthwise_{act}")(x)


def depthwise_separable(x, filters, stride, name, bn_momentum=BN_MOMENTUM):
    """MobileNetV1 block: 3x3 depthwise -> BN -> ReLU6 -> 1x1 conv -> BN -> ReLU6.

    Layers: ``{name}_depthwise[_bn|_relu6]``, ``{name}_pointwise_{conv|bn|relu6}``.

    Args:
        x: input tensor.
        filters: output channels of the pointwise conv.
        stride: stride of the depthwise conv.
        name: layer-name prefix, e.g. "block3".
        bn_momentum: BatchNormalization momentum.

    Returns:
        The output tensor.
    """
    x = depthwise_bn_act(x, 3, stride, "relu6", name, bn_momentum)
    return conv_bn_act(x, filters, 1, 1, "relu6", f"{name}_pointwise", bn_momentum)


def squeeze_excite(x, squeeze_channels, name):
    """Squeeze-and-excite as in MobileNetV3: pool -> 1x1 conv ReLU -> 1x1 conv
    -> hard-sigmoid -> channel-wise scale.

    Layers: ``{name}_pool``, ``{name}_squeeze``, ``{name}_excite``,
    ``{name}_hsigmoid``, ``{name}_scale``.
    """
    channels = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = keras.layers.Conv2D(
        squeeze_channels, 1, activation="relu", name=f"{name}_squeeze"
    )(s)
    s = keras.layers.Conv2D(channels, 1, name=f"{name}_excite")(s)
    s = HardSigmoid(name=f"{name}_hsigmoid")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def inverted_residual(x, *, expanded, filters, kernel, stride, act, se, name,
                      bn_momentum=BN_MOMENTUM):
    """MobileNetV2/V3 bottleneck: [1x1 expand] -> depthwise -> [SE] -> 1x1 linear
    projection, plus a residual add when shapes allow.

    The expand conv is left out when ``expanded`` equals the input channels (the
    first bottleneck of each family, expansion 1).

    Layers: ``{name}_expand_{conv|bn|act}``, ``{name}_depthwise[_bn|_act]``,
    ``{name}_se_*``, ``{name}_project_{conv|bn}``, ``{name}_add``.

    Args:
        x: input tensor.
        expanded: channels after the expand conv (already width-scaled).
        filters: output channels (already width-scaled).
        kernel: depthwise kernel size (3 or 5).
        stride: depthwise stride.
        act: activation of the expand and depthwise stages.
        se: squeeze channels of the SE block, or 0 for none.
        name: layer-name prefix, e.g. "block3".
        bn_momentum: BatchNormalization momentum.

    Returns:
        The output tensor.
    """
    shortcut = x
    in_channels = x.shape[-1]
    if expanded != in_channels:
        x = conv_bn_act(x, expanded, 1, 1, act, f"{name}_expand", bn_momentum)
    x = depthwise_bn_act(x, kernel, stride, act, name, bn_momentum)
    if se:
        x = squeeze_excite(x, se, f"{name}_se")
    x = conv_bn_act(x, filters, 1, 1, None, f"{name}_project", bn_momentum)
    if stride == 1 and in_channels == filters:
        x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def classifier(x, classes, dropout):
    """Dropout (if any) -> Dense ``logits`` -> Softmax ``probs``.

    The model outputs probabilities so that TFLite files do too.
    """
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(classes, name="logits")(x)
    return keras.layers.Softmax(name="probs")(x)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_build_args(alpha, input_shape, classes, first_stride, dropout,
                        bn_momentum):
    """Checks the arguments every family's ``build`` takes.

    Raises:
        ValueError: naming the argument, the allowed values and what was received.
    """
    if not _is_number(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a number > 0; got {alpha!r}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (
        shape is None
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or min(shape[:2]) < MIN_INPUT_SIZE
        or shape[2] not in (1, 3)
    ):
        raise ValueError(
            "input_shape must be (height, width, channels) with height and width "
            f">= {MIN_INPUT_SIZE} and channels 1 or 3; got {input_shape!r}"
        )
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
        raise ValueError(f"classes must be an integer >= 2; got {classes!r}")
    if first_stride not in (1, 2) or isinstance(first_stride, bool):
        raise ValueError(f"first_stride must be 1 or 2; got {first_stride!r}")
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
    if not _is_number(bn_momentum) or not 0 < bn_momentum < 1:
        raise ValueError(
            f"bn_momentum must be a number in (0, 1); got {bn_momentum!r}"
        )


CUSTOM_OBJECTS = {"HardSigmoid": HardSigmoid, "HardSwish": HardSwish}

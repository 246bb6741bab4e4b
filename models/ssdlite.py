"""SSDLite (Sandler et al. 2018, "MobileNetV2", sec. 6.2): an SSD detector whose extra
feature maps and box/class predictors use depthwise-separable convolutions.

The backbone is a MobileNet family of this package without its classifier. The
detector predicts on the backbone's last stride-16 map (for V2/V3 the expansion
output of the first stride-32 bottleneck, as in the paper), its stride-32 map (the
output before the classifier's pool), then on extra maps, each a 1x1 conv, a 3x3
depthwise conv of stride 2 and a 1x1 conv, until the map has 1 cell or the
``EXTRA_LAYERS`` run out. On each map a box and a class predictor (3x3 depthwise
-> BN -> ReLU6 -> 1x1 conv) predict ``anchors_per_cell`` boxes per cell.

The model maps [0, 1] float images ``[B, H, W, C]`` to two outputs, in this order:
``box_encodings`` ``[B, N, 4]`` and ``class_logits`` ``[B, N, num_classes + 1]``
(column 0 is the background), N = sum over maps of rows * cols * anchors_per_cell,
flattened row-major over y, x, then the anchors of a cell, maps in order.

Every layer is one tfmot prunes (Conv2D, DepthwiseConv2D, BN, ReLU, Reshape,
Concatenate, and the backbone's own) and quantizes through ``models.quantize``.
"""

import math
from typing import NamedTuple, Tuple

import tf_keras as keras

from models import FAMILIES, build_model
from models.blocks import BN_MOMENTUM, conv_bn_act, depthwise_bn_act, make_divisible


class Extra(NamedTuple):
    """One extra feature map: 1x1 conv to depth/2, 3x3 depthwise stride 2, 1x1 conv to depth."""

    depth: int  # output channels at width 1.0


# The extra layers of SSDLite-MobileNetV2 (TF object detection API: 512, 256, 256, 128).
EXTRA_LAYERS = (Extra(512), Extra(256), Extra(256), Extra(128))

# Narrowest extra layer at small widths (the object detection API's min_depth).
MIN_DEPTH = 16

# Foreground probability the class predictors start at (RetinaNet, Lin et al. 2017,
# sec. 4.1): the background's many easy anchors do not swamp the first steps.
PRIOR_PROBABILITY = 0.01

# Std of the predictors' 1x1 kernels: small, so the initial logits stay near the prior.
PREDICTOR_INIT_STD = 0.01


def _stride_size(size: int, stride: int) -> int:
    # "same" padding: each stride-2 layer maps n to ceil(n / 2).
    for _ in range(int(math.log2(stride))):
        size = -(-size // 2)
    return size


def _backbone_maps(backbone, input_shape):
    """The backbone's last layer output at stride 16 and the input of its ``pool``."""
    want = (_stride_size(input_shape[0], 16), _stride_size(input_shape[1], 16))
    stride16 = None
    for layer in backbone.layers:
        shape = layer.output.shape
        if len(shape) == 4 and tuple(shape[1:3]) == want:
            stride16 = layer.output
    return stride16, backbone.get_layer("pool").input


def _extra_map(x, extra, index, alpha, bn_momentum):
    depth = max(MIN_DEPTH, make_divisible(extra.depth * alpha))
    name = f"extra{index}"
    x = conv_bn_act(x, depth // 2, 1, 1, "relu6", f"{name}_reduce", bn_momentum)
    x = depthwise_bn_act(x, 3, 2, "relu6", name, bn_momentum)
    return conv_bn_act(x, depth, 1, 1, "relu6", f"{name}_pointwise", bn_momentum)


def _predictor(x, outputs_per_anchor, anchors_per_cell, name, bias, bn_momentum):
    """3x3 depthwise -> BN -> ReLU6 -> 1x1 conv, reshaped to ``[B, cells * anchors, outputs]``."""
    x = depthwise_bn_act(x, 3, 1, "relu6", name, bn_momentum)
    x = keras.layers.Conv2D(
        anchors_per_cell * outputs_per_anchor, 1, name=f"{name}_conv",
        kernel_initializer=keras.initializers.RandomNormal(stddev=PREDICTOR_INIT_STD),
        bias_initializer=keras.initializers.Constant(bias),
    )(x)
    cells = x.shape[1] * x.shape[2]
    return keras.layers.Reshape((cells * anchors_per_cell, outputs_per_anchor), name=f"{name}_reshape")(x)


def build_ssdlite(family, alpha=1.0, input_shape=(320, 320, 3), num_classes=1, *, anchors_per_cell=4,
                  bn_momentum=BN_MOMENTUM) -> Tuple[keras.Model, Tuple[Tuple[int, int], ...]]:
    """Builds an SSDLite detector on a MobileNet backbone.

    Args:
        family: a name in ``models.FAMILIES``.
        alpha: width multiplier of the backbone and the extra layers.
        input_shape: (height, width, channels); height, width >= models.MIN_INPUT_SIZE (24), channels 1 or 3.
            Inputs are floats in [0, 1].
        num_classes: object classes (>= 1), not counting the background.
        anchors_per_cell: boxes predicted per feature-map cell (what the anchor
            generator lays out per cell).
        bn_momentum: BatchNormalization momentum.

    Returns:
        (model, feature_shapes): the ``keras.Model`` with outputs ``box_encodings``
        and ``class_logits``, and the (rows, cols) of each feature map it predicts
        on, in output order (what the anchors are generated for).

    Raises:
        ValueError: unknown family or an argument out of range.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1; got {num_classes!r}")
    if not isinstance(anchors_per_cell, int) or isinstance(anchors_per_cell, bool) or anchors_per_cell < 1:
        raise ValueError(f"anchors_per_cell must be an integer >= 1; got {anchors_per_cell!r}")
    # The classifier (2 classes: any valid number) is dropped: only the maps are kept.
    backbone = build_model(family, alpha, input_shape, 2, bn_momentum=bn_momentum)
    maps = list(_backbone_maps(backbone, input_shape))
    for index, extra in enumerate(EXTRA_LAYERS, start=1):
        if min(maps[-1].shape[1:3]) <= 1:
            break
        maps.append(_extra_map(maps[-1], extra, index, alpha, bn_momentum))
    class_bias = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
    boxes, classes = [], []
    for k, feature in enumerate(maps):
        boxes.append(_predictor(feature, 4, anchors_per_cell, f"box{k}", 0.0, bn_momentum))
        classes.append(_predictor(feature, num_classes + 1, anchors_per_cell, f"class{k}", class_bias,
                                  bn_momentum))
    outputs = [keras.layers.Concatenate(axis=1, name="box_encodings")(boxes),
               keras.layers.Concatenate(axis=1, name="class_logits")(classes)]
    model = keras.Model(backbone.input, outputs, name=f"ssdlite_{family}")
    return model, tuple((int(m.shape[1]), int(m.shape[2])) for m in maps)

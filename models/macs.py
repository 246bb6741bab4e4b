"""Parameter and multiply-accumulate (MAC) counts, as the MobileNet papers count them.

Counted, one MAC per multiplication of an input by a weight:

- Conv2D: ``H_out * W_out * kh * kw * (C_in / groups) * C_out``
- DepthwiseConv2D: ``H_out * W_out * kh * kw * C_in * depth_multiplier``
- Dense: ``positions * C_in * C_out``
- Multiply (the SE block's channel-wise scale): one per output element.

Not counted, as in the papers: BatchNorm (folded into the conv at inference),
biases, activations (ReLU, hard-swish, hard-sigmoid), residual adds and pooling.
"""

import math

import tf_keras as keras


def _unwrap(layer):
    # Pruning and QAT wrappers hold the real layer in ``.layer``.
    while isinstance(layer, keras.layers.Wrapper):
        layer = layer.layer
    return layer


def _layer_macs(layer, input_shape, output_shape):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return (math.prod(output_shape[1:3]) * kh * kw * input_shape[-1]
                * layer.depth_multiplier)
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return (math.prod(output_shape[1:3]) * kh * kw
                * (input_shape[-1] // layer.groups) * layer.filters)
    if isinstance(layer, keras.layers.Dense):
        return math.prod(output_shape[1:-1]) * input_shape[-1] * layer.units
    if isinstance(layer, keras.layers.Multiply):
        return math.prod(output_shape[1:])
    return 0


def count_macs(model):
    """Counts the multiply-accumulates of one inference (batch 1).

    See the module docstring for what is counted. Layers of nested models and
    layers inside pruning/QAT wrappers are counted too.

    Args:
        model: a built ``tf_keras`` model with a fixed input size.

    Returns:
        The number of MACs (an int).
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        # For a multi-input layer (Multiply), input_shape is a list; only
        # the output shape matters there.
        input_shape = layer.input_shape
        if isinstance(input_shape, list):
            input_shape = input_shape[0]
        total += _layer_macs(_unwrap(layer), input_shape, layer.output_shape)
    return total


def layer_macs(model):
    """MACs of each layer of ``model`` that has any (name -> int), as :func:`count_macs` counts them."""
    out = {}
    for layer in model.layers:
        input_shape = layer.input_shape
        if isinstance(input_shape, list):
            input_shape = input_shape[0]
        macs = _layer_macs(_unwrap(layer), input_shape, layer.output_shape)
        if macs:
            out[layer.name] = int(macs)
    return out


def count_params(model):
    """Counts the trainable parameters (weights and biases).

    BatchNorm's moving mean and variance are left out: they fold into the conv
    at inference, and the papers' counts leave them out too.

    Args:
        model: a built ``tf_keras`` model.

    Returns:
        The number of trainable parameters (an int).
    """
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def summary(family, alpha, input_size, classes):
    """Builds a model and returns its size.

    Args:
        family: a name in ``models.FAMILIES``.
        alpha: width multiplier.
        input_size: side of the square RGB input.
        classes: number of classes.

    Returns:
        ``{"params": int, "macs": int}``.

    Raises:
        ValueError: unknown family or an argument out of range.
    """
    from models import build_model

    model = build_model(family, alpha, (input_size, input_size, 3), classes)
    return {"params": count_params(model), "macs": count_macs(model)}

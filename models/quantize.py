"""Quantization-aware training support for our models (tfmot, 8-bit).

tfmot's default 8-bit registry knows Conv2D, DepthwiseConv2D, Dense, BatchNorm,
ReLU, Add, pooling and Softmax, but not our hard-swish / hard-sigmoid layers nor
Multiply (the SE block's scale). This module gives each of those a
``QuantizeConfig`` so that every family converts to an all-int8 TFLite file:

    annotated = quantize_annotate(model, "pqat")
    with quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated, get_scheme("pqat"))

(``quantize_model`` does both.) QAT models save and load as ``.h5`` inside
``quantize_scope()``; ``.keras`` fails on load. CQAT and PCQAT models do not
reload from a full ``.h5`` (tfmot does not serialize their weight quantizer, so the
weight count differs): rebuild with ``quantize_model`` and ``load_weights``.

Rescaling is left unsupported (``quantize_annotate`` raises): the models take
[0, 1] inputs and have none, and one right after the input converts with a float
DEQUANTIZE/QUANTIZE pair that requantizes the input.
"""

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from models.blocks import CUSTOM_OBJECTS, HardSigmoid, HardSwish

_qkeras = tfmot.quantization.keras

#: QAT scheme name -> factory of a new tfmot ``QuantizeScheme``.
SCHEMES = {
    "default": _qkeras.default_8bit.Default8BitQuantizeScheme,
    # Keeps the zeros of a pruned model.
    "pqat": tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme,
    # Keeps the clusters (the unique values) of a clustered model.
    "cqat": lambda: tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False),
    # Keeps both, for prune -> cluster(preserve_sparsity) -> QAT.
    "pcqat": lambda: tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True),
}


def get_scheme(name):
    """Returns a new tfmot ``QuantizeScheme`` for ``name`` (a key of ``SCHEMES``).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if name not in SCHEMES:
        raise ValueError(f"unknown QAT scheme {name!r}; valid: {', '.join(SCHEMES)}")
    return SCHEMES[name]()


def _activation_quantizer():
    # What tfmot's default 8-bit scheme uses for activations: per-tensor,
    # asymmetric, range tracked by a moving average.
    return _qkeras.quantizers.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False)


class OutputQuantizeConfig(_qkeras.QuantizeConfig):
    """Quantizes only the output of a weightless layer whose inputs are already
    quantized: HardSwish (the converter fuses it into one int8 HARD_SWISH) and
    Multiply."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [_activation_quantizer()]

    def get_config(self):
        return {}


class HardSigmoidQuantizeConfig(OutputQuantizeConfig):
    """Quantizes HardSigmoid's inner relu6 as well as its output.

    TFLite has no hard-sigmoid op: it becomes ADD(+3, fused relu6) then MUL(1/6).
    With only the output quantized, the ADD has no trained range: converted
    without a representative data set, the ADD and MUL stay float (measured).
    """

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, _activation_quantizer())]

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]


# Layers tfmot's default registry does not know -> their config.
_CONFIGS = {
    HardSwish: OutputQuantizeConfig,
    HardSigmoid: HardSigmoidQuantizeConfig,
    keras.layers.Multiply: OutputQuantizeConfig,
}


def quantize_annotate(model, scheme="default"):
    """Marks every layer of ``model`` for quantization.

    Layers listed in ``_CONFIGS`` get our config; the rest are left to the scheme's
    registry. The returned model shares its layers (and weights) with ``model``.

    Args:
        model: a flat functional ``tf_keras`` model (e.g. from ``build_model``,
            or pruned/clustered and stripped).
        scheme: a name in ``SCHEMES``; checked here so that an unsupported layer
            fails now, naming it, rather than deep inside ``quantize_apply``.

    Returns:
        The annotated model, ready for ``quantize_apply(annotated, get_scheme(scheme))``
        inside ``quantize_scope()``.

    Raises:
        ValueError: unknown scheme, or a layer neither we nor the scheme can quantize.
    """
    registries = (
        _qkeras.default_8bit.Default8BitQuantizeScheme().get_quantize_registry(),
        get_scheme(scheme).get_quantize_registry(),
    )

    def annotate(layer):
        config = _CONFIGS.get(type(layer))
        if config is not None:
            return _qkeras.quantize_annotate_layer(layer, config())
        # BatchNorm is not in the registries: the scheme's layout transform
        # folds it into the conv or dense before it.
        if not isinstance(layer, keras.layers.BatchNormalization) and not all(
            registry.supports(layer) for registry in registries
        ):
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) cannot be quantized "
                f"with scheme {scheme!r}: neither tfmot nor models.quantize has a "
                "QuantizeConfig for it"
            )
        return _qkeras.quantize_annotate_layer(layer)

    with quantize_scope():
        return keras.models.clone_model(model, clone_function=annotate)


def quantize_model(model, scheme="default"):
    """Returns a QAT copy of ``model``: ``quantize_annotate`` then ``quantize_apply``.

    Args:
        model: as for ``quantize_annotate``.
        scheme: a name in ``SCHEMES``.

    Returns:
        A new model with fake-quant wrappers; ``model`` is unchanged.

    Raises:
        ValueError: as for ``quantize_annotate``.
    """
    annotated = quantize_annotate(model, scheme)
    with quantize_scope():
        return _qkeras.quantize_apply(annotated, get_scheme(scheme))


def quantize_scope():
    """A context in which QAT models of our families can be cloned, saved and
    loaded (``keras.models.load_model(path.h5)``).

    Returns:
        A ``keras.utils.CustomObjectScope`` holding tfmot's objects, our layers
        and our quantize configs.
    """
    return _qkeras.quantize_scope({
        **CUSTOM_OBJECTS,
        "OutputQuantizeConfig": OutputQuantizeConfig,
        "HardSigmoidQuantizeConfig": HardSigmoidQuantizeConfig,
    })

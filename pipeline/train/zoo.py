"""The model families of ``models/`` as the pipeline uses them.

``models`` is a leaf package that raises ``ValueError`` on bad arguments; here those
become the pipeline's own errors: :class:`ConfigError` for a model that cannot be
built as asked, :class:`UnsupportedLayerError` for one that cannot be quantized.
"""

from typing import Any, Dict, Tuple

import models
from pipeline.errors import ConfigError, UnsupportedLayerError


def family_names() -> Tuple[str, ...]:
    """The registered model families, in registry order."""
    return tuple(models.FAMILIES)


def build_model(family: str, alpha: float, input_shape, classes: int, genotype=None, **kwargs):
    """:func:`models.build_model`, or :func:`models.genotype.build` for family ``mbconv``
    (``genotype`` then names the network); raises ConfigError on an unknown family or a
    bad argument."""
    try:
        if genotype is not None:
            from models.genotype import build

            return build(genotype, input_shape, classes, **kwargs)
        return models.build_model(family, alpha, input_shape, classes, **kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def model_summary(family: str, alpha: float, input_size: int, classes: int) -> Dict[str, Any]:
    """Parameters and MACs of a family at a width and input size (:func:`models.macs.summary`)."""
    from models.macs import summary

    try:
        return summary(family, alpha, input_size, classes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def quantize_annotate(model, scheme: str = "default"):
    """:func:`models.quantize.quantize_annotate`; UnsupportedLayerError names the layer."""
    from models import quantize

    try:
        return quantize.quantize_annotate(model, scheme)
    except ValueError as exc:
        raise UnsupportedLayerError(str(exc)) from None


def quantize_model(model, scheme: str = "default"):
    """:func:`models.quantize.quantize_model`; UnsupportedLayerError names the layer."""
    from models import quantize

    try:
        return quantize.quantize_model(model, scheme)
    except ValueError as exc:
        raise UnsupportedLayerError(str(exc)) from None

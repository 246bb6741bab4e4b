"""Model families: one module per family, shared blocks in ``models.blocks``.

Importing this package does not import TensorFlow: ``FAMILIES`` maps each name to a
builder that imports its module on first call, so CLI help and recipe validation
stay fast.

This package is a leaf: it imports nothing from the pipeline that uses it. Bad
arguments raise ``ValueError`` with a message naming the argument, the allowed
values and what was received; the pipeline turns those into its own error types.
"""

import importlib

#: The smallest input height and width of every family: each builds, trains, converts
#: to int8 (QAT) and runs on the host interpreter at it. The families reduce
#: resolution 32x (16x with stem stride 1) with "same" padding, which rounds up: at 24
#: with stem stride 2 the maps are 12, 6, 3, 2 and 1 pixels, so every stride-2 layer
#: still has a 2x2 map or more to reduce and the global pool and squeeze-excite see a
#: single pixel. At 16 the last stride-2 layers would get 1x1 maps (nothing left to
#: reduce; a genotype doing so is refused). 24 is also the smallest multiple of 8 past 16.
MIN_INPUT_SIZE = 24


class _LazyBuilder:
    """Calls ``models.<module>.<function>``, importing the module on first use."""

    def __init__(self, module, function):
        self.module = module
        self.function = function

    def __call__(self, *args, **kwargs):
        module = importlib.import_module(f"models.{self.module}")
        return getattr(module, self.function)(*args, **kwargs)

    def __repr__(self):
        return f"<builder models.{self.module}.{self.function}>"


#: Family name -> builder ``(alpha, input_shape, classes, **kwargs) -> tf_keras.Model``.
FAMILIES = {
    "mobilenet_v1": _LazyBuilder("mobilenet_v1", "build"),
    "mobilenet_v2": _LazyBuilder("mobilenet_v2", "build"),
    "mobilenet_v3_small": _LazyBuilder("mobilenet_v3", "build_small"),
    "mobilenet_v3_large": _LazyBuilder("mobilenet_v3", "build_large"),
}


def build_model(family, alpha, input_shape, classes, **kwargs):
    """Builds a model of a registered family.

    Args:
        family: a name in ``FAMILIES`` (e.g. "mobilenet_v2").
        alpha: width multiplier (> 0).
        input_shape: (height, width, channels); height, width >= ``MIN_INPUT_SIZE``, channels 1 or 3.
        classes: number of classes (>= 2).
        **kwargs: passed to the family's build: ``first_stride``, ``dropout``,
            ``bn_momentum``.

    Returns:
        A ``tf_keras.Model`` mapping [0, 1] floats to class probabilities.

    Raises:
        ValueError: unknown family (the message lists the valid ones) or an
            argument out of range.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[family](alpha, input_shape, classes, **kwargs)


def __getattr__(name):
    # CUSTOM_OBJECTS holds Keras classes: resolved on first access (imports TF).
    if name == "CUSTOM_OBJECTS":
        from models.blocks import CUSTOM_OBJECTS

        return CUSTOM_OBJECTS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

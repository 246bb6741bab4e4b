"""The TFLite variants a build can produce: a plain registry of how each is made.

Each row says which Keras model a variant converts, how the converter is set up,
and how the result is validated on a fixed batch against Keras.
"""

from dataclasses import dataclass
from typing import Optional

from pipeline.registry import Registry


@dataclass(frozen=True)
class Variant:
    """How one TFLite variant is produced and checked.

    Attributes:
        source: which Keras model it converts: ``float``, ``qat`` (or a later chain's model).
        optimize: apply ``Optimize.DEFAULT``.
        float16: restrict weights to float16.
        full_integer: int8 everywhere (representative data; int8 builtins only).
        max_abs_diff: validation tolerance on probabilities (float variants).
        min_agreement: validation floor on top-1 agreement with Keras (quantized variants).
    """

    name: str
    source: str
    optimize: bool = False
    float16: bool = False
    full_integer: bool = False
    max_abs_diff: Optional[float] = None
    min_agreement: Optional[float] = None
    description: str = ""


VARIANTS: Registry[Variant] = Registry("variant")
for _v in (
    Variant("float32", "float", max_abs_diff=1e-4, description="float32, as trained"),
    Variant("float16", "float", optimize=True, float16=True, max_abs_diff=2e-2,
            description="float16 weights, float compute"),
    Variant("dynamic", "float", optimize=True, min_agreement=0.9,
            description="dynamic-range: int8 weights, float activations"),
    Variant("int8-ptq", "float", optimize=True, full_integer=True, min_agreement=0.8,
            description="full integer, post-training quantization"),
    Variant("int8-qat", "qat", optimize=True, full_integer=True, min_agreement=0.8,
            description="full integer, from the quantization-aware-trained model"),
):
    VARIANTS.register(_v.name, _v)

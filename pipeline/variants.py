"""The TFLite variants a build can produce: a plain registry of how each is made.

Each row says which Keras model a variant converts (its *source*), the number format
it computes in, how the converter is set up, and how the result is validated on a
fixed batch against Keras. Every other spelling of a variant is derived from this
table: :func:`published_name` (``int8_qat``, as published tables and files spell
it) and :func:`reference_name` (what a latency reference model is converted as).

Sources (:data:`SOURCES`), each made by the build only when a requested variant needs it:

    float   the trained float model; the pruned one when ``prune.enabled``
    qat     QAT of ``float``: prune-preserving QAT (PQAT) when ``prune.enabled``,
            plain 8-bit QAT otherwise. So with pruning on, ``int8-qat`` is prune -> PQAT.
    cqat    the trained (never pruned) float model -> clustering -> cluster-preserving QAT
    pcqat   the pruned model -> sparsity-preserving clustering -> PCQAT (keeps zeros and clusters)
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from pipeline.registry import Registry


@dataclass(frozen=True)
class Variant:
    """How one TFLite variant is produced and checked.

    Attributes:
        source: which Keras model it converts: a key of :data:`SOURCES`.
        number_format: what it stores and computes in, one of :data:`NUMBER_FORMATS`:
            ``float16`` restricts weights to float16; ``int8`` is int8 everywhere
            (representative data; int8 builtins only).
        optimize: apply ``Optimize.DEFAULT``.
        max_abs_diff: validation tolerance on probabilities (float variants).
        min_agreement: validation floor on top-1 agreement with Keras (quantized variants).
    """

    name: str
    source: str
    number_format: str
    optimize: bool = False
    max_abs_diff: Optional[float] = None
    min_agreement: Optional[float] = None
    description: str = ""

    @property
    def float16(self) -> bool:
        """Whether the converter restricts weights to float16."""
        return self.number_format == "float16"

    @property
    def full_integer(self) -> bool:
        """Whether the model is int8 everywhere (representative data; int8 builtins only)."""
        return self.number_format == "int8"


@dataclass(frozen=True)
class Source:
    """A Keras model variants convert from.

    Attributes:
        needs: recipe sections whose ``enabled`` must be true to make it.
        chain: what was done to the trained float model, for tables: without and
            with ``prune.enabled`` (the ``float`` and ``qat`` sources start from the
            pruned model then).
    """

    needs: Tuple[str, ...]
    chain: Tuple[str, str]


#: Number formats: float32; float16 weights (float32 compute); hybrid: int8 weights,
#: float activations (dynamic range); int8: integer weights and activations.
NUMBER_FORMATS = ("float32", "float16", "hybrid", "int8")

SOURCES: Dict[str, Source] = {
    "float": Source((), ("float", "prune")),
    "qat": Source(("qat",), ("QAT", "prune -> PQAT")),
    "cqat": Source(("cluster", "qat"), ("cluster -> CQAT",) * 2),
    "pcqat": Source(("prune", "cluster", "qat"), ("prune -> cluster -> PCQAT",) * 2),
}


def chain_of(source: str, pruned: bool, structure: str = "unstructured") -> str:
    """The chain behind ``source`` in words, e.g. "prune -> PQAT" or "cluster -> CQAT".

    ``structure`` is the recipe's ``prune.structure``: after channel pruning the float
    and QAT sources start from the thinned model ("channels -> QAT"; "channels ->
    prune -> PQAT" with unstructured pruning on top).
    """
    if pruned and structure.startswith("channels") and source in ("float", "qat"):
        sparse = structure == "channels+unstructured"
        thinned = "channels -> prune" if sparse else "channels"
        return thinned if source == "float" else f"{thinned} -> {'PQAT' if sparse else 'QAT'}"
    return SOURCES[source].chain[1 if pruned else 0]


VARIANTS: Registry[Variant] = Registry("variant")
for _v in (
    Variant("float32", "float", "float32", max_abs_diff=1e-4, description="float32, as trained"),
    Variant("float16", "float", "float16", optimize=True, max_abs_diff=2e-2,
            description="float16 weights, float compute"),
    Variant("dynamic", "float", "hybrid", optimize=True, min_agreement=0.9,
            description="dynamic-range: int8 weights, float activations"),
    Variant("int8-ptq", "float", "int8", optimize=True, min_agreement=0.8,
            description="full integer, post-training quantization"),
    Variant("int8-qat", "qat", "int8", optimize=True, min_agreement=0.8,
            description="full integer, from the quantization-aware-trained model "
                        "(prune-preserving QAT of the pruned model when pruning is on)"),
    Variant("int8-cqat", "cqat", "int8", optimize=True, min_agreement=0.8,
            description="full integer, weight clustering then cluster-preserving QAT"),
    Variant("int8-pcqat", "pcqat", "int8", optimize=True, min_agreement=0.8,
            description="full integer, pruning, sparsity-preserving clustering, then "
                        "sparsity- and cluster-preserving QAT"),
):
    if _v.source not in SOURCES:
        raise ValueError(f"variant {_v.name!r}: unknown source {_v.source!r}")
    if _v.number_format not in NUMBER_FORMATS:
        raise ValueError(f"variant {_v.name!r}: unknown number format {_v.number_format!r}")
    VARIANTS.register(_v.name, _v)

# What a recipe builds when it does not list its variants: the clustered chains
# need their own stages and settings, so they are asked for by name.
DEFAULT_VARIANTS = ("float32", "float16", "dynamic", "int8-ptq", "int8-qat")


def published_name(name: str) -> str:
    """How published tables and the files that copy them spell variant ``name``: ``int8_qat``."""
    return VARIANTS.get(name).name.replace("-", "_")


def reference_name(name: str) -> str:
    """What a latency reference model converted as variant ``name`` is called.

    A conversion of the float model is named by its number format (``int8`` for
    ``int8-ptq``); any other source by the variant's own name (``int8-qat``: the QAT
    graph can hold ops that post-training quantization folds away).
    """
    v = VARIANTS.get(name)
    return v.number_format if v.source == "float" else v.name

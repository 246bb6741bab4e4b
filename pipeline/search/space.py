"""The search space and the budgets: candidates (family x width x input size) and limits."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from pipeline.errors import ConfigError
from pipeline.recipe.schema import Recipe
from pipeline.variants import reference_name

# Variants the cost tier can stand for -> the reference model it converts
# (:func:`pipeline.variants.reference_name`). The QAT reference is the untrained model
# wrapped for QAT: its graph can differ from the PTQ one (a squeeze-excite's
# hard-sigmoid keeps its ADD, which post-training quantization folds into the conv),
# so each is priced as converted.
SEARCH_VARIANTS = {v: reference_name(v) for v in ("int8-qat", "int8-ptq", "float32")}

# How each budget is named in messages.
_BUDGET_NAMES = {"latency_ms": "latency budget (ms)", "memory_mb": "memory budget (MiB)",
                 "size_kb": "size budget (KiB)"}


@dataclass(frozen=True)
class Candidate:
    """One point of the space: a family at a width multiplier and input size."""

    family: str
    alpha: float
    input_size: int

    @property
    def name(self) -> str:
        return f"{self.family}-{self.alpha:g}-{self.input_size}"

    @property
    def model(self) -> Dict[str, Any]:
        """The recipe's ``model`` fields this candidate sets."""
        return {"family": self.family, "alpha": float(self.alpha), "input_size": int(self.input_size),
                "genotype": None}


@dataclass(frozen=True)
class Arch:
    """A candidate as a name and the recipe ``model`` fields it sets: a grid candidate's
    family, width and input size, or a block-level genotype (family ``mbconv``)."""

    name: str
    model: Dict[str, Any]

    @classmethod
    def of(cls, cand: "Candidate") -> "Arch":
        return cls(cand.name, cand.model)


@dataclass(frozen=True)
class Budget:
    """Limits a candidate must meet on the device; None means no limit.

    Attributes:
        latency_ms: estimated latency of the variant at the recipe's threads.
        memory_mb: peak memory estimate (MiB) of the variant on the device.
        size_kb: file size (KiB) of the variant.

    Raises:
        ConfigError: a limit that is not a positive finite number.
    """

    latency_ms: float
    memory_mb: Optional[float] = None
    size_kb: Optional[float] = None

    def __post_init__(self):
        for key in ("latency_ms", "memory_mb", "size_kb"):
            v = getattr(self, key)
            if key != "latency_ms" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{_BUDGET_NAMES[key]} must be a positive number, got {v!r}")

    def misses(self, cost: Dict[str, Any]) -> List[str]:
        """The budgets ``cost`` misses, each as "what measured > limit" (empty: fits)."""
        if not cost.get("loaded"):
            return [f"does not load on the device ({cost.get('load_error_op') or cost.get('load_error')})"]
        out = []
        if cost["latency_ms"] is None:
            out.append("no latency estimate (device without latency parameters)")
        elif cost["latency_ms"] > self.latency_ms:
            out.append(f"latency {cost['latency_ms']:.3f} ms > {self.latency_ms:g} ms")
        if self.memory_mb is not None and cost["memory_mb"] > self.memory_mb:
            out.append(f"memory {cost['memory_mb']:.3f} MiB > {self.memory_mb:g} MiB")
        if self.size_kb is not None and cost["size_kb"] > self.size_kb:
            out.append(f"size {cost['size_kb']:.1f} KiB > {self.size_kb:g} KiB")
        return out

    def to_dict(self) -> Dict[str, Optional[float]]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        """The limits as one phrase: "2 ms, 1.5 MiB, 300 KiB"."""
        parts = [f"{self.latency_ms:g} ms"]
        if self.memory_mb is not None:
            parts.append(f"{self.memory_mb:g} MiB")
        if self.size_kb is not None:
            parts.append(f"{self.size_kb:g} KiB")
        return ", ".join(parts)


def space(recipe: Recipe) -> List[Candidate]:
    """Every candidate of the recipe's search space, in a fixed order."""
    s = recipe.search
    return [Candidate(f, float(a), int(n)) for f in s.families for a in s.alphas for n in s.input_sizes]


def check_variant(variant: str, recipe: Optional[Recipe] = None) -> None:
    """Raises ConfigError unless ``variant`` can be searched for (and ``recipe`` builds it)."""
    if variant not in SEARCH_VARIANTS:
        raise ConfigError(f"search variant {variant!r} is unknown; valid: {', '.join(SEARCH_VARIANTS)}")
    if recipe is not None and variant not in recipe.convert.variants:
        raise ConfigError(f"variant {variant!r} is not a variant recipe {recipe.name} builds; valid: "
                          f"{', '.join(v for v in recipe.convert.variants if v in SEARCH_VARIANTS)}")

"""The budgets a recipe may set: their names, what they limit and which limits make sense.

In a recipe::

    budgets:
      max_top1_drop: {int8-qat: 1.0, int8-ptq: 2.0}   # points below float Keras top-1
      max_size_ratio: {"*": 0.30}                      # "*" = every variant it applies to
      max_latency_ms: {camera-a53: 30}                 # deploy variant on that device

Each key is a row of :data:`BUDGETS`; the subjects are variant names (or device
names for device budgets), or ``"*"``. How each is measured on a finished build is
:mod:`pipeline.gate.budgets`.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class BudgetKind:
    """One kind of budget.

    Attributes:
        scope: ``variant`` (subjects are variants) or ``device`` (subjects are devices;
            measured on the deploy variant).
        direction: ``max`` (measured must be <= limit) or ``min`` (>=).
        bounds: (lowest, highest) limit that makes sense, with what it means, or None.
    """

    name: str
    scope: str
    direction: str
    unit: str
    description: str
    bounds: Optional[Tuple[float, float, str]] = None


BUDGETS: Dict[str, BudgetKind] = {b.name: b for b in (
    BudgetKind("max_top1_drop", "variant", "max", "points", "top-1 drop below the float Keras model"),
    BudgetKind("min_top1", "variant", "min", "%", "top-1 on the test split"),
    BudgetKind("max_size_kb", "variant", "max", "KiB", "file size"),
    BudgetKind("max_gzip_kb", "variant", "max", "KiB", "gzip size"),
    BudgetKind("max_size_ratio", "variant", "max", "x", "file size relative to float32"),
    BudgetKind("min_sparsity", "variant", "min", "fraction",
               "zeros in prunable (conv/dense) kernels of the .tflite file",
               bounds=(0.0, 1.0, "a fraction of the kernel values, e.g. 0.45 for 45% zeros")),
    # Per output channel: int8 conv kernels are quantized per channel, so a kernel
    # clustered to N centroids has at most N int8 values in each channel (not per kernel).
    BudgetKind("max_unique_values", "variant", "max", "values",
               "most distinct values in any output channel of a conv/dense kernel of the .tflite file",
               bounds=(1.0, float("inf"), "a count of distinct weight values, e.g. 16 after 16-cluster clustering")),
    BudgetKind("max_latency_ms", "device", "max", "ms",
               "latency of the deploy variant (measured on the real device an entry names, else estimated)"),
    BudgetKind("max_minstructions", "device", "max", "M instr",
               "guest instructions per inference of the deploy variant"),
    BudgetKind("max_memory_mb", "device", "max", "MiB", "peak memory estimate of the deploy variant"),
    BudgetKind("min_device_top1", "device", "min", "%", "top-1 of the deploy variant on the device"),
)}


def validate_budgets(budgets: Mapping[str, Any], variants: Sequence[str]) -> None:
    """Checks budget keys, subjects and limits. Raises ConfigError naming the bad entry."""
    if not isinstance(budgets, Mapping):
        raise ConfigError(f"recipe.budgets: expected a mapping, got {budgets!r}")
    for key, subjects in budgets.items():
        if key not in BUDGETS:
            raise ConfigError(f"recipe.budgets: unknown budget {key!r}; valid: {', '.join(BUDGETS)}")
        if not isinstance(subjects, Mapping) or not subjects:
            raise ConfigError(f"recipe.budgets.{key}: expected a mapping of "
                              f"{BUDGETS[key].scope} name (or \"*\") to a limit, got {subjects!r}")
        for subject, limit in subjects.items():
            if isinstance(limit, bool) or not isinstance(limit, (int, float)):
                raise ConfigError(f"recipe.budgets.{key}.{subject}: expected a number, got {limit!r}")
            if not math.isfinite(limit):
                raise ConfigError(f"recipe.budgets.{key}.{subject}: expected a finite number, got {limit!r}")
            bounds = BUDGETS[key].bounds
            if bounds is not None and not bounds[0] <= limit <= bounds[1]:
                raise ConfigError(f"recipe.budgets.{key}.{subject}: expected {bounds[2]} "
                                  f"({bounds[0]:g} to {bounds[1]:g}), got {limit!r}")
            if BUDGETS[key].scope == "variant" and subject != "*" and subject not in variants:
                raise ConfigError(f"recipe.budgets.{key}: {subject!r} is not a variant this recipe builds; "
                                  f"valid: {', '.join(variants)}, *")

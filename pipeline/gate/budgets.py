"""Budgets: limits a recipe sets on what a build produces, checked after the build.

In a recipe::

    budgets:
      max_top1_drop: {int8-qat: 1.0, int8-ptq: 2.0}   # points below float Keras top-1
      max_size_ratio: {"*": 0.30}                      # "*" = every variant it applies to
      max_latency_ms: {camera-a53: 30}                 # deploy variant on that device

Each key is a row of :data:`BUDGETS`; the subjects are variant names (or device
names for device budgets), or ``"*"``. A missed budget does not stop the build
early: every artifact is written, then the build exits non-zero naming it.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class BudgetKind:
    """One kind of budget.

    Attributes:
        scope: ``variant`` (subjects are variants) or ``device`` (subjects are devices;
            measured on the deploy variant).
        direction: ``max`` (measured must be <= limit) or ``min`` (>=).
        measure: (build metrics, subject) -> measured value, or None when not measured.
        bounds: (lowest, highest) limit that makes sense, with what it means, or None.
    """

    name: str
    scope: str
    direction: str
    unit: str
    description: str
    measure: Callable[[Mapping[str, Any], str], Optional[float]]
    bounds: Optional[Tuple[float, float, str]] = None


def _variant_metric(key: str, scale: float = 1.0):
    def measure(m, v):
        value = m.get("variants", {}).get(v, {}).get(key)
        return None if value is None else value * scale
    return measure


def _top1_drop(m, v):
    top1 = m.get("variants", {}).get(v, {}).get("top1")
    return None if top1 is None or m.get("float_top1") is None else m["float_top1"] - top1


def _size_ratio(m, v):
    size = m.get("variants", {}).get(v, {}).get("size_bytes")
    base = m.get("variants", {}).get("float32", {}).get("size_bytes")
    return None if size is None or not base else size / base


def _device_metric(key: str, scale: float = 1.0):
    def measure(m, device):
        rec = m.get("devices", {}).get(device, {}).get(m.get("deploy_variant"), {})
        value = rec.get(key)
        return None if value is None else value * scale
    return measure


BUDGETS: Dict[str, BudgetKind] = {b.name: b for b in (
    BudgetKind("max_top1_drop", "variant", "max", "points",
               "top-1 drop below the float Keras model", _top1_drop),
    BudgetKind("min_top1", "variant", "min", "%", "top-1 on the test split", _variant_metric("top1")),
    BudgetKind("max_size_kb", "variant", "max", "KiB", "file size", _variant_metric("size_bytes", 1 / 1024)),
    BudgetKind("max_gzip_kb", "variant", "max", "KiB", "gzip size", _variant_metric("gzip_bytes", 1 / 1024)),
    BudgetKind("max_size_ratio", "variant", "max", "x", "file size relative to float32", _size_ratio),
    BudgetKind("min_sparsity", "variant", "min", "fraction",
               "zeros in prunable (conv/dense) kernels of the .tflite file", _variant_metric("zeros_prunable"),
               bounds=(0.0, 1.0, "a fraction of the kernel values, e.g. 0.45 for 45% zeros")),
    # Per output channel: int8 conv kernels are quantized per channel, so a kernel
    # clustered to N centroids has at most N int8 values in each channel (not per kernel).
    BudgetKind("max_unique_values", "variant", "max", "values",
               "most distinct values in any output channel of a conv/dense kernel of the .tflite file",
               _variant_metric("max_unique_per_kernel"),
               bounds=(1.0, float("inf"), "a count of distinct weight values, e.g. 16 after 16-cluster clustering")),
    BudgetKind("max_latency_ms", "device", "max", "ms", "estimated latency of the deploy variant",
               _device_metric("latency_ms")),
    BudgetKind("max_minstructions", "device", "max", "M instr",
               "guest instructions per inference of the deploy variant",
               _device_metric("instructions_per_inference", 1e-6)),
    BudgetKind("max_memory_mb", "device", "max", "MiB", "peak memory estimate of the deploy variant",
               _device_metric("peak_memory_bytes", 1 / (1024 * 1024))),
    BudgetKind("min_device_top1", "device", "min", "%", "top-1 of the deploy variant on the device",
               _device_metric("top1")),
)}


@dataclass(frozen=True)
class BudgetCheck:
    budget: str
    subject: str
    limit: float
    measured: Optional[float]
    unit: str

    @property
    def direction(self) -> str:
        return BUDGETS[self.budget].direction

    @property
    def ok(self) -> bool:
        if self.measured is None:
            return False  # a budget that could not be measured is not met
        return self.measured <= self.limit if self.direction == "max" else self.measured >= self.limit

    def to_dict(self) -> Dict[str, Any]:
        return {"budget": self.budget, "subject": self.subject, "limit": self.limit,
                "measured": self.measured, "unit": self.unit, "ok": self.ok}


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


def check_budgets(budgets: Mapping[str, Any], metrics: Mapping[str, Any],
                  devices: Sequence[str] = ()) -> List[BudgetCheck]:
    """Measures every budget of the recipe against a build's metrics.

    Args:
        metrics: ``{"float_top1", "deploy_variant", "variants": {v: {...}},
            "devices": {device: {variant: {...}}}}``.
        devices: the recipe's target devices ("*" for device budgets expands to them).
    """
    checks = []
    for key, subjects in budgets.items():
        kind = BUDGETS[key]
        for subject, limit in subjects.items():
            if subject == "*":
                names = list(metrics.get("variants", {})) if kind.scope == "variant" else list(devices)
                if kind.name == "max_size_ratio":
                    names = [n for n in names if n != "float32"]
            else:
                names = [subject]
            for name in names:
                checks.append(BudgetCheck(key, name, float(limit), kind.measure(metrics, name), kind.unit))
    return checks


def format_budget_table(checks: Sequence[BudgetCheck]) -> str:
    """A Markdown table: budget, subject, limit, measured, verdict."""
    lines = ["| budget | subject | limit | measured | result |", "|---|---|---|---|---|"]
    for c in checks:
        op = "<=" if c.direction == "max" else ">="
        measured = "not measured" if c.measured is None else f"{c.measured:.4g} {c.unit}"
        lines.append(f"| {c.budget} | {c.subject} | {op} {c.limit:g} {c.unit} | {measured} | "
                     f"{'ok' if c.ok else 'MISSED'} |")
    return "\n".join(lines)

"""Budgets checked on a finished build: each recipe budget measured on the build's summary.

What a budget means and which keys exist is :mod:`pipeline.recipe.budgets`; this
module measures them. A missed budget does not stop the build early: every
artifact is written, then the build exits non-zero naming it.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from pipeline.recipe.budgets import BUDGETS
from pipeline.summary import UNVALIDATED_MARK, UNVALIDATED_NOTE, BudgetResult, BuildSummary
from pipeline.table import Table

Measure = Callable[[BuildSummary, str], Optional[float]]


def _variant_metric(key: str, scale: float = 1.0):
    def measure(s: BuildSummary, v: str) -> Optional[float]:
        variant = s.variants.get(v)
        return None if variant is None else getattr(variant, key) * scale
    return measure


def _top1_drop(s: BuildSummary, v: str) -> Optional[float]:
    variant = s.variants.get(v)
    return None if variant is None else s.float_top1 - variant.top1


def _size_ratio(s: BuildSummary, v: str) -> Optional[float]:
    variant, base = s.variants.get(v), s.variants.get("float32")
    return None if variant is None or base is None or not base.size_bytes else variant.size_bytes / base.size_bytes


def _latency(s: BuildSummary, device: str) -> Optional[float]:
    """The deploy variant's mean latency measured on the entry's real device where there is
    one (a device that refused the model: not measured), else the estimate."""
    result = s.device(device)
    if result is None:
        return None
    if result.measured is not None:
        return result.measured.mean_ms
    return result.latency_ms


def latency_basis(s: BuildSummary, device: str) -> str:
    """What a latency budget on ``device`` was checked against: ``measured on <target>`` or ``estimated``."""
    result = s.device(device)
    return result.measured.basis if result is not None and result.measured is not None else "estimated"


def _device_metric(key: str, scale: float = 1.0):
    def measure(s: BuildSummary, device: str) -> Optional[float]:
        result = s.device(device)  # the deploy variant's
        value = None if result is None else getattr(result, key)
        return None if value is None else value * scale
    return measure


#: Budget name -> (build summary, subject) -> measured value, or None when not measured.
MEASURES: Dict[str, Measure] = {
    "max_top1_drop": _top1_drop,
    "min_top1": _variant_metric("top1"),
    "max_size_kb": _variant_metric("size_bytes", 1 / 1024),
    "max_gzip_kb": _variant_metric("gzip_bytes", 1 / 1024),
    "max_size_ratio": _size_ratio,
    "min_sparsity": _variant_metric("zeros_prunable"),
    "max_unique_values": _variant_metric("max_unique_per_kernel"),
    "max_latency_ms": _latency,
    "max_minstructions": _device_metric("instructions_per_inference", 1e-6),
    "max_memory_mb": _device_metric("peak_memory_bytes", 1 / (1024 * 1024)),
    "min_device_top1": _device_metric("top1"),
}


@dataclass(frozen=True)
class BudgetCheck:
    """One budget measured on one subject (a variant or a device)."""

    budget: str
    subject: str
    limit: float
    measured: Optional[float]
    unit: str
    unvalidated: bool = False  # an estimated latency of a core/format the fit never saw
    basis: Optional[str] = None  # latency only: "measured on <target>" or "estimated"

    @property
    def direction(self) -> str:
        return BUDGETS[self.budget].direction

    @property
    def ok(self) -> bool:
        if self.measured is None:
            return False  # a budget that could not be measured is not met
        return self.measured <= self.limit if self.direction == "max" else self.measured >= self.limit

    def to_result(self) -> BudgetResult:
        """The verdict as the build summary records it."""
        return BudgetResult(self.budget, self.subject, self.limit, self.measured, self.unit, self.ok,
                            self.unvalidated, self.basis)

    def to_dict(self) -> Dict[str, Any]:
        return self.to_result().to_dict()


def check_budgets(budgets: Mapping[str, Any], summary: BuildSummary,
                  devices: Sequence[str] = ()) -> List[BudgetCheck]:
    """Measures every budget of the recipe against a build's figures.

    A latency budget on an entry that names a real device (``rpi4@ssh://pi@camera-7``)
    is checked against the mean latency measured there, else against the estimate; its
    verdict says which (``basis``).

    Args:
        budgets: the recipe's ``budgets`` mapping (validated by :func:`validate_budgets`).
        summary: the build's figures (device budgets read its deploy variant).
        devices: the recipe's target devices ("*" for device budgets expands to them).
    """
    checks = []
    for key, subjects in budgets.items():
        kind = BUDGETS[key]
        for subject, limit in subjects.items():
            if subject == "*":
                names = list(summary.variants) if kind.scope == "variant" else list(devices)
                if kind.name == "max_size_ratio":
                    names = [n for n in names if n != "float32"]
            else:
                names = [subject]
            for name in names:
                latency = key == "max_latency_ms"
                basis = latency_basis(summary, name) if latency else None
                checks.append(BudgetCheck(key, name, float(limit), MEASURES[key](summary, name), kind.unit,
                                          latency and basis == "estimated" and _unvalidated(summary, name),
                                          basis))
    return checks


def _unvalidated(summary: BuildSummary, device: str) -> bool:
    result = summary.device(device)
    return result is not None and result.latency_validated is False


def format_budget_table(checks: Sequence[Union[BudgetCheck, BudgetResult]]) -> str:
    """A Markdown table: budget, subject, limit, measured, verdict."""
    rows = []
    for c in checks:
        op = "<=" if c.direction == "max" else ">="
        measured = "not measured" if c.measured is None else f"{c.measured:.4g} {c.unit}"
        if c.unvalidated and c.measured is not None:
            measured += f" {UNVALIDATED_MARK}"
        if c.basis and c.measured is not None:
            measured += f" ({c.basis})"
        rows.append([c.budget, c.subject, f"{op} {c.limit:g} {c.unit}", measured, "ok" if c.ok else "MISSED"])
    lines = Table(["budget", "subject", "limit", "measured", "result"], rows, "lllll").markdown()
    if any(c.unvalidated for c in checks):
        lines += ["", UNVALIDATED_NOTE]
    return "\n".join(lines)

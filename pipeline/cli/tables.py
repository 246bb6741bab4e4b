"""The tables ``mobile-model build`` prints at the end: variants, per-kernel figures, budgets."""

from typing import Sequence

from pipeline.gate.budgets import format_budget_table
from pipeline.publish.variant_table import TERMINAL_COLUMNS, variant_table
from pipeline.summary import BudgetResult, BuildSummary
from pipeline.table import Table
from pipeline.variants import VARIANTS


def summary_table(summary: BuildSummary) -> str:
    """Markdown table of every variant: the chain it comes from, size, gzip size, top-1,
    agreement, zeros and distinct values per output channel; then, when a clustered
    variant was built, the per-kernel table of every full-integer variant."""
    lines = [f"float Keras top-1: {summary.float_top1:.2f}%   params {summary.params:,}   "
             f"MACs {summary.macs:,}",
             "", *variant_table(summary, TERMINAL_COLUMNS).markdown()]
    table = kernel_summary(summary)
    return "\n".join(lines) + (f"\n\n{table}" if table else "")


def kernel_summary(summary: BuildSummary) -> str:
    """Per-kernel zeros and distinct values per output channel of the full-integer
    variants, as Markdown; empty unless a clustered variant (CQAT, PCQAT) was built."""
    variants = {name: v for name, v in summary.variants.items()
                if name in VARIANTS and VARIANTS.get(name).full_integer and v.kernels}
    if not any(VARIANTS.get(name).source in ("cqat", "pcqat") for name in variants):
        return ""
    by_layer = {name: {k.layer: k for k in v.kernels} for name, v in variants.items()}
    rows = []
    for row in next(iter(variants.values())).kernels:
        cells = []
        for kernels in by_layer.values():
            k = kernels.get(row.layer)
            cells.append(f"{k.zeros:.0%} / {k.unique_per_channel}" if k else "")
        rows.append([row.layer, row.op, f"{row.params:,}", *cells])
    table = Table(["kernel", "op", "params"] + [f"{name} zeros / distinct" for name in variants], rows,
                  "llr" + "r" * len(variants))
    return "\n".join(["Per kernel (int8 files): zeros, and most distinct values in any output channel", "",
                      *table.markdown()])


def budget_summary(budgets: Sequence[BudgetResult]) -> str:
    """The budget table of a build, or a line saying its recipe sets none."""
    return format_budget_table(budgets) if budgets else "(no budgets in this recipe)"

"""The tables ``mobile-model build`` prints at the end: variants, per-kernel figures, budgets."""

from typing import Sequence

from pipeline.variants import VARIANTS
from pipeline.gate.budgets import format_budget_table
from pipeline.summary import BudgetResult, BuildSummary


def summary_table(summary: BuildSummary) -> str:
    """Markdown table of every variant: the chain it comes from, size, gzip size, top-1,
    agreement, zeros and distinct values per output channel; then, when a clustered
    variant was built, the per-kernel table of every full-integer variant."""
    lines = [f"float Keras top-1: {summary.float_top1:.2f}%   params {summary.params:,}   "
             f"MACs {summary.macs:,}",
             "",
             "| variant | from | size KiB | gzip KiB | top-1 % | agree w/ float % | zeros (prunable) | "
             "distinct/channel (max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, v in summary.variants.items():
        lines.append(f"| {name} | {v.chain} | {v.size_bytes / 1024:.1f} | "
                     f"{v.gzip_bytes / 1024:.1f} | {v.top1:.2f} | {v.agreement_with_float:.2f} | "
                     f"{v.zeros_prunable:.1%} | {v.max_unique_per_kernel} |")
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
    head = " | ".join(f"{name} zeros / distinct" for name in variants)
    lines = ["Per kernel (int8 files): zeros, and most distinct values in any output channel",
             "",
             f"| kernel | op | params | {head} |",
             "|---|---|---:|" + "---:|" * len(variants)]
    for row in next(iter(variants.values())).kernels:
        cells = []
        for kernels in by_layer.values():
            k = kernels.get(row.layer)
            cells.append(f"{k.zeros:.0%} / {k.unique_per_channel}" if k else "")
        lines.append(f"| {row.layer} | {row.op} | {row.params:,} | {' | '.join(cells)} |")
    return "\n".join(lines)


def budget_summary(budgets: Sequence[BudgetResult]) -> str:
    """The budget table of a build, or a line saying its recipe sets none."""
    return format_budget_table(budgets) if budgets else "(no budgets in this recipe)"

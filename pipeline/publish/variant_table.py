"""The per-variant table of a build: its columns defined once, for the terminal and the report.

``mobile-model build`` prints :data:`TERMINAL_COLUMNS` and the report's "Variants (host)"
section shows :data:`REPORT_COLUMNS`; both are :func:`variant_table` over the same
:data:`COLUMNS`. A figure the two show in different forms (the report separates
thousands in sizes, gives agreement to one decimal and sets the deploy variant in bold)
is two entries here, side by side.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

from pipeline.summary import BuildSummary, VariantSummary
from pipeline.table import Cell, Table
from pipeline.variants import VARIANTS


def variant_description(name: str) -> str:
    """What variant ``name`` is, in words; "" for a name the registry does not hold (an older build's)."""
    return VARIANTS.get(name).description if name in VARIANTS.names() else ""


def _float32_ratio(s: BuildSummary, m: VariantSummary) -> str:
    base: Optional[VariantSummary] = s.variants.get("float32")
    return f"{m.size_bytes / base.size_bytes:.2f}" if base is not None and base.size_bytes else "-"


@dataclass(frozen=True)
class Column:
    """One column: its header, "l" or "r", and its cell for (summary, variant name, variant figures)."""

    header: str
    align: str
    cell: Callable[[BuildSummary, str, VariantSummary], Cell]


COLUMNS: Dict[str, Column] = {
    "variant": Column("variant", "l", lambda s, n, m: n),
    "variant, deploy in bold": Column("variant", "l", lambda s, n, m: f"**{n}**" if n == s.deploy_variant else n),
    "from": Column("from", "l", lambda s, n, m: m.chain),
    "what": Column("what", "l", lambda s, n, m: (variant_description(n), "wrap")),
    "size KiB": Column("size KiB", "r", lambda s, n, m: f"{m.size_bytes / 1024:.1f}"),
    "size KiB, thousands": Column("size KiB", "r", lambda s, n, m: f"{m.size_bytes / 1024:,.1f}"),
    "gzip KiB": Column("gzip KiB", "r", lambda s, n, m: f"{m.gzip_bytes / 1024:.1f}"),
    "gzip KiB, thousands": Column("gzip KiB", "r", lambda s, n, m: f"{m.gzip_bytes / 1024:,.1f}"),
    "x float32": Column("x float32", "r", lambda s, n, m: _float32_ratio(s, m)),
    "top-1 %": Column("top-1 %", "r", lambda s, n, m: f"{m.top1:.2f}"),
    "vs float": Column("vs float", "r", lambda s, n, m: f"{m.top1 - s.float_top1:+.2f}"),
    # Conversion judged against its own input: the Keras model the variant was converted from.
    "vs source": Column("vs source", "r",
                        lambda s, n, m: "-" if m.source_top1 is None else f"{m.top1 - m.source_top1:+.2f}"),
    "agree w/ float %": Column("agree w/ float %", "r", lambda s, n, m: f"{m.agreement_with_float:.2f}"),
    "agree %": Column("agree %", "r", lambda s, n, m: f"{m.agreement_with_float:.1f}"),
    "zeros (prunable)": Column("zeros (prunable)", "r", lambda s, n, m: f"{m.zeros_prunable:.1%}"),
    "distinct/channel (max)": Column("distinct/channel (max)", "r", lambda s, n, m: str(m.max_unique_per_kernel)),
    "in / out": Column("in / out", "l", lambda s, n, m: f"{m.input.dtype} / {m.output.dtype}"),
    "ops": Column("ops", "r", lambda s, n, m: str(len(m.ops))),
}

#: What ``mobile-model build`` prints.
TERMINAL_COLUMNS = ("variant", "from", "size KiB", "gzip KiB", "top-1 %", "vs source", "agree w/ float %",
                    "zeros (prunable)", "distinct/channel (max)")
#: What the report's "Variants (host)" section shows.
REPORT_COLUMNS = ("variant, deploy in bold", "what", "size KiB, thousands", "gzip KiB, thousands", "x float32",
                  "top-1 %", "vs float", "vs source", "agree %", "zeros (prunable)", "in / out", "ops")


def variant_table(summary: BuildSummary, columns: Sequence[str]) -> Table:
    """One row per variant of ``summary``, in its order, with ``columns`` (keys of :data:`COLUMNS`).

    Raises:
        KeyError: a column that :data:`COLUMNS` does not hold.
    """
    cols = [COLUMNS[c] for c in columns]
    rows = [[c.cell(summary, name, m) for c in cols] for name, m in summary.variants.items()]
    return Table([c.header for c in cols], rows, "".join(c.align for c in cols))

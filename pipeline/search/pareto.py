"""The search's outputs: the Pareto front, its table and plot, and ``search.json``."""

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from pipeline.recipe.schema import Recipe
from pipeline.search.space import Budget
from pipeline.summary import UNVALIDATED_MARK, UNVALIDATED_NOTE
from pipeline.store.atomic import atomic_write_json, atomic_write_text
from pipeline.table import Table


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point dominates (lower latency, higher accuracy).

    ``points`` are (latency, accuracy). A point is dominated when another is at most
    as slow and at least as accurate, and strictly better in one. Returned in order
    of latency. Of exact duplicates only the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_table(rows: Sequence[Dict[str, Any]], variant: str) -> str:
    """Markdown table of every candidate looked at, fastest first.

    With block-level genotypes it names each row's kind (searched or hand-designed)
    and the highest successive-halving rung reached with its top-1.
    """
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    kinds = any(r.get("kind", "grid") != "grid" for r in rows)
    headers = (["candidate"] + (["kind"] if kinds else []) + ["est. latency ms", "memory MiB", "size KiB", "fits",
               "proxy val top-1 %"] + (["rung: epochs, val top-1 %"] if kinds else [])
               + ["Pareto", f"full {variant} test top-1 %"])
    align = "l" + ("l" if kinds else "") + "rrrlr" + ("l" if kinds else "") + "lr"
    unvalidated = False
    cells = []
    for r in rows:
        fin = r.get("finalist")
        fits = "yes" if r["fits"] else "no: " + "; ".join(r["misses"])
        latency = f(r['latency_ms'], '.3f')
        if r["latency_ms"] is not None and r.get("latency_validated") is False:
            latency += UNVALIDATED_MARK
            unvalidated = True
        rung = []
        if r.get("rungs"):
            last = max(r["rungs"], key=int)
            rung = [f"{r['rung']}: {last}, {r['rungs'][last]:.1f}"]
        elif kinds:
            rung = ["-"]
        cells.append([r["candidate"]] + ([r.get("kind", "grid")] if kinds else [])
                     + [latency, f(r["memory_mb"], ".3f"), f(r["size_kb"], ".1f"), fits,
                        f(r.get("proxy_val_top1"), ".1f")] + rung
                     + ["yes" if r.get("pareto") else "", f(fin and fin["test_top1"], ".2f")])
    lines = Table(headers, cells, align).markdown()
    if unvalidated:
        lines += ["", UNVALIDATED_NOTE]
    return "\n".join(lines)


#: How each kind of candidate is drawn: colour and label.
_KIND_STYLE = {"grid": ("tab:blue", "trained"), "searched": ("tab:blue", "searched genotypes"),
               "hand-designed": ("tab:green", "hand-designed (family x width)")}


def _scatter(ax, rows, variant: str) -> None:
    """Trained candidates and the front of each kind, finalists and the over-budget ones."""
    trained_all = [r for r in rows if r.get("proxy_val_top1") is not None]
    for kind in sorted({r.get("kind", "grid") for r in trained_all}):
        colour, label = _KIND_STYLE[kind]
        trained = [r for r in trained_all if r.get("kind", "grid") == kind]
        front = sorted((r for r in trained if r.get("pareto")), key=lambda r: r["latency_ms"])
        ax.scatter([r["latency_ms"] for r in trained], [r["proxy_val_top1"] for r in trained], c=colour,
                   marker="o" if kind != "hand-designed" else "s", label=f"{label} (proxy, val top-1)")
        if front:
            ax.step([r["latency_ms"] for r in front], [r["proxy_val_top1"] for r in front], where="post",
                    c=colour, alpha=0.5, label=f"front: {label}")
    fin = [r for r in rows if r.get("finalist")]
    ax.scatter([r["latency_ms"] for r in fin], [r["finalist"]["test_top1"] for r in fin], marker="*",
               s=160, c="tab:orange", label=f"full recipe ({variant}, test top-1)")
    for r in trained_all:
        name = r["candidate"] if r.get("kind") != "searched" else r["candidate"][:7]
        ax.annotate(name, (r["latency_ms"], r["proxy_val_top1"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    over = [r for r in rows if not r["fits"] and r["latency_ms"] is not None]
    if over:
        y0 = ax.get_ylim()[0] if trained_all else 0
        ax.scatter([r["latency_ms"] for r in over], [y0] * len(over), marker="|", s=200, c="grey",
                   label="over budget (not trained)")


def plot(rows, budget: Budget, device: str, variant: str, path: Path) -> None:
    """Top-1 against estimated latency of every candidate looked at, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _scatter(ax, rows, variant)
    ax.axvline(budget.latency_ms, c="red", ls="--", label=f"budget {budget.latency_ms:g} ms")
    lats = [r["latency_ms"] for r in rows if r["latency_ms"]]
    if lats and max(lats) > 10 * min(lats):  # over-budget giants would squash the rest
        ax.set_xscale("log")
    ax.set_xlabel(f"estimated latency on {device} (ms, {variant})")
    ax.set_ylabel("top-1 %")
    ax.set_title(f"search on {device}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_outputs(root: Path, recipe: Recipe, device: str, variant: str, budget: Budget,
                  rows, data: Mapping[str, Any]) -> None:
    """Writes ``pareto.md``, ``pareto.png`` and ``search.json`` (``data``) under ``root``."""
    table = pareto_table(rows, variant)
    head = (f"# Search: {recipe.build_name} on {device}, {variant} within {budget.text()}\n\n"
            "Latency, memory and size: one emulated run of a random-weight model per architecture "
            "(the latency model of the profile). Proxy: float top-1 on the validation split after "
            f"{recipe.search.proxy_epochs} epoch(s). Pareto: among candidates within the budget"
            + (", per kind (searched genotypes; the hand-designed grid as reference). Rung: the highest "
               "successive-halving rung reached, its epochs and top-1. Genotypes rejected by the per-block "
               "table are counted in search.json (phases), not listed" if recipe.search.space == "blocks" else "")
            + ".\n\n")
    atomic_write_text(root / "pareto.md", head + table + "\n")
    plot(rows, budget, device, variant, root / "pareto.png")
    atomic_write_json(root / "search.json", dict(data))

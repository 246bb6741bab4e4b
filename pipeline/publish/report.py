"""The build report: ``report.md``, a self-contained ``report.html``, ``plots/*.png``, and the bundle.

:func:`write_report` runs at the end of every build (``pipeline.build`` calls it
when this module exists). It reads only the build's own records: the summary
metrics, ``manifest.json`` (stage timings, the prune stage's per-layer table)
and the deploy variant's ``.tflite``. One thing is computed here: the confusion
matrix of the deploy variant on the test split, by running the ``.tflite`` on
the host (LiteRT) over ``load_dataset(recipe.data, ...)``, which is the same
split the build evaluated (the loaders are deterministic given the seed); the
build does not keep per-image predictions of its variants.

The report is one list of blocks (headings, paragraphs, tables, images) that
renders to Markdown and to HTML; the HTML embeds its plots as base64 PNG and its
style inline, so it opens anywhere without other files. Plots are made with
matplotlib's Agg canvas (no display, no pyplot state) and carry no time stamp.
"""

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pipeline.errors import DataError
from pipeline.store.atomic import atomic_write_bytes, atomic_write_text

Log = Callable[[str], None]

DEPTHWISE_NOTE = "DepthwiseConv2D kernels are never pruned (tfmot has no prunable weights for them)"


# -- document model ------------------------------------------------------------

Cell = Union[str, Tuple[str, str]]  # text, or (text, css class: "ok" | "bad" | "muted" | "good" | "wrap")


@dataclass
class Table:
    headers: List[str]
    rows: List[List[Cell]]
    align: str = ""  # one char per column, "l" or "r"; default: first left, rest right


@dataclass
class Plot:
    name: str
    title: str
    png: bytes
    caption: str


@dataclass
class Doc:
    blocks: List[Tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str):
        self.blocks.append((f"h{level}", text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: Sequence[str]):
        self.blocks.append(("ul", list(items)))

    def table(self, t: Table):
        self.blocks.append(("table", t))

    def plot(self, plot: Plot):
        self.blocks.append(("plot", plot))

    def details(self, summary: str, t: Table):
        self.blocks.append(("details", (summary, t)))


def _cell_text(c: Cell) -> str:
    return c[0] if isinstance(c, tuple) else c


def _md_cell(c: Cell) -> str:
    text = _cell_text(c).replace("|", "\\|")
    return f"**{text}**" if isinstance(c, tuple) and c[1] == "bad" and text else text


def render_markdown(doc: Doc) -> str:
    out: List[str] = []
    for kind, body in doc.blocks:
        if kind.startswith("h"):
            out += ["#" * int(kind[1:]) + " " + body, ""]
        elif kind == "p":
            out += [body, ""]
        elif kind == "ul":
            out += [f"- {item}" for item in body] + [""]
        elif kind in ("table", "details"):
            t = body if kind == "table" else body[1]
            if kind == "details":
                out += [f"{body[0]}:", ""]
            align = t.align or "l" + "r" * (len(t.headers) - 1)
            out.append("| " + " | ".join(t.headers) + " |")
            out.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out.append("")
        elif kind == "plot":
            out += [f"![{body.title}](plots/{body.name}.png)", "", f"*{body.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
           (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
           (re.compile(r"(?<![\w*])\*([^*]+)\*(?![\w*])"), r"<em>\1</em>")]


def _inline(text: str) -> str:
    s = html.escape(text, quote=False)
    for pat, rep in _INLINE:
        s = pat.sub(rep, s)
    return s


def _html_table(t: Table) -> str:
    align = t.align or "l" + "r" * (len(t.headers) - 1)
    head = "".join(f"<th class=\"{'r' if a == 'r' else 'l'}\">{_inline(h)}</th>" for h, a in zip(t.headers, align))
    rows = []
    for row in t.rows:
        cells = []
        for c, a in zip(row, align):
            cls = ("r" if a == "r" else "l") + (f" {c[1]}" if isinstance(c, tuple) else "")
            cells.append(f"<td class=\"{cls}\">{_inline(_cell_text(c))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;
 color:#1f2328;max-width:1180px;margin:24px auto;padding:0 20px;background:#fff}
h1{font-size:24px;border-bottom:2px solid #d0d7de;padding-bottom:6px}
h2{font-size:19px;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:30px}
h3{font-size:16px;margin-top:20px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;white-space:nowrap}
td.wrap{white-space:normal}
th{background:#f6f8fa;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
td.l,th.l{text-align:left}
td.ok{color:#116329;background:#dafbe1}
td.good{color:#116329}
td.bad{color:#82071e;background:#ffebe9;font-weight:600}
td.muted{color:#6e7781}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f6f8fa;padding:1px 4px;
 border-radius:4px}
figure{margin:12px 0 22px}
figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:13px;margin-top:4px}
details summary{cursor:pointer;margin:6px 0}
.banner{padding:8px 12px;border-radius:6px;margin:10px 0}
.banner.ok{background:#dafbe1;border:1px solid #4ac26b}
.banner.bad{background:#ffebe9;border:1px solid #ff8182}
"""


def render_html(doc: Doc, title: str) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for kind, body in doc.blocks:
        if kind.startswith("h"):
            parts.append(f"<{kind}>{_inline(body)}</{kind}>")
        elif kind == "p":
            if body.startswith("**PASS") or body.startswith("**FAIL"):
                cls = "ok" if body.startswith("**PASS") else "bad"
                parts.append(f"<p class=\"banner {cls}\">{_inline(body)}</p>")
            else:
                parts.append(f"<p>{_inline(body)}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in body) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(body))
        elif kind == "details":
            parts.append(f"<details><summary>{_inline(body[0])}</summary>{_html_table(body[1])}</details>")
        elif kind == "plot":
            b64 = base64.b64encode(body.png).decode("ascii")
            parts.append(f"<figure><img alt=\"{html.escape(body.title)}\" src=\"data:image/png;base64,{b64}\">"
                         f"<figcaption>{_inline(body.caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- figures -------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No "Software"/date chunks: the same figures give the same bytes.
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


VARIANT_COLORS = {"float32": "#4c72b0", "float16": "#55a868", "dynamic": "#c44e52", "int8-ptq": "#8172b2",
                  "int8-qat": "#dd8452", "int8-cqat": "#937860", "int8-pcqat": "#da8bc3"}


def _color(v: str, i: int) -> str:
    from matplotlib import colormaps

    return VARIANT_COLORS.get(v) or colormaps["tab10"](i % 10)


def plot_accuracy_vs_cost(metrics: Mapping[str, Any]) -> Plot:
    """Per device: top-1 against estimated latency (when every loaded variant has one) or
    instructions per inference; host top-1 against file size when there are no devices."""
    devices = metrics.get("devices") or {}
    variants = list(metrics["variants"])
    deploy = metrics.get("deploy_variant")
    if not devices:
        fig = _figure(6.5, 4.2)
        ax = fig.add_subplot(1, 1, 1)
        for i, v in enumerate(variants):
            m = metrics["variants"][v]
            ax.scatter(m["size_bytes"] / 1024, m["top1"], s=90 if v == deploy else 50, color=_color(v, i),
                       marker="*" if v == deploy else "o", label=v, zorder=3)
        ax.set_xlabel("file size (KiB)")
        ax.set_ylabel("top-1 on host (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("accuracy vs size (no device results in this build)", fontsize=11)
        return Plot("accuracy_vs_cost", "accuracy vs size", _png(fig),
                    "Host top-1 against file size per variant (the build ran no devices).")
    n = len(devices)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = _figure(4.3 * cols, 3.6 * rows + 0.5)
    axes_used = []
    for k, (dev, per) in enumerate(devices.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        loaded = {v: m for v, m in per.items() if m.get("loaded")}
        use_latency = bool(loaded) and all(m.get("latency_ms") for m in loaded.values())
        points: List[Tuple[float, float, str]] = []
        for i, v in enumerate(variants):
            m = loaded.get(v)
            if m is None:
                continue
            x = m["latency_ms"] if use_latency else (m.get("instructions_per_inference") or 0) / 1e6
            y = m.get("top1")
            if y is None:
                y = metrics["variants"][v]["top1"]
            ax.scatter(x, y, s=110 if v == deploy else 45, color=_color(v, i), marker="*" if v == deploy else "o",
                       label=v, zorder=3, edgecolors="black" if v == deploy else "none", linewidths=0.6)
            points.append((x, y, v))
        _label_points(ax, points)
        failed = [f"{v} ({m.get('load_error_op') or 'error'}"
                  + (f" v{m['load_error_op_version']})" if m.get("load_error_op") else ")")
                  for v, m in per.items() if not m.get("loaded")]
        if failed:
            ax.text(0.02, 0.02, "does not load:\n" + "\n".join(failed), transform=ax.transAxes, fontsize=7,
                    color="#82071e", va="bottom")
        ax.set_xlabel("estimated latency (ms)" if use_latency else "M instructions / inference (emulated)",
                      fontsize=9)
        ax.set_ylabel("top-1 on device (%)", fontsize=9)
        ax.set_title(dev, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        axes_used.append(ax)
    handles, labels = {}, []
    for ax in axes_used:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="upper center", ncol=len(labels), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return Plot("accuracy_vs_cost", "accuracy vs cost per device", _png(fig),
                f"Top-1 on each emulated device against estimated latency where the device profile has a "
                f"fitted cost model, else against guest instructions per inference (deterministic). "
                f"Star: the deploy variant ({deploy}).")


def _label_points(ax, points: List[Tuple[float, float, str]]) -> None:
    """Names every point; points closer than 3% of the axis span share one label (variants
    often coincide: float32/float16, int8-ptq/int8-qat), and neighbouring labels alternate
    above and below so that they do not overlap."""
    if not points:
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xspan, yspan = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: List[List[Tuple[float, float, str]]] = []
    for p in sorted(points):
        g = next((g for g in groups if abs(g[0][0] - p[0]) < 0.03 * xspan and abs(g[0][1] - p[1]) < 0.03 * yspan),
                 None)
        if g is None:
            groups.append([p])
        else:
            g.append(p)
    for k, g in enumerate(groups):
        x, y = g[0][0], g[0][1]
        ax.annotate(", ".join(p[2] for p in g), (x, y), textcoords="offset points",
                    xytext=(0, 8 if k % 2 == 0 else -14), ha="center", fontsize=7, color="#333333")
    ax.margins(x=0.18, y=0.2)


def plot_sizes(metrics: Mapping[str, Any]) -> Plot:
    variants = list(metrics["variants"])
    size = np.array([metrics["variants"][v]["size_bytes"] / 1024 for v in variants])
    gz = np.array([metrics["variants"][v]["gzip_bytes"] / 1024 for v in variants])
    fig = _figure(7.5, 0.55 * len(variants) + 1.4)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(variants))
    ax.barh(y - 0.2, size, height=0.38, color="#4c72b0", label="file")
    ax.barh(y + 0.2, gz, height=0.38, color="#dd8452", label="gzip -9")
    for yi, s, g in zip(y, size, gz):
        ax.text(s, yi - 0.2, f" {s:,.1f}", va="center", fontsize=8)
        ax.text(g, yi + 0.2, f" {g:,.1f}", va="center", fontsize=8)
    ax.set_yticks(y, variants, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("KiB")
    ax.set_xlim(0, max(size.max(), gz.max()) * 1.18)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("size per variant", fontsize=11)
    return Plot("sizes", "size per variant", _png(fig),
                "File size and gzip size (level 9) per variant. Pruned zeros only pay off after compression.")


def sparsity_rows(root: Path, manifest: Mapping[str, Any], metrics: Mapping[str, Any]) -> Tuple[List[Dict], str]:
    """Per-layer kernel rows and where they come from: the prune stage's table when the
    build pruned, else the deploy variant's .tflite kernels."""
    prune = (manifest.get("stages") or {}).get("prune") or {}
    layers = (prune.get("metrics") or {}).get("layers")
    if layers:
        return layers, "prune stage (Keras model after strip_pruning)"
    from pipeline.tflite.reader import PRUNABLE_OPS, read_tflite, weight_kernels

    variant = metrics["deploy_variant"]
    kinds = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D", "FULLY_CONNECTED": "Dense"}
    rows = []
    for op, name, arr in weight_kernels(read_tflite(root / "tflite" / f"{variant}.tflite")):
        rows.append({"layer": short_tensor_name(name), "kind": kinds[op], "shape": list(arr.shape), "params": int(arr.size),
                     "zeros": float(np.count_nonzero(arr == 0) / arr.size), "pruned": False,
                     "note": "" if op in PRUNABLE_OPS else DEPTHWISE_NOTE})
    return rows, f"{variant}.tflite kernels (the build did not prune)"


def short_tensor_name(name: str) -> str:
    """The layer name inside a converter tensor name.

    ``"m/quant_block1_project_conv/Conv2D;m/.../FakeQuant..."`` -> ``"block1_project_conv"``: the
    converter joins the names of fused ops with ";"; the kernel's own op ends in
    Conv2D, depthwise or MatMul, and QAT layers carry a ``quant_`` prefix.
    """
    parts = name.split(";")
    main = next((p for p in parts if p.rsplit("/", 1)[-1] in ("Conv2D", "depthwise", "MatMul")), parts[0])
    pieces = main.split("/")
    layer = pieces[-2] if len(pieces) >= 2 else pieces[0]
    return layer[len("quant_"):] if layer.startswith("quant_") else layer


def plot_sparsity(rows: List[Dict], source: str, target: Optional[float]) -> Plot:
    kind_color = {"Conv2D": "#4c72b0", "Dense": "#55a868", "DepthwiseConv2D": "#b0b0b0"}
    n = len(rows)
    fig = _figure(8.5, 0.17 * n + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(n)
    zeros = [r["zeros"] for r in rows]
    colors = [kind_color.get(r["kind"], "#999999") for r in rows]
    hatches = ["//" if r["kind"] == "DepthwiseConv2D" else "" for r in rows]
    bars = ax.barh(y, zeros, color=colors, height=0.75)
    for b, hch in zip(bars, hatches):
        b.set_hatch(hch)
    for yi, r in zip(y, rows):
        if r["kind"] == "DepthwiseConv2D":
            ax.text(max(r["zeros"], 0.0) + 0.01, yi, "never pruned", va="center", fontsize=6, color="#6e7781")
    ax.set_yticks(y, [r["layer"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of zero weights")
    if target:
        ax.axvline(target, color="#c44e52", ls="--", lw=1, label=f"target {target:.0%}")
    from matplotlib.patches import Patch

    handles = [Patch(color=kind_color["Conv2D"], label="Conv2D"), Patch(color=kind_color["Dense"], label="Dense"),
               Patch(facecolor=kind_color["DepthwiseConv2D"], hatch="//", label="DepthwiseConv2D (never pruned)")]
    if target:
        handles.append(ax.get_legend_handles_labels()[0][0])
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"per-layer sparsity: {source}", fontsize=10)
    return Plot("sparsity", "per-layer sparsity", _png(fig),
                f"Fraction of zeros per kernel, from the {source}. {DEPTHWISE_NOTE}: they stay dense "
                "(hatched grey bars).")


def plot_confusion(cm: np.ndarray, labels: Sequence[str], variant: str, top1: float) -> Plot:
    n = len(labels)
    size = max(4.5, 0.45 * n + 2.2)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    totals = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7 if n > 12 else 8,
                            color="white" if frac[i, j] > 0.55 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{variant}: test split, top-1 {top1:.2f}% ({int(cm.sum())} images)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    return Plot("confusion", "confusion matrix", _png(fig),
                f"Confusion matrix of the deploy variant ({variant}) on the whole test split, run on the host "
                "runtime (counts in cells, colour = fraction of the row).")


def confusion_matrix(recipe, root: Path, variant: str) -> Tuple[np.ndarray, float]:
    """Runs ``variant``'s .tflite over the recipe's test split on the host.

    Returns:
        (counts [true, predicted], top-1 percent).

    Raises:
        DataError: the data set cannot be loaded.
    """
    from pipeline.data import load_dataset
    from pipeline.tflite.host import run_tflite

    splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed)
    probs = run_tflite(root / "tflite" / f"{variant}.tflite", splits.x_test)
    pred = np.argmax(probs, axis=1)
    n = len(splits.labels)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (splits.y_test.astype(np.int64), pred), 1)
    return cm, float(np.mean(pred == splits.y_test) * 100.0)


# -- the report ----------------------------------------------------------------


def _f(value: Optional[float], fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def _read_manifest(root: Path) -> Dict[str, Any]:
    p = root / "manifest.json"
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def build_document(recipe, root: Path, metrics: Mapping[str, Any], manifest: Mapping[str, Any],
                   bundle: Mapping[str, Any], plots: Mapping[str, Plot], confusion: Optional[Tuple[np.ndarray, float]],
                   confusion_error: Optional[str], sparsity: Tuple[List[Dict], str]) -> Doc:
    from pipeline.export.variants import VARIANTS

    r = recipe
    doc = Doc()
    name = metrics["recipe"]
    deploy = metrics["deploy_variant"]
    variants = metrics["variants"]
    devices = metrics.get("devices") or {}
    budgets = metrics.get("budgets") or []
    doc.h(1, f"mobile-model build report: {name}")
    counts = (manifest.get("data") or {}).get("counts") or {}
    doc.p(f"{r.model.family} width {r.model.alpha:g}, input {'x'.join(map(str, r.model.input_shape))}, "
          f"{metrics.get('params', 0):,} parameters, {metrics.get('macs', 0):,} MACs. Data `{r.data.dataset}`: "
          f"train {counts.get('train', '?')}, val {counts.get('val', '?')}, test {counts.get('test', '?')} images, "
          f"{len(metrics.get('labels') or [])} classes. Deploy variant: **{deploy}**. Build directory `{root}`.")
    if r.smoke_form:
        doc.p("*Smoke build: tiny data and one epoch, for tests; the figures say nothing about model quality.*")
    missed = [b for b in budgets if not b["ok"]]
    not_loading = [(d, v) for d, per in devices.items() for v, m in per.items() if not m.get("loaded")]
    if missed:
        doc.p(f"**FAIL: {len(missed)} of {len(budgets)} budget(s) missed**: "
              + ", ".join(f"{b['budget']}[{b['subject']}]" for b in missed) + ".")
    else:
        doc.p(f"**PASS: all {len(budgets)} budget(s) met**." if budgets else "**PASS: the recipe sets no budget**.")
    if not_loading:
        doc.p(f"{len(not_loading)} device x variant pair(s) do not load: "
              + ", ".join(f"{v} on {d}" for d, v in not_loading) + " (see Devices).")

    doc.h(2, "Variants (host)")
    base = (variants.get("float32") or {}).get("size_bytes")
    rows = []
    for v, m in variants.items():
        drop = None if metrics.get("float_top1") is None else m["top1"] - metrics["float_top1"]
        rows.append([f"**{v}**" if v == deploy else v,
                     (VARIANTS.get(v).description if v in VARIANTS.names() else "", "wrap"),
                     f"{m['size_bytes'] / 1024:,.1f}", f"{m['gzip_bytes'] / 1024:,.1f}",
                     f"{m['size_bytes'] / base:.2f}" if base else "-",
                     f"{m['top1']:.2f}", _f(drop, "+.2f"), f"{m['agreement_with_float']:.1f}",
                     f"{m['zeros_prunable']:.1%}", f"{m['input']['dtype']} / {m['output']['dtype']}",
                     str(len(m.get("ops") or []))])
    doc.table(Table(["variant", "what", "size KiB", "gzip KiB", "x float32", "top-1 %", "vs float",
                     "agree %", "zeros (prunable)", "in / out", "ops"], rows, "llrrrrrrrlr"))
    doc.p(f"Float Keras top-1: {_f(metrics.get('float_top1'), '.2f')}% on the test split "
          f"({next(iter(variants.values())).get('samples', '?')} images).")

    doc.h(2, "Budgets")
    if budgets:
        rows = []
        for b in budgets:
            op = "<=" if b["budget"].startswith("max") else ">="
            rows.append([b["budget"], b["subject"], f"{op} {b['limit']:g} {b['unit']}",
                         "not measured" if b["measured"] is None else f"{b['measured']:.4g} {b['unit']}",
                         ("ok", "ok") if b["ok"] else ("MISSED", "bad")])
        doc.table(Table(["budget", "subject", "limit", "measured", "result"], rows, "llrrl"))
    else:
        doc.p("The recipe sets no budget.")

    doc.h(2, "Devices (emulated ARM)")
    if devices:
        from pipeline.publish.bundle import _profile

        profs = []
        for dev in devices:
            p = _profile(dev)
            profs.append(f"**{dev}**: {p.description}; emulated core `{p.qemu_cpu}`, runtime "
                         f"{p.runtime} {p.runtime_version}" if p else f"**{dev}**: (profile no longer registered)")
        doc.ul(profs)
        rows, failures = [], []
        for dev, per in devices.items():
            for v, m in per.items():
                if not m.get("loaded"):
                    op = f"{m['load_error_op']} v{m['load_error_op_version']}" if m.get("load_error_op") else "error"
                    err = ((m.get("load_error") or "").strip().splitlines() or [""])[0]
                    failures.append(f"{v} on {dev} ({m.get('runtime')}): {err}")
                    rows.append([dev, v, (f"no: {op}", "bad"), "", "", "", "", "", "", ""])
                    continue
                fits = m.get("fits_ram")
                rows.append([dev, f"**{v}**" if v == deploy else v, ("yes", "ok"), _f(m.get("top1"), ".1f"),
                             _f(m.get("instructions_per_inference"), ",.3f", 1e-6), _f(m.get("latency_ms"), ".2f"),
                             _f(m.get("exact_fraction"), ".0%"),
                             _f(m.get("max_abs_diff"), ".2g"), _f(m.get("peak_memory_bytes"), ".2f", 1 / 2 ** 20),
                             "-" if fits is None else ("yes", "ok") if fits else ("no", "bad")])
        doc.table(Table(["device", "variant", "loads", "top-1 %", "M instr / inference", "est. latency ms",
                         "bit-exact vs host", "max abs diff", "memory MiB", "fits RAM"], rows, "lllrrrrrrl"))
        if failures:
            doc.p("Load failures (first line of the runtime's error):")
            doc.ul(failures)
        samples = {m.get("samples") for per in devices.values() for m in per.values() if m.get("samples")}
        doc.p(f"Each pair ran on the device's real ARM runtime under qemu-aarch64 over "
              f"{'/'.join(map(str, sorted(samples))) or '?'} test images. Instructions per inference are "
              "deterministic (the basis of the CI gate); estimated latency needs a fitted cost model in the "
              "device profile and is blank without one; wall time under emulation is not latency.")
    else:
        doc.p("This build ran no emulated devices (`--no-devices`, or no `devices.targets` in the recipe).")

    doc.h(2, "Plots")
    for key in ("accuracy_vs_cost", "sizes", "sparsity", "confusion"):
        if key in plots:
            doc.plot(plots[key])
    if confusion_error:
        doc.p(f"No confusion matrix: {confusion_error}")

    layers, source = sparsity
    doc.h(2, "Per-layer sparsity")
    prune = ((manifest.get("stages") or {}).get("prune") or {}).get("metrics") or {}
    if prune:
        doc.p(f"Zeros in Conv2D/Dense kernels after pruning: {prune.get('sparsity', 0):.1%} "
              f"(target {prune.get('target_sparsity', 0):.0%}); {prune.get('sparsity_all_kernels', 0):.1%} "
              f"including depthwise. {DEPTHWISE_NOTE}. In the deploy file ({deploy}): "
              f"{variants[deploy]['zeros_prunable']:.1%} of prunable kernels are zero.")
    else:
        doc.p(f"The recipe does not prune; the table reads the kernels of {source}. {DEPTHWISE_NOTE}.")
    rows = [[r_["layer"], r_["kind"], "x".join(map(str, r_["shape"])), f"{r_['params']:,}", f"{r_['zeros']:.1%}",
             "yes" if r_["pruned"] else (("no (never pruned)", "muted") if r_["kind"] == "DepthwiseConv2D" else "no")]
            for r_ in layers]
    doc.details(f"{len(layers)} kernels ({source})",
                Table(["layer", "kind", "shape", "params", "zeros", "pruned"], rows, "llrrrl"))

    if confusion is not None:
        cm, top1 = confusion
        labels = list(metrics.get("labels") or [str(i) for i in range(len(cm))])
        doc.h(2, f"Confusion matrix ({deploy}, test split)")
        rows = []
        for i, lab in enumerate(labels):
            total = int(cm[i].sum())
            recall = cm[i, i] / total if total else 0.0
            rows.append([lab] + [(str(int(c)), "good") if j == i and c else str(int(c)) if c else ("0", "muted")
                                 for j, c in enumerate(cm[i])] + [f"{recall:.0%}"])
        doc.table(Table(["true \\ predicted"] + labels + ["recall"], rows))
        doc.p(f"Top-1 {top1:.2f}% over {int(cm.sum())} images (host LiteRT run of `tflite/{deploy}.tflite`).")

    doc.h(2, "Bundle")
    meta = bundle["metadata"]
    doc.p(f"`bundle/` holds the deploy variant **{deploy}** as `model.tflite`, ready to flash; "
          "check it with `cd bundle && sha256sum -c SHA256SUMS`.")
    doc.table(Table(["file", "bytes", "sha256"],
                    [[f"`{n}`", f"{info['size_bytes']:,}", f"`{info['sha256'][:16]}...`"]
                     for n, info in sorted(bundle["files"].items())], "lrl"))
    inp = meta["input"]
    q, qi = inp["quantization"], inp.get("quantized_inside")
    doc.ul([f"Input: {inp['shape']} {inp['dtype']} NHWC {inp['color']}, {inp['normalization']['formula']} "
            f"(float in [0, 1])" + (f"; quantization scale {q['scale']}, zero point {q['zero_point']}" if q else "")
            + (f"; quantized inside to {qi['dtype']} (scale {qi['scale']}, zero point {qi['zero_point']})"
               if not q and qi else ""),
            f"Ops: {', '.join(o['op'] + ' v' + str(o['version']) for o in meta['ops'])}",
            f"Runtimes: {meta['runtimes']['note']}",
            f"TFLite metadata: not embedded ({meta['embedded_tflite_metadata_note']})"])

    doc.h(2, "Stages")
    ran = set(metrics.get("stages_run") or [])
    stages = manifest.get("stages") or {}
    rows = [[s, f"{rec.get('wall_s', 0):.1f}", "ran" if s in ran else ("cached", "muted"), rec.get("finished_at", "")]
            for s, rec in stages.items() if isinstance(rec, dict)]
    if rows:
        doc.details(f"{len(rows)} stages, {len(ran)} run in this build, "
                    f"{sum(rec.get('wall_s', 0) for rec in stages.values() if isinstance(rec, dict)):.0f} s recorded",
                    Table(["stage", "wall s", "this build", "finished"], rows, "lrll"))
    versions = next((rec.get("versions") for rec in stages.values() if isinstance(rec, dict) and rec.get("versions")),
                    None)
    if versions:
        doc.p("Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return doc


def _ordered(mapping: Mapping[str, Any], order: Sequence[str]) -> Dict[str, Any]:
    keys = [k for k in order if k in mapping] + [k for k in mapping if k not in order]
    return {k: mapping[k] for k in keys}


def in_recipe_order(recipe, metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """``metrics`` with variants and devices in the recipe's order (summary.json sorts its keys)."""
    out = dict(metrics)
    variants = list(recipe.convert.variants)
    out["variants"] = _ordered(metrics["variants"], variants)
    out["devices"] = {dev: _ordered(per, variants)
                      for dev, per in _ordered(metrics.get("devices") or {}, recipe.devices.targets).items()}
    return out


def write_report(recipe, root: Path, metrics: Mapping[str, Any], log: Log = print) -> List[Path]:
    """Writes the bundle, ``plots/*.png``, ``report.md`` and ``report.html`` of a build.

    Args:
        recipe: the build's recipe.
        root: the build directory.
        metrics: the build summary (what ``summary.json`` holds).
        log: progress output.

    Returns:
        The paths written (report.md, report.html, the plots, bundle/).

    Raises:
        ModelFileError: the deploy variant's .tflite is missing or corrupt.
    """
    root = Path(root)
    metrics = in_recipe_order(recipe, metrics)
    manifest = _read_manifest(root)
    bundle = write_bundle_for(recipe, root, metrics, log)
    deploy = metrics["deploy_variant"]
    confusion, confusion_error = None, None
    try:
        confusion = confusion_matrix(recipe, root, deploy)
    except DataError as exc:  # e.g. a folder data set moved away before `mobile-model report`
        confusion_error = f"the test split could not be loaded ({exc})"
    plots: Dict[str, Plot] = {}
    plots["accuracy_vs_cost"] = plot_accuracy_vs_cost(metrics)
    plots["sizes"] = plot_sizes(metrics)
    sparsity = sparsity_rows(root, manifest, metrics)
    prune = ((manifest.get("stages") or {}).get("prune") or {}).get("metrics") or {}
    if sparsity[0]:
        plots["sparsity"] = plot_sparsity(sparsity[0], sparsity[1], prune.get("target_sparsity"))
    if confusion is not None:
        plots["confusion"] = plot_confusion(confusion[0], metrics.get("labels") or [], deploy, confusion[1])
    doc = build_document(recipe, root, metrics, manifest, bundle, plots, confusion, confusion_error, sparsity)
    written = []
    for plot in plots.values():
        path = root / "plots" / f"{plot.name}.png"
        atomic_write_bytes(path, plot.png)
        written.append(path)
    atomic_write_text(root / "report.md", render_markdown(doc))
    atomic_write_text(root / "report.html", render_html(doc, f"mobile-model report: {metrics['recipe']}"))
    written = [root / "report.md", root / "report.html"] + written + [Path(bundle["path"])]
    log(f"[report] {root / 'report.html'} ({len(plots)} plots), {root / 'report.md'}")
    return written


def write_bundle_for(recipe, root: Path, metrics: Mapping[str, Any], log: Log) -> Dict[str, Any]:
    from pipeline.publish.bundle import write_bundle

    return write_bundle(recipe, root, metrics, log)


def rewrite_report(build_dir: "str | Path", log: Log = print) -> List[Path]:
    """Re-renders the report and bundle of an existing build directory.

    Raises:
        MobileModelError: the directory is not a finished build, or its recipe is invalid.
    """
    import yaml

    from pipeline.gate.compare import UnusableInputError
    from pipeline.recipe.schema import Recipe
    from pipeline.store.manifest import verify_recorded_models

    root = Path(build_dir)
    if not (root / "summary.json").is_file():
        raise UnusableInputError(f"{root}: not a finished build (no summary.json)")
    if not (root / "recipe.yaml").is_file():
        raise UnusableInputError(f"{root}: not a build (no recipe.yaml)")
    try:
        metrics = json.loads((root / "summary.json").read_text())
        recipe = Recipe.from_dict(yaml.safe_load((root / "recipe.yaml").read_text()))
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UnusableInputError(f"{root}: unreadable summary.json or recipe.yaml ({exc})") from None
    if not isinstance(metrics, dict) or "variants" not in metrics or "deploy_variant" not in metrics:
        raise UnusableInputError(f"{root}/summary.json: not a build summary (no 'variants'/'deploy_variant')")
    if not (root / "manifest.json").is_file():
        raise UnusableInputError(f"{root}: not a build (no manifest.json to check its models against)")
    # The report runs the build's models in process: only the files its manifest records.
    verify_recorded_models(root)
    return write_report(recipe, root, metrics, log)


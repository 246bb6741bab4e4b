"""The report's figures, drawn with matplotlib's Agg canvas.

No display and no pyplot state; PNGs carry no time stamp or software chunk, so the
same figures give the same bytes.
"""

import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.publish.document import Plot
from pipeline.publish.records import DEPTHWISE_NOTE, Confusion, SparsityRow, StageCurve
from pipeline.summary import UNVALIDATED_MARK, BuildSummary, DeviceSummary

VARIANT_COLORS = {"float32": "#4c72b0", "float16": "#55a868", "dynamic": "#c44e52", "int8-ptq": "#8172b2",
                  "int8-qat": "#dd8452", "int8-cqat": "#937860", "int8-pcqat": "#da8bc3"}

Point = Tuple[float, float, str]


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


def _color(v: str, i: int):
    from matplotlib import colormaps

    return VARIANT_COLORS.get(v) or colormaps["tab10"](i % 10)


def plot_accuracy_vs_cost(summary: BuildSummary) -> Plot:
    """Per device: top-1 against estimated latency (when every loaded variant has one) or
    instructions per inference; host top-1 against file size when there are no devices."""
    if not summary.devices:
        return _plot_accuracy_vs_size(summary)
    deploy = summary.deploy_variant
    n = len(summary.devices)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = _figure(4.3 * cols, 3.6 * rows + 0.5)
    axes = [_device_axes(fig.add_subplot(rows, cols, k + 1), summary, dev, per)
            for k, (dev, per) in enumerate(summary.devices.items())]
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="upper center", ncol=len(labels), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    note = summary.latency_note
    return Plot("accuracy_vs_cost", "accuracy vs cost per device", _png(fig),
                "Top-1 on each emulated device against estimated latency where the device has a "
                "latency model, else against guest instructions per inference (deterministic). "
                f"Star: the deploy variant ({deploy})." + (f" {note}" if note else ""))


def _plot_accuracy_vs_size(summary: BuildSummary) -> Plot:
    deploy = summary.deploy_variant
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for i, (v, m) in enumerate(summary.variants.items()):
        ax.scatter(m.size_bytes / 1024, m.top1, s=90 if v == deploy else 50, color=_color(v, i),
                   marker="*" if v == deploy else "o", label=v, zorder=3)
    ax.set_xlabel("file size (KiB)")
    ax.set_ylabel("top-1 on host (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("accuracy vs size (no device results in this build)", fontsize=11)
    return Plot("accuracy_vs_cost", "accuracy vs size", _png(fig),
                "Host top-1 against file size per variant (the build ran no devices).")


def _device_axes(ax, summary: BuildSummary, dev: str, per: Dict[str, DeviceSummary]):
    """One device's panel: a point per variant that loads, the others listed in red."""
    deploy = summary.deploy_variant
    loaded = {v: m for v, m in per.items() if m.loaded}
    use_latency = bool(loaded) and all(m.latency_ms for m in loaded.values())
    points: List[Point] = []
    for i, v in enumerate(summary.variants):
        m = loaded.get(v)
        if m is None:
            continue
        x = m.latency_ms if use_latency else (m.instructions_per_inference or 0) / 1e6
        y = m.top1 if m.top1 is not None else summary.variants[v].top1
        ax.scatter(x, y, s=110 if v == deploy else 45, color=_color(v, i), marker="*" if v == deploy else "o",
                   label=v, zorder=3, edgecolors="black" if v == deploy else "none", linewidths=0.6)
        points.append((x, y, v + (UNVALIDATED_MARK if use_latency and m.latency.unvalidated else "")))
    _label_points(ax, points)
    failed = [f"{v} ({m.load_error_op or 'error'}" + (f" v{m.load_error_op_version})" if m.load_error_op else ")")
              for v, m in per.items() if not m.loaded]
    if failed:
        ax.text(0.02, 0.02, "does not load:\n" + "\n".join(failed), transform=ax.transAxes, fontsize=7,
                color="#82071e", va="bottom")
    ax.set_xlabel("estimated latency (ms)" if use_latency else "M instructions / inference (emulated)", fontsize=9)
    ax.set_ylabel("top-1 on device (%)", fontsize=9)
    ax.set_title(dev, fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    return ax


def _label_points(ax, points: List[Point]) -> None:
    """Names every point; points closer than 3% of the axis span share one label (variants
    often coincide: float32/float16, int8-ptq/int8-qat), and neighbouring labels alternate
    above and below so that they do not overlap."""
    if not points:
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xspan, yspan = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: List[List[Point]] = []
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


def plot_sizes(summary: BuildSummary) -> Plot:
    """File and gzip size per variant, as horizontal bars."""
    variants = list(summary.variants)
    size = np.array([summary.variants[v].size_bytes / 1024 for v in variants])
    gz = np.array([summary.variants[v].gzip_bytes / 1024 for v in variants])
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


def plot_sparsity(rows: Sequence[SparsityRow], source: str, target: Optional[float]) -> Plot:
    """Fraction of zeros per kernel; depthwise kernels hatched grey (never pruned)."""
    from matplotlib.patches import Patch

    kind_color = {"Conv2D": "#4c72b0", "Dense": "#55a868", "DepthwiseConv2D": "#b0b0b0"}
    n = len(rows)
    fig = _figure(8.5, 0.17 * n + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(n)
    bars = ax.barh(y, [r.zeros for r in rows], color=[kind_color.get(r.kind, "#999999") for r in rows], height=0.75)
    for b, r in zip(bars, rows):
        b.set_hatch("//" if r.kind == "DepthwiseConv2D" else "")
    for yi, r in zip(y, rows):
        if r.kind == "DepthwiseConv2D":
            ax.text(max(r.zeros, 0.0) + 0.01, yi, "never pruned", va="center", fontsize=6, color="#6e7781")
    ax.set_yticks(y, [r.layer for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of zero weights")
    if target:
        ax.axvline(target, color="#c44e52", ls="--", lw=1, label=f"target {target:.0%}")
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


def plot_confusion(confusion: Confusion, labels: Sequence[str], variant: str) -> Plot:
    """The confusion matrix: counts in cells, colour = fraction of the true class."""
    cm, top1 = confusion.counts, confusion.top1
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


def plot_learning_curves(curves: Sequence[StageCurve]) -> Plot:
    """Per training stage (one row each): train and validation loss, and top-1, per epoch;
    the best epoch by validation top-1 is marked."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9.0, 2.6 * len(curves) + 0.4)
    for row, c in enumerate(curves):
        epochs = np.arange(1, c.epochs + 1)
        for col, (train, val, what) in enumerate(((c.loss, c.val_loss, "loss"),
                                                  (c.accuracy, c.val_accuracy, "top-1 %"))):
            ax = fig.add_subplot(len(curves), 2, 2 * row + col + 1)
            scale = 100.0 if col else 1.0
            ax.plot(epochs, np.array(train) * scale, "o-", ms=3, color="#4c72b0", label="train")
            if val:
                ax.plot(epochs[:len(val)], np.array(val) * scale, "o-", ms=3, color="#dd8452", label="validation")
            if c.best_epoch:
                ax.axvline(c.best_epoch, color="grey", ls=":", lw=1, label=f"best epoch ({c.best_epoch})")
            ax.set_title(f"{c.stage}: {what}", fontsize=10)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if row == 0 and col == 1:
                ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return Plot("learning_curves", "learning curves", _png(fig),
                "Train and validation loss and top-1 per epoch of every training stage (train: float "
                "training; then the fine-tunes); the dotted line marks the best epoch by validation top-1. "
                "Train figures are on augmented images.")

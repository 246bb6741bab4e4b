"""The sections of the build report, as :class:`pipeline.publish.document.Doc` blocks.

Each ``_section`` function appends one ``##`` section; :func:`build_document`
calls them in reading order. They only format figures gathered beforehand
(:class:`ReportInputs`): the summary, the manifest's record, the bundle's files,
the confusion matrix of the saved predictions.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

from pipeline.publish.bundle import Bundle
from pipeline.publish.document import Cell, Doc, Plot, Table
from pipeline.publish.variant_table import REPORT_COLUMNS, variant_table
from pipeline.publish.records import (DEPTHWISE_NOTE, BuildRecord, ChannelFigures, Confusion, SparsityRow,
                                      StageTiming, device_profile, most_confused)
from pipeline.recipe.targets import profile_of
from pipeline.summary import (LATENCY_ALIGN, LATENCY_HEADERS, MEASURED_HEADER, UNVALIDATED_MARK, UNVALIDATED_NOTE,
                              BudgetResult, BuildSummary, DeviceSummary, measured_cell)

PLOT_ORDER = ("accuracy_vs_cost", "sizes", "sparsity", "confusion")


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows, read before rendering."""

    recipe: object
    root: Path
    summary: BuildSummary
    record: BuildRecord
    bundle: Bundle
    sparsity: Tuple[List[SparsityRow], str]  # rows, where they come from
    confusion: Optional[Confusion]
    confusion_error: Optional[str]  # why there is no confusion matrix


def _f(value: Optional[float], fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


def build_document(inputs: ReportInputs, plots: Mapping[str, Plot]) -> Doc:
    """The whole report: verdict, variants, budgets, devices, plots, sparsity, confusion, bundle, stages."""
    doc = Doc()
    _overview(doc, inputs)
    _variants(doc, inputs.summary)
    _budgets(doc, inputs.summary)
    _devices(doc, inputs.summary)
    if inputs.record.channels is not None:
        _channels(doc, inputs.record.channels)
    _training(doc, inputs, plots.get("learning_curves"))
    doc.h(2, "Plots")
    for key in PLOT_ORDER:
        if key in plots:
            doc.plot(plots[key])
    if inputs.confusion_error:
        doc.p(f"No confusion matrix: {inputs.confusion_error}")
    _sparsity(doc, inputs)
    if inputs.confusion is not None:
        _confusion(doc, inputs.summary, inputs.confusion)
    _bundle(doc, inputs.summary.deploy_variant, inputs.bundle)
    _stages(doc, inputs.summary, inputs.record)
    return doc


def _overview(doc: Doc, inputs: ReportInputs) -> None:
    r, s, counts = inputs.recipe, inputs.summary, inputs.record.counts
    doc.h(1, f"mobile-model build report: {s.recipe}")
    doc.p(f"{r.model.family} width {r.model.alpha:g}, input {'x'.join(map(str, r.model.input_shape))}, "
          f"{s.params:,} parameters, {s.macs:,} MACs. Data `{r.data.dataset}`: "
          f"train {counts.get('train', '?')}, val {counts.get('val', '?')}, test {counts.get('test', '?')} images, "
          f"{len(s.labels)} classes. Deploy variant: **{s.deploy_variant}**. Build directory `{inputs.root}`.")
    if r.smoke_form:
        doc.p("*Smoke build: tiny data and one epoch, for tests; the figures say nothing about model quality.*")
    missed = [b for b in s.budgets if not b.ok]
    not_loading = [(d, v) for d, per in s.devices.items() for v, m in per.items() if not m.loaded]
    if missed:
        doc.p(f"**FAIL: {len(missed)} of {len(s.budgets)} budget(s) missed**: "
              + ", ".join(f"{b.budget}[{b.subject}]" for b in missed) + ".")
    else:
        doc.p(f"**PASS: all {len(s.budgets)} budget(s) met**." if s.budgets else "**PASS: the recipe sets no budget**.")
    if not_loading:
        doc.p(f"{len(not_loading)} device x variant pair(s) do not load: "
              + ", ".join(f"{v} on {d}" for d, v in not_loading) + " (see Devices).")


def _variants(doc: Doc, s: BuildSummary) -> None:
    doc.h(2, "Variants (host)")
    doc.table(variant_table(s, REPORT_COLUMNS))
    doc.p(f"Float Keras top-1: {_f(s.float_top1, '.2f')}% on the test split "
          f"({next(iter(s.variants.values())).samples} images).")
    if s.float_choice:  # transfer.choose: best
        doc.p(s.float_choice.line())


STOPPED = {"fixed": "fixed length", "patience": "no improvement (patience)", "max_epochs": "max_epochs reached",
           "time_budget": "time budget reached", "": "-"}


def under_trained_warning(record: BuildRecord) -> Optional[str]:
    """The warning line when float training ended while validation top-1 was still rising, or None."""
    curve = next((c for c in record.curves if c.stage == "train"), None)
    if curve is None or not curve.still_learning:
        return None
    if curve.stopped == "time_budget":
        return (f"**Warning: the float model's validation top-1 was still rising in its last epoch ({curve.epochs}), "
                "where `train.time_budget_s` stopped training; it is probably under-trained.** A larger "
                "`train.time_budget_s` (or none) trains longer.")
    return (f"**Warning: the float model's validation top-1 was still rising in its last epoch ({curve.epochs}); "
            "it is probably under-trained.** Train longer: `train.epochs: auto` with a larger `train.max_epochs` "
            "(or `train.time_budget_s`), or a larger fixed `train.epochs`.")


def _training(doc: Doc, inputs: ReportInputs, curves_plot: Optional[Plot]) -> None:
    record = inputs.record
    doc.h(2, "Training")
    if not record.curves:
        doc.p("The manifest holds no per-epoch history of any training stage.")
    else:
        rows = []
        for c in record.curves:
            val = max(c.val_accuracy) if c.val_accuracy else None
            rows.append([c.stage, str(c.epochs), "auto" if c.auto else "fixed", str(c.best_epoch or "-"),
                         STOPPED.get(c.stopped, c.stopped), _f(c.accuracy[-1] if c.accuracy else None, ".2f", 100),
                         _f(val, ".2f", 100), "yes" if c.restored else "no"])
        doc.table(Table(["stage", "epochs", "length", "best epoch", "stopped by", "last train top-1 %",
                         "best val top-1 %", "best weights restored"], rows, "lrlrlrrl"))
        warning = under_trained_warning(record)
        if warning:
            doc.p(warning)
    if curves_plot is not None:
        doc.plot(curves_plot)
    _class_counts(doc, record)


def _class_counts(doc: Doc, record: BuildRecord) -> None:
    counts = record.class_counts
    if not counts or "train" not in counts:
        return
    labels = list(counts["train"])
    splits = [s for s in ("train", "val", "test") if s in counts]
    rows = [[lab] + [str(counts[s].get(lab, 0)) for s in splits]
            + ([f"{record.class_weight.get(str(i), 1.0):.2f}"] if record.class_weight else [])
            for i, lab in enumerate(labels)]
    doc.h(3, "Images per class")
    doc.details(f"{len(labels)} classes", Table(["class", *splits] + (["loss weight"] if record.class_weight else []),
                                                rows))
    train = [counts["train"][lab] for lab in labels]
    ratio = max(train) / max(min(train), 1)
    doc.p(f"Train images per class: {min(train)} to {max(train)} (ratio {ratio:.1f})."
          + (" Losses were weighted per class (`train.class_weight: balanced`)." if record.class_weight else
             (" The classes are imbalanced: consider `train.class_weight: balanced`." if ratio >= 2 else "")))


def _budgets(doc: Doc, s: BuildSummary) -> None:
    doc.h(2, "Budgets")
    if not s.budgets:
        doc.p("The recipe sets no budget.")
        return
    rows = []
    for b in s.budgets:
        op = "<=" if b.direction == "max" else ">="
        rows.append([b.budget, b.subject, f"{op} {b.limit:g} {b.unit}",
                     "not measured" if b.measured is None else
                     f"{b.measured:.4g} {b.unit}" + _mark(s, b) + (f" ({b.basis})" if b.basis else ""),
                     ("ok", "ok") if b.ok else ("MISSED", "bad")])
    doc.table(Table(["budget", "subject", "limit", "measured", "result"], rows, "llrrl"))
    if any(_mark(s, b) for b in s.budgets):
        doc.p(UNVALIDATED_NOTE)


def _mark(s: BuildSummary, b: BudgetResult) -> str:
    """The unvalidated mark of a latency budget measured on an unvalidated estimate."""
    measured = (b.basis or "").startswith("measured")  # a real device's figure carries no estimate's mark
    result = s.device(b.subject) if b.budget == "max_latency_ms" and not measured else None
    return UNVALIDATED_MARK if result is not None and result.latency.unvalidated else ""


_DEVICE_HEADERS = ["device", "variant", "loads", "top-1 %", "M instr / inference", *LATENCY_HEADERS,
                   "bit-exact vs host", "max abs diff", "memory MiB", "fits RAM"]


def _device_row(dev: str, v: str, m: DeviceSummary, deploy: str, measured: bool) -> List[Cell]:
    width = len(_DEVICE_HEADERS) + measured
    if not m.loaded:
        op = f"{m.load_error_op} v{m.load_error_op_version}" if m.load_error_op else "error"
        return [dev, v, (f"no: {op}", "bad")] + [""] * (width - 3)
    fits = m.fits_ram
    est, *provenance = m.latency.cells()
    return [dev, f"**{v}**" if v == deploy else v, ("yes", "ok"), _f(m.top1, ".1f"),
            _f(m.instructions_per_inference, ",.3f", 1e-6), est, *([measured_cell(m)] if measured else []),
            *provenance, _f(m.exact_fraction, ".0%"), _f(m.max_abs_diff, ".2g"),
            _f(m.peak_memory_bytes, ".2f", 1 / 2 ** 20),
            "-" if fits is None else ("yes", "ok") if fits else ("no", "bad")]


def _devices(doc: Doc, s: BuildSummary) -> None:
    doc.h(2, "Devices (emulated ARM)")
    if not s.devices:
        doc.p("This build ran no emulated devices (`--no-devices`, or no `devices.targets` in the recipe).")
        return
    profs = []
    for dev in s.devices:
        p = device_profile(profile_of(dev))
        profs.append(f"**{dev}**: {p.description}; emulated core `{p.qemu_cpu}`, runtime "
                     f"{p.runtime} {p.runtime_version}" if p else f"**{dev}**: (profile no longer registered)")
    doc.ul(profs)
    real = [(dev, m.measured) for dev, per in s.devices.items() for m in per.values() if m.measured is not None]
    rows = [_device_row(dev, v, m, s.deploy_variant, bool(real))
            for dev, per in s.devices.items() for v, m in per.items()]
    failures = [f"{v} on {dev} ({m.runtime}): {((m.load_error or '').strip().splitlines() or [''])[0]}"
                for dev, per in s.devices.items() for v, m in per.items() if not m.loaded]
    head = _DEVICE_HEADERS[:6] + [MEASURED_HEADER] * bool(real) + _DEVICE_HEADERS[6:]
    doc.table(Table(head, rows, "lllrr" + LATENCY_ALIGN[0] + "r" * bool(real) + LATENCY_ALIGN[1:] + "rrrl"))
    if s.latency_note:
        doc.p(s.latency_note)
    if real:
        doc.p(f"{MEASURED_HEADER.capitalize()}: the deploy variant timed on the real device an entry names "
              "(mean ± standard deviation of single inferences), beside the estimate of its emulated profile:")
        doc.ul([f"**{dev}**: {m.text()}" + (f"; device {m.device}" if m.device else "") for dev, m in real])
    if failures:
        doc.p("Load failures (first line of the runtime's error):")
        doc.ul(failures)
    samples = {m.samples for per in s.devices.values() for m in per.values() if m.samples}
    doc.p(f"Each pair ran on the device's real ARM runtime under qemu-aarch64 over "
          f"{'/'.join(map(str, sorted(samples))) or '?'} test images. Instructions per inference are "
          "deterministic (the basis of the CI gate); estimated latency comes from the latency model named in its "
          "row (docs/latency.md) and is blank where the device has none; wall time under emulation is not latency.")


def _cost(kind: str, value: Optional[float]) -> str:
    """A schedule cost in its unit: MACs, or estimated ms."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if kind == "macs" else f"{value:.3f}"


def _share(part: Optional[float], whole: Optional[float]) -> str:
    return "-" if part is None or not whole else f"{part / whole:.1%}"


def _channels(doc: Doc, ch: ChannelFigures) -> None:
    """Channel pruning: the model's cost before and after, per layer, and the schedule's steps."""
    doc.h(2, "Channel pruning")
    unit = "MACs" if ch.kind == "macs" else f"estimated int8 ms on {ch.device}"
    target = (f"at most {ch.budget:,.0f} MACs" if ch.kind == "macs"
              else f"estimated int8 latency <= {ch.budget:g} ms on {ch.device} (one thread)")
    doc.p(f"Whole channels were removed (criterion `{ch.criterion}`) until the model met its target: {target}. "
          f"The schedule ran {len(ch.steps)} step(s) in {ch.schedule_s:.0f} s, then the thinned model was fine-tuned; "
          f"it computes {ch.macs:,} of the float model's {ch.float_macs:,} MACs "
          f"({_share(ch.macs, ch.float_macs)}).")
    start, end = ch.start, ch.end
    rows = [["MACs", f"{start.get('macs', 0):,}", f"{end.get('macs', 0):,}",
             _share(end.get("macs"), start.get("macs"))]]
    if ch.kind == "latency_ms":
        rows += [[f"{ch.device} instructions / inference", f"{start.get('instructions', 0):,}",
                  f"{end.get('instructions', 0):,}", _share(end.get("instructions"), start.get("instructions"))],
                 [f"{ch.device} est. latency ms", _f(start.get("latency_ms"), ".3f"), _f(end.get("latency_ms"), ".3f"),
                  _share(end.get("latency_ms"), start.get("latency_ms"))]]
    rows.append(["val top-1 % (schedule's images, before fine-tune)", _f(start.get("top1"), ".2f"),
                 _f(end.get("top1"), ".2f"), ""])
    doc.table(Table(["", "unpruned", "thinned", "thinned / unpruned"], rows, "lrrr"))
    if ch.kind == "latency_ms":
        doc.p("Device figures of the schedule: each architecture converted to int8 (post-training, random "
              "calibration) and run once on the emulated core, priced by the build's latency estimate; int8 counts "
              "depend on the architecture, not the weights. The Devices table above has the built variants' own.")
    saved = ch.saved_by_layer()
    total_saved = sum(saved.values())
    total_b = sum(r.macs_before for r in ch.layers)
    total_a = sum(r.macs_after for r in ch.layers)
    rows = []
    for r in ch.layers:
        width = "" if r.channels_before is None else (
            f"{r.channels_before} -> {r.channels_after}" if r.channels_after != r.channels_before
            else str(r.channels_before))
        rows.append([r.layer, width, f"{r.macs_before:,}", f"{r.macs_after:,}", _share(r.macs_before, total_b),
                     _share(r.macs_after, total_a),
                     _cost(ch.kind, saved[r.layer]) if r.layer in saved else "",
                     _share(saved[r.layer], total_saved) if r.layer in saved else ""])
    doc.details(f"Per layer: {len(ch.layers)} layers with MACs, {len(saved)} thinned",
                Table(["layer", "channels", "MACs before", "MACs after", "MACs share before", "MACs share after",
                       f"removed by its steps ({unit})", "share of removed"], rows, "llrrrrrr"))
    doc.p("The last two columns are measured: the cost each step saved, summed over the steps that thinned the "
          "layer. Per-layer device instructions are not measured: the emulated run counts instructions for whole "
          "inferences, not per operator.")
    bisected = [s for s in ch.steps if s.channels_proposed is not None and s.channels_proposed != s.channels_after]
    rows = [[str(s.step), s.layer, f"{s.channels_before} -> {s.channels_after}"
             + (f" (proposed {s.channels_proposed})" if s in bisected else ""), _cost(ch.kind, s.cost_before),
             _cost(ch.kind, s.cost), _f(s.instructions, ",.0f"), f"{s.loss_oneshot:.4f}", f"{s.loss:.4f}",
             f"{s.top1_oneshot:.2f}", f"{s.top1:.2f}"] for s in ch.steps]
    doc.table(Table(["step", "layer", "channels", "cost before", "cost after", "instructions",
                     "val loss one-shot", "val loss recovered", "val top-1 % one-shot", "val top-1 % recovered"],
                    rows, "lllrrrrrrr"))
    doc.p(f"Cost in {unit}. Each step thinned the layer whose proposal gained least validation loss per unit of cost "
          "saved (one-shot: thinned, not trained), then trained it briefly (recovered); validation on the "
          "schedule's fixed slice of the validation split."
          + (" The proposal of the step that reached the budget would have gone below it: its width was bisected "
             "(multiples of 8 channels) to the widest that meets the budget." if bisected else ""))


def _sparsity(doc: Doc, inputs: ReportInputs) -> None:
    layers, source = inputs.sparsity
    prune, deploy = inputs.record.prune, inputs.summary.deploy_variant
    doc.h(2, "Per-layer sparsity")
    if prune is not None:
        doc.p(f"Zeros in Conv2D/Dense kernels after pruning: {prune.sparsity:.1%} "
              f"(target {prune.target_sparsity or 0:.0%}); {prune.sparsity_all_kernels:.1%} "
              f"including depthwise. {DEPTHWISE_NOTE}. In the deploy file ({deploy}): "
              f"{inputs.summary.variants[deploy].zeros_prunable:.1%} of prunable kernels are zero.")
    else:
        doc.p(f"The recipe does not prune; the table reads the kernels of {source}. {DEPTHWISE_NOTE}.")
    rows = [[row.layer, row.kind, "x".join(map(str, row.shape)), f"{row.params:,}", f"{row.zeros:.1%}",
             "yes" if row.pruned else (("no (never pruned)", "muted") if row.kind == "DepthwiseConv2D" else "no")]
            for row in layers]
    doc.details(f"{len(layers)} kernels ({source})",
                Table(["layer", "kind", "shape", "params", "zeros", "pruned"], rows, "llrrrl"))


def _confusion(doc: Doc, s: BuildSummary, confusion: Confusion) -> None:
    cm = confusion.counts
    labels = list(s.labels) or [str(i) for i in range(len(cm))]
    doc.h(2, f"Confusion matrix ({s.deploy_variant}, test split)")
    rows = []
    for i, lab in enumerate(labels):
        total = int(cm[i].sum())
        recall = cm[i, i] / total if total else 0.0
        rows.append([lab] + [(str(int(c)), "good") if j == i and c else str(int(c)) if c else ("0", "muted")
                             for j, c in enumerate(cm[i])] + [f"{recall:.0%}"])
    doc.table(Table(["true \\ predicted"] + labels + ["recall"], rows))
    doc.p(f"Top-1 {confusion.top1:.2f}% over {int(cm.sum())} images "
          f"(host LiteRT run of `tflite/{s.deploy_variant}.tflite`). Per-class accuracy is the recall column.")
    pairs = most_confused(confusion, labels)
    if pairs:
        doc.p("Most confused pairs (true -> predicted):")
        doc.ul([f"{t} -> {p}: {n} image(s), {share:.1%} of {t}" for t, p, n, share in pairs])
    else:
        doc.p("No test image was misclassified.")


def _bundle(doc: Doc, deploy: str, bundle: Bundle) -> None:
    meta = bundle.metadata
    doc.h(2, "Bundle")
    doc.p(f"`bundle/` holds the deploy variant **{deploy}** as `model.tflite`, ready to flash; "
          "check it with `cd bundle && sha256sum -c SHA256SUMS`.")
    doc.table(Table(["file", "bytes", "sha256"],
                    [[f"`{n}`", f"{info['size_bytes']:,}", f"`{info['sha256'][:16]}...`"]
                     for n, info in sorted(bundle.files.items())], "lrl"))
    inp = meta["input"]
    q, qi = inp["quantization"], inp["quantized_inside"]
    doc.ul([f"Input: {inp['shape']} {inp['dtype']} NHWC {inp['color']}, {inp['normalization']['formula']} "
            f"(float in [0, 1])" + (f"; quantization scale {q['scale']}, zero point {q['zero_point']}" if q else "")
            + (f"; quantized inside to {qi['dtype']} (scale {qi['scale']}, zero point {qi['zero_point']})"
               if not q and qi else ""),
            f"Ops: {', '.join(o['op'] + ' v' + str(o['version']) for o in meta['ops'])}",
            f"Runtimes: {meta['runtimes']['note']}",
            _embedded_line(meta["tflite_metadata"])])


def _embedded_line(md) -> str:
    front = f"; RGB front: {md['rgb_front_note']}" if md["rgb_front"] else ""
    return (f"TFLite metadata in `model.tflite` ({md['writer']}): {md['name']}, input {md['input_shape']} "
            f"{md['color_space']} mean {md['normalization']['mean']} std {md['normalization']['std']}, "
            f"labels `{md['labels_file']}`, output {md['output']}{front}; `model_without_metadata.tflite` "
            f"is the variant as built")


def _stage_row(st: StageTiming, this_build: Cell) -> List[Cell]:
    return [st.name, f"{st.wall_s:.1f}", _f(st.peak_rss_mb, ",.0f"), this_build, st.finished_at]


def _stages(doc: Doc, s: BuildSummary, record: BuildRecord) -> None:
    """Every step the manifest records: loading the data (first, where recorded), then each stage."""
    ran = set(s.stages_run)
    rows = [_stage_row(st, "ran" if st.name in ran else ("cached", "muted")) for st in record.stages]
    steps = list(record.stages)
    if record.data_step is not None:  # the data step runs in every build
        rows.insert(0, _stage_row(record.data_step, "ran"))
        steps.insert(0, record.data_step)
    doc.h(2, "Stages")
    if rows:
        peaks = [st.peak_rss_mb for st in steps if st.peak_rss_mb is not None]
        doc.details(f"{len(record.stages)} stages, {len(ran)} run in this build, "
                    f"{sum(st.wall_s for st in steps):.0f} s recorded"
                    + (f", peak RSS {max(peaks):,.0f} MiB" if peaks else ""),
                    Table(["stage", "wall s", "peak RSS MiB", "this build", "finished"], rows, "lrrll"))
        doc.p("Wall time and peak resident memory of the build process in each step, as recorded when the step ran "
              "(a cached stage keeps the figures of the build that ran it); child processes, such as emulated device "
              "runs, are not counted. \"-\": not recorded (a manifest from before peaks were kept).")
    if record.versions:
        doc.p("Libraries: " + ", ".join(f"{k} {v}" for k, v in record.versions.items()) + ".")

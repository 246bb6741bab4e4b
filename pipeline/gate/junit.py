"""The forms of a comparison for people and CI: a Markdown report and JUnit XML."""

from pathlib import Path
from typing import Optional
from xml.sax.saxutils import quoteattr

from pipeline.gate.compare import IMPROVED, MISSING, NEW, OK, REGRESSION, SKIPPED, Check, Comparison, union
from pipeline.gate.thresholds import DEVICE_METRICS, HOST_METRICS, MEASURED_LATENCY, THRESHOLDS, format_value
from pipeline.store.atomic import atomic_write_text
from pipeline.table import Table

MARK = {REGRESSION: " **REGRESSED**", MISSING: " **MISSING**", IMPROVED: " _improved_", OK: "", SKIPPED: "",
        NEW: " _new_"}


def _cell(check: Optional[Check]) -> str:
    if check is None:
        return ""
    if check.metric == "loads":
        if check.status in (NEW, MISSING):
            return check.status.upper() if check.status == MISSING else "new"
        yes = {1.0: "yes", 0.0: "no"}
        now = yes[check.current] + (f" ({check.why})" if check.why else "")
        if check.baseline == check.current:
            return now + MARK[check.status]
        return f"{yes[check.baseline]} -> {now}{MARK[check.status]}"
    m = check.metric_def
    if check.status == SKIPPED:
        if check.baseline == check.current:
            return "-"
        return f"{format_value(m, check.baseline)} -> {format_value(m, check.current)}"
    if check.delta == 0:
        return f"{format_value(m, check.current)} (=)" + (" (measured)" if m is MEASURED_LATENCY else "")
    rel = f"{check.delta / abs(check.baseline):+.2%}" if check.baseline and m.rel is not None \
        else f"{check.delta:+.2f}"
    return (f"{format_value(m, check.baseline)} -> {format_value(m, check.current)} ({rel}){MARK[check.status]}"
            + (" (measured)" if m is MEASURED_LATENCY else ""))


def format_markdown(comp: Comparison) -> str:
    """The comparison as Markdown: verdict, host table, device table, regressions, notes."""
    regs, imps = comp.regressions, comp.improvements
    counted = [c for c in comp.checks if c.status != SKIPPED]
    lines = [f"### mobile-model compare: `{comp.baseline.source}` (baseline) vs `{comp.current.source}`", ""]
    if regs:
        lines.append(f"**FAIL: {len(regs)} regression(s)**, {len(imps)} improvement(s) in {len(counted)} checks.")
    else:
        lines.append(f"**PASS: no regression** in {len(counted)} checks ({len(imps)} improvement(s)).")
    lines.append("")
    index = {(c.where, c.variant, c.metric): c for c in comp.checks}
    host = HOST_METRICS
    variants = union(comp.baseline.variants, comp.current.variants)
    rows = []
    for v in variants:
        pres = index.get(("host", v, "present"))
        rows.append([v, f"{pres.status.upper()}: {pres.message}"] if pres is not None else
                    [v] + [_cell(index.get(("host", v, m.key))) for m in host])
    lines += Table(["host"] + [m.label for m in host], rows).markdown()
    devs = union(comp.baseline.devices, comp.current.devices)
    if devs:
        dev_m = DEVICE_METRICS
        rows = []
        for dev in devs:
            pres = index.get((dev, "*", "present"))
            if pres is not None:
                rows.append([dev, "*", f"{pres.status.upper()}: {pres.message}"])
                continue
            for v in union(comp.baseline.devices.get(dev, {}), comp.current.devices.get(dev, {})):
                rows.append([dev, v, _cell(index.get((dev, v, "loads")))]
                            + [_cell(index.get((dev, v, m.key))) for m in dev_m])
        # A column that holds a measured latency is no longer only the estimate's.
        measured = any(c.metric_def is MEASURED_LATENCY for c in comp.checks)
        labels = ["latency ms" if measured and m.key == "latency_ms" else m.label for m in dev_m]
        lines += [""] + Table(["device", "variant", "loads"] + labels, rows, "lll" + "r" * len(dev_m)).markdown()
    if regs:
        lines += ["", "**Regressions**", ""]
        lines += [f"- {c.where} / {c.variant}: {c.label}: {c.message}" for c in regs]
    if imps:
        lines += ["", "**Improvements**", ""]
        lines += [f"- {c.where} / {c.variant}: {c.label}: {c.message}" for c in imps]
    if comp.notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in comp.notes]
    th = comp.thresholds
    lines += ["", "Thresholds: " + ", ".join(f"{k}={th[k]:g}" for k in THRESHOLDS) + "."]
    return "\n".join(lines) + "\n"


def format_junit(comp: Comparison, suite: str = "mobile-model.compare") -> str:
    """JUnit XML: one testcase per check (``skipped`` for figures one side lacks)."""
    failures = len(comp.regressions)
    skipped = sum(c.status == SKIPPED for c in comp.checks)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f"<testsuites name={quoteattr(suite)} tests=\"{len(comp.checks)}\" failures=\"{failures}\">",
           f"  <testsuite name={quoteattr(suite)} tests=\"{len(comp.checks)}\" failures=\"{failures}\" "
           f"errors=\"0\" skipped=\"{skipped}\">"]
    for c in comp.checks:
        cls = f"{suite}.{c.where}.{c.variant}"
        name = c.metric
        head = f"    <testcase classname={quoteattr(cls)} name={quoteattr(name)}"
        if c.failed:
            out += [head + ">",
                    f"      <failure message={quoteattr(c.status + ': ' + c.message)} type={quoteattr(c.status)}>"
                    f"{_xml_text(c.message)}</failure>",
                    "    </testcase>"]
        elif c.status == SKIPPED:
            out += [head + ">", f"      <skipped message={quoteattr(c.message)}/>", "    </testcase>"]
        else:
            out += [head + ">", f"      <system-out>{_xml_text(c.status + ': ' + c.message)}</system-out>",
                    "    </testcase>"]
    out += ["  </testsuite>", "</testsuites>"]
    return "\n".join(out) + "\n"


def _xml_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_junit(comp: Comparison, path: "str | Path") -> None:
    atomic_write_text(Path(path), format_junit(comp))



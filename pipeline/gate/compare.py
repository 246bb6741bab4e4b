"""Regression gates: compare a build with a baseline, variant by variant and device by device.

``mobile-model compare BASELINE CURRENT`` reads two *snapshots*
(:mod:`pipeline.gate.snapshot`: a build directory, its ``summary.json`` or
``manifest.json``, or a committed baseline file written by ``mobile-model
baseline``) and checks, for every variant on the host and every variant x device:

    host:    top-1, file size, gzip size
    device:  loads, top-1, instructions per inference, latency, peak memory

Latency is the one measured on a real device where both sides have it (an entry such
as ``rpi4@ssh://pi@camera-7``): a noisy figure, allowed to rise by
``max(max_measured_latency_increase * baseline, max_measured_latency_increase_ms,
measured_noise_sigmas * hypot(std_baseline, std_current))``; else the estimates are
compared. Each latency check's message starts with ``measured on <target>`` or ``estimated``.

Each check allows a change of ``max(absolute, relative * |baseline|)`` in the bad
direction (:data:`pipeline.gate.thresholds.THRESHOLDS`); a larger bad change is a
regression, a larger good change an improvement. Instruction counts and file sizes
are deterministic for identical ``.tflite`` files (README, "Emulated devices"), so their default
tolerance is tight (0.1%); accuracy of a retrained model moves a little between
machines, so top-1 gets an absolute allowance in points.

Notes say what else differs between the two sides (recipe, runtime, latency model,
library versions) and which estimated latencies are unvalidated on either side.

Thresholds, lowest precedence first: the defaults, a ``thresholds`` mapping in the
baseline file (BASELINE's, then CURRENT's when it is a baseline file too), then the
command-line options. The keys are the option names with underscores (``max_instr_increase: 0.001``).

The Markdown and JUnit forms of a comparison are in :mod:`pipeline.gate.junit`,
baseline files are written by :mod:`pipeline.gate.baseline`.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set

from pipeline.gate.snapshot import DeviceFigures, Snapshot, load_snapshot
from pipeline.gate.thresholds import (DEFAULT_THRESHOLDS, DEVICE_METRICS, HOST_METRICS, MEASURED_LATENCY, Metric,
                                      allowed_text, delta_text, format_value, validate_thresholds)
from pipeline.summary import UNVALIDATED_REASON, LatencyEstimate


OK, REGRESSION, IMPROVED, SKIPPED, MISSING, NEW = "ok", "regression", "improved", "skipped", "missing", "new"
DEVICE_METRICS_BY_KEY = {m.key: m for m in DEVICE_METRICS}


@dataclass
class Check:
    """One compared figure: where (``host`` or a device), variant, metric, verdict."""

    where: str
    variant: str
    metric: str
    label: str
    baseline: Optional[float]
    current: Optional[float]
    allowed: Optional[float]
    status: str
    message: str
    metric_def: Optional[Metric] = None
    why: str = ""  # for a load check whose current side fails: the failing op

    @property
    def failed(self) -> bool:
        return self.status in (REGRESSION, MISSING)

    @property
    def delta(self) -> Optional[float]:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    def to_dict(self) -> Dict[str, Any]:
        return {"where": self.where, "variant": self.variant, "metric": self.metric, "baseline": self.baseline,
                "current": self.current, "delta": self.delta, "allowed": self.allowed, "status": self.status,
                "message": self.message}


@dataclass
class Comparison:
    """Every check of one comparison, the thresholds it used and notes on what else differs."""

    baseline: Snapshot
    current: Snapshot
    thresholds: Dict[str, float]
    checks: List[Check]
    notes: List[str]

    @property
    def regressions(self) -> List[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def improvements(self) -> List[Check]:
        return [c for c in self.checks if c.status == IMPROVED]

    @property
    def ok(self) -> bool:
        return not self.regressions

    def to_dict(self) -> Dict[str, Any]:
        return {"baseline": self.baseline.source, "current": self.current.source, "ok": self.ok,
                "regressions": len(self.regressions), "improvements": len(self.improvements),
                "thresholds": self.thresholds, "notes": self.notes, "checks": [c.to_dict() for c in self.checks]}


def resolve_thresholds(baseline: Snapshot, current: Snapshot,
                       options: Optional[Mapping[str, Optional[float]]] = None) -> Dict[str, float]:
    """Defaults < BASELINE's file ``thresholds`` < CURRENT's (a baseline file) < options."""
    out = dict(DEFAULT_THRESHOLDS)
    out.update(baseline.thresholds)
    out.update(current.thresholds)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    out.update(validate_thresholds(given, "options"))
    return out


def _allowed(metric: Metric, base: float, th: Mapping[str, float]) -> float:
    rel = th[metric.rel] * abs(base) if metric.rel else 0.0
    ab = th[metric.abs_] if metric.abs_ else 0.0
    return max(rel, ab)


def _judge(metric: Metric, where: str, variant: str, base: Optional[float], cur: Optional[float],
           th: Mapping[str, float], std: Optional[float] = None) -> Check:
    def make(status, allowed, msg):
        return Check(where, variant, metric.key, metric.label, base, cur, allowed, status, msg, metric)

    if base is None and cur is None:
        return make(SKIPPED, None, "not measured on either side")
    if base is None:
        return make(SKIPPED, None, "not measured in the baseline")
    if cur is None:
        return make(SKIPPED, None, "not measured in the current build")
    allowed = _allowed(metric, base, th)
    if std is not None:
        allowed = max(allowed, th["measured_noise_sigmas"] * std)
    worse = (cur - base) if metric.lower_is_better else (base - cur)
    text = (f"{format_value(metric, base)} -> {format_value(metric, cur)} {metric.unit} "
            f"({delta_text(metric, base, cur)}; allowed {allowed_text(metric, allowed, th, std)})")
    if worse > allowed:
        return make(REGRESSION, allowed, text)
    if -worse > allowed:
        return make(IMPROVED, allowed, text)
    return make(OK, allowed, text)


def compare_snapshots(baseline: Snapshot, current: Snapshot,
                      thresholds: Optional[Mapping[str, float]] = None) -> Comparison:
    """Checks every figure of ``baseline`` against ``current``.

    A variant or device the baseline has and the current build lacks is a failed
    check (``missing``); one only the current build has is ``new`` (not a failure).
    A device result that loaded in the baseline and fails to load now is a regression.

    Args:
        thresholds: complete thresholds (see :func:`resolve_thresholds`); defaults if None.
    """
    th = dict(DEFAULT_THRESHOLDS)
    th.update(thresholds or {})
    checks: List[Check] = []

    for v in union(baseline.variants, current.variants):
        b, c = baseline.variants.get(v), current.variants.get(v)
        if b is None:
            checks.append(Check("host", v, "present", "present", None, None, None, NEW,
                                "variant only in the current build"))
            continue
        if c is None:
            checks.append(Check("host", v, "present", "present", None, None, None, MISSING,
                                "variant missing from the current build"))
            continue
        checks.extend(_judge(m, "host", v, getattr(b, m.key), getattr(c, m.key), th) for m in HOST_METRICS)

    for dev in union(baseline.devices, current.devices):
        bd, cd = baseline.devices.get(dev), current.devices.get(dev)
        if bd is None:
            checks.append(Check(dev, "*", "present", "present", None, None, None, NEW,
                                "device only in the current build"))
            continue
        if cd is None:
            checks.append(Check(dev, "*", "present", "present", None, None, None, MISSING,
                                "no results for this device in the current build (built with --no-devices?)"))
            continue
        for v in union(bd, cd):
            b, c = bd.get(v), cd.get(v)
            if b is None:
                checks.append(Check(dev, v, "loads", "loads", None, None, None, NEW, "only in the current build"))
                continue
            if c is None:
                checks.append(Check(dev, v, "loads", "loads", None, None, None, MISSING,
                                    "missing from the current build"))
                continue
            checks.append(_load_check(dev, v, b, c))
            if b.loaded and c.loaded:
                checks.extend(_latency_check(dev, v, b, c, th) if m.key == "latency_ms" else
                              _judge(m, dev, v, getattr(b, m.key), getattr(c, m.key), th) for m in DEVICE_METRICS)
    return Comparison(baseline, current, th, checks, _notes(baseline, current))


def _latency_check(dev: str, v: str, b: DeviceFigures, c: DeviceFigures, th: Mapping[str, float]) -> Check:
    """Measured against measured where both sides timed the pair on a real device (a noisy
    figure: :data:`MEASURED_LATENCY`'s thresholds, or the runs' spread), else estimated
    against estimated; the message says which."""
    if b.measured_ms is not None and c.measured_ms is not None:
        std = math.hypot(b.measured_std_ms or 0.0, c.measured_std_ms or 0.0)
        check = _judge(MEASURED_LATENCY, dev, v, b.measured_ms, c.measured_ms, th, std)
        where = (b.measured_target if b.measured_target == c.measured_target
                 else f"{b.measured_target} (baseline) and {c.measured_target} (current)")
        check.message = f"measured on {where}: {check.message}"
        return check
    check = _judge(DEVICE_METRICS_BY_KEY["latency_ms"], dev, v, b.latency_ms, c.latency_ms, th)
    one = "baseline" if b.measured_ms is not None else "current" if c.measured_ms is not None else None
    check.message = f"estimated: {check.message}" + (f" (measured only in the {one})" if one else "")
    return check


def _load_check(dev: str, v: str, b: DeviceFigures, c: DeviceFigures) -> Check:
    def why(rec: DeviceFigures) -> str:
        return f"{rec.load_error_op} v{rec.load_error_op_version}" if rec.load_error_op else "load error"

    bl, cl = float(b.loaded), float(c.loaded)
    if b.loaded and not c.loaded:
        status, msg = REGRESSION, f"no longer loads on {c.runtime or 'the device runtime'}: {why(c)}"
    elif not b.loaded and c.loaded:
        status, msg = IMPROVED, f"now loads on {c.runtime or 'the device runtime'} (was: {why(b)})"
    elif not c.loaded:
        status, msg = OK, f"does not load, as in the baseline ({why(c)})"
    else:
        status, msg = OK, "loads"
    return Check(dev, v, "loads", "loads", bl, cl, None, status, msg, why="" if c.loaded else why(c))


def union(a: Iterable[str], b: Iterable[str]) -> List[str]:
    """The keys of ``a``, then those only ``b`` has, in order."""
    out = list(a)
    out += [k for k in b if k not in out]
    return out


def _notes(baseline: Snapshot, current: Snapshot) -> List[str]:
    notes = []
    if baseline.name != current.name:
        notes.append(f"recipe names differ: baseline `{baseline.name}`, current `{current.name}`")
    if baseline.recipe and current.recipe:
        diffs = _dict_diff(baseline.recipe, current.recipe)
        if diffs:
            shown = ", ".join(diffs[:8]) + (f", ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
            notes.append(f"recipe differs: {shown}")
    same = [v for v, b in baseline.variants.items()
            if b.sha256 and v in current.variants and b.sha256 == current.variants[v].sha256]
    if same:
        notes.append(f"identical .tflite files (sha256): {', '.join(same)}")
    for dev in baseline.devices:
        b, c = baseline.devices[dev].values(), current.devices.get(dev, {}).values()
        notes += _changed(f"{dev}: runtime", {r.runtime for r in b} - {None}, {r.runtime for r in c} - {None})
        notes += _changed(f"{dev}: latency model changed:", _latency_models(b), _latency_models(c))
    notes += _unvalidated(baseline, current)
    for lib in sorted(set(baseline.versions) & set(current.versions)):
        if baseline.versions[lib] != current.versions[lib]:
            notes.append(f"{lib} {baseline.versions[lib]} -> {current.versions[lib]}")
    return notes


def _changed(what: str, before: Set[str], after: Set[str]) -> List[str]:
    """A note when both sides name something and it differs."""
    if before and after and before != after:
        return [f"{what} {', '.join(sorted(before))} -> {', '.join(sorted(after))}"]
    return []


def _latency_models(figures: Iterable[DeviceFigures]) -> Set[str]:
    # A baseline written before the model was recorded still has its latencies: say so.
    return {r.latency_model or "(not recorded)" for r in figures if r.latency_ms is not None}


def _marked(snap: Snapshot) -> List[str]:
    return [f"{dev}/{v}" for dev, per in snap.devices.items() for v, r in per.items()
            if LatencyEstimate.of(r).unvalidated]


def _unvalidated(baseline: Snapshot, current: Snapshot) -> List[str]:
    """A note naming the latencies that no published measurement validates, and on which side."""
    b, c = _marked(baseline), _marked(current)
    shown = [p + ("" if p in b and p in c else " (baseline only)" if p in b else " (current only)")
             for p in union(b, c)]
    return [f"unvalidated latency estimate(s) ({UNVALIDATED_REASON}): {', '.join(shown)}"] if shown else []


def _dict_diff(a: Any, b: Any, prefix: str = "") -> List[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in union(a, b):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a:
                out.append(f"{key} added")
            elif k not in b:
                out.append(f"{key} removed")
            else:
                out.extend(_dict_diff(a[k], b[k], key))
        return out
    return [] if a == b else [f"{prefix} {_short(a)} -> {_short(b)}"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def compare_paths(baseline: "str | Path", current: "str | Path",
                  options: Optional[Mapping[str, Optional[float]]] = None) -> Comparison:
    """Loads both inputs, resolves the thresholds and compares (what the CLI calls).

    Raises:
        UnusableInputError: either input is unusable, or a threshold is invalid.
    """
    b = load_snapshot(baseline, "BASELINE")
    c = load_snapshot(current, "CURRENT")
    return compare_snapshots(b, c, resolve_thresholds(b, c, options))

"""The calibration report: one JSON-serialisable dict and its Markdown rendering."""

from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.devices.profiles import DEVICES
from pipeline.latency.fit import ASSUMED_CORES, Calibration
from pipeline.latency.model import CLASSES, DEFAULT_TIES, error_summary, relative_error, speedup
from pipeline.latency.published import PUBLISHED_ORDER, PUBLISHED_SPEEDUP
from pipeline.latency.reference import VARIANT_NAMES
from pipeline.store.atomic import atomic_write_json, atomic_write_text

# What the calibration must meet over the published points (fractions).
LOO_MEDIAN_MAX, WORST_MAX = 0.15, 0.35


def order_check(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per device and variant: do the estimates rank the families as published?"""
    out = []
    for device in DEVICES.names():
        for variant in VARIANT_NAMES:
            est = {r["family"]: r.get("latency_ms") for r in rows
                   if r["device"] == device and r["variant"] == variant and r.get("loaded")}
            if len(est) != len(PUBLISHED_ORDER) or any(v is None for v in est.values()):
                continue
            ranked = tuple(sorted(est, key=est.get, reverse=True))
            out.append({"device": device, "variant": variant, "order": list(ranked),
                        "as_published": ranked == PUBLISHED_ORDER})
    return out


def speedups(cal: Calibration, device: str = "pixel2") -> List[Dict[str, Any]]:
    """Estimated float32/int8 speed-ups on ``device`` next to the published ones."""
    est = {(r["family"], r["variant"]): r.get("latency_ms") for r in cal.matrix
           if r["device"] == device and r.get("loaded")}
    by_name = {pt.name: pr for pt, pr in zip(cal.points, cal.fit_all)}
    xnn = {p.model: p.latency_ms for p in cal.published
           if p.device == device and p.variant == "float32"}
    out = []
    for family, (f_ms, q_ms) in PUBLISHED_SPEEDUP.items():
        f, q = est.get((family, "float32")), est.get((family, "int8"))
        legacy = by_name.get(f"{family} int8_qat {device}")
        out.append({
            "family": family,
            "published_float_2019_ms": f_ms, "published_int8_2019_ms": q_ms,
            "published_speedup": f_ms / q_ms,
            "estimated_float32_ms": f, "estimated_int8_ms": q,
            "estimated_speedup": (f / q) if f and q else None,
            "published_xnnpack_float_over_int8_2019": (xnn[family] / q_ms) if family in xnn else None,
            "estimated_float_over_int8_builtin": (f / legacy.predicted_ms) if f and legacy else None,
        })
    return out


def report_data(cal: Calibration) -> Dict[str, Any]:
    """The calibration as one JSON-serialisable dict."""
    all_s, loo_s = error_summary(cal.fit_all), error_summary(cal.loo)
    return {
        "model": "cycles = sum_c cost_c * count_c per core (ties: "
                 + " | ".join("+".join(g) for g in DEFAULT_TIES)
                 + "); NNLS on relative error; ms = cycles / clock; Amdahl thread scaling",
        "acceptance": {"loo_median_abs_error_max": LOO_MEDIAN_MAX, "worst_abs_error_max": WORST_MAX,
                       "loo_median_abs_error": loo_s["median_abs_error"],
                       "loo_worst_abs_error": loo_s["worst_abs_error"],
                       "met": loo_s["median_abs_error"] <= LOO_MEDIAN_MAX
                       and loo_s["worst_abs_error"] <= WORST_MAX},
        "fit_all": all_s, "leave_one_out": loo_s,
        "points": [{"point": pt.name, "core": pt.core, "clock_ghz": pt.clock_ghz,
                    "measured_ms": pt.measured_ms,
                    "instructions": int(sum(pt.by_class.values())),
                    "instructions_by_class": dict(pt.by_class),
                    "fit_all_ms": a.predicted_ms, "fit_all_error": a.error,
                    "loo_ms": held_out.predicted_ms, "loo_error": held_out.error}
                   for pt, a, held_out in zip(cal.points, cal.fit_all, cal.loo)],
        "costs": cal.costs,
        "assumed_cores": {k: asdict(v) for k, v in ASSUMED_CORES.items()},
        "thread_scaling": {"parallel_fraction": cal.parallel_fraction, "pairs": [
            {"pair": label, "threads": t, "single_ms": one, "multi_ms": many,
             "published_speedup": one / many,
             "model_speedup": speedup(t, cal.parallel_fraction),
             "multi_ms_error": relative_error(one / speedup(t, cal.parallel_fraction), many)}
            for label, t, one, many in cal.thread_pairs]},
        "profiles": {k: (None if v is None else v.to_mapping()) for k, v in cal.params.items()},
        "matrix": cal.matrix,
        "order_check": order_check(cal.matrix),
        "pixel2_int8_speedup": speedups(cal) if cal.matrix else [],
        "sensitivity": cal.sensitivity,
        "published": [asdict(p) for p in cal.published],
    }


# -- Markdown ----------------------------------------------------------------------

def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _apct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _times(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _summary(data: Mapping[str, Any]) -> List[str]:
    acc, loo, fit = data["acceptance"], data["leave_one_out"], data["fit_all"]
    out = ["# Latency model calibration", "",
           f"Model: {data['model']}. See docs/latency.md.", "",
           f"- {len(data['points'])} published single-thread points; fit on all: median |error| "
           f"{_apct(fit['median_abs_error'])}, worst {_apct(fit['worst_abs_error'])} ({fit['worst_point']})",
           f"- leave-one-out: median |error| {_apct(loo['median_abs_error'])} (limit 15%), worst "
           f"{_apct(loo['worst_abs_error'])} ({loo['worst_point']}; limit 35%): "
           f"**{'met' if acc['met'] else 'NOT met'}**", "",
           "## Each point", "",
           "| point | core | measured ms | M instructions | fit-all ms | error | leave-one-out ms | error |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in data["points"]:
        out.append(f"| {p['point']} | {p['core']} | {p['measured_ms']:g} | {p['instructions'] / 1e6:.1f} | "
                   f"{p['fit_all_ms']:.1f} | {_pct(p['fit_all_error'])} | {p['loo_ms']:.1f} | "
                   f"{_pct(p['loo_error'])} |")
    return out


def _costs(data: Mapping[str, Any]) -> List[str]:
    out = ["", "## Fitted costs (cycles per executed instruction)", "",
           "| core | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
    for core, costs in data["costs"].items():
        out.append(f"| {core} | " + " | ".join(f"{costs[c]:.3f}" for c in CLASSES) + " |")
    for core, a in data["assumed_cores"].items():
        out.append(f"| {core} (ASSUMED: {a['factor']:g} x {a['base_core']}) | "
                   + " | ".join("-" for _ in CLASSES) + " |")
    out += ["", "Assumed cores are not validated by any published point: "
            + " ".join(f"{k}: {v['reason']}." for k, v in data["assumed_cores"].items()), ""]
    ts = data["thread_scaling"]
    out += ["## Thread scaling", "",
            f"Amdahl parallel fraction p = {ts['parallel_fraction']:.3f}, fitted on the XNNPACK "
            "README's multi-threaded table (as many threads as big cores); the estimate caps "
            "threads at the profile's big cores.", "",
            "| model, device | threads | 1-thread ms | published multi ms | published speed-up | "
            "model speed-up | multi ms error |", "|---|---:|---:|---:|---:|---:|---:|"]
    for p in ts["pairs"]:
        out.append(f"| {p['pair']} | {p['threads']} | {p['single_ms']:g} | {p['multi_ms']:g} | "
                   f"{p['published_speedup']:.2f}x | {p['model_speedup']:.2f}x | "
                   f"{_pct(p['multi_ms_error'])} |")
    return out


def _checks(data: Mapping[str, Any]) -> List[str]:
    out = []
    if data["order_check"]:
        out += ["", "## Order of the four models per device (estimates, single thread)", "",
                "| device | variant | estimated order, slowest first | as published |",
                "|---|---|---|---|"]
        for r in data["order_check"]:
            out.append(f"| {r['device']} | {r['variant']} | {' > '.join(r['order'])} | "
                       f"{'yes' if r['as_published'] else 'NO'} |")
    if data["pixel2_int8_speedup"]:
        out += ["", "## int8 vs float32 on pixel2", "",
                "| model | published float (2019 kernels) / int8 QAT (2019) | estimated float32 / int8 "
                "(profile runtime: XNNPACK both) | published XNNPACK float (2020) / int8 (2019) | "
                "estimated XNNPACK float / int8 on builtin kernels |", "|---|---:|---:|---:|---:|"]
        for r in data["pixel2_int8_speedup"]:
            out.append(f"| {r['family']} | {r['published_float_2019_ms']:g} / {r['published_int8_2019_ms']:g} ms"
                       f" = {_times(r['published_speedup'])} | "
                       + (f"{r['estimated_float32_ms']:.1f} / {r['estimated_int8_ms']:.1f} ms = "
                          f"{_times(r['estimated_speedup'])}" if r['estimated_speedup'] else "-")
                       + f" | {_times(r['published_xnnpack_float_over_int8_2019'])} | "
                       f"{_times(r['estimated_float_over_int8_builtin'])} |")
    return out


def _matrix_cell(r: Optional[Mapping[str, Any]]) -> str:
    if r is None:
        return "-"
    if not r["loaded"]:
        return "not loadable"
    if r["latency_ms"] is None:
        return "-"
    return f"{r['latency_ms']:.1f}" + ("" if r.get("variant_in_fit") else " *")


def _matrix(data: Mapping[str, Any]) -> List[str]:
    if not data["matrix"]:
        return []
    out = ["", "## Estimates, full-size models, one thread (ms)", "",
           "| device | runtime | validated | " + " | ".join(
               f"{f} {v}" for f in PUBLISHED_ORDER for v in VARIANT_NAMES) + " |",
           "|---|---|---|" + "---:|" * (len(PUBLISHED_ORDER) * len(VARIANT_NAMES))]
    for device in DEVICES.names():
        rows = {(r["family"], r["variant"]): r for r in data["matrix"] if r["device"] == device}
        if not rows:
            continue
        first = next(iter(rows.values()))
        cells = [_matrix_cell(rows.get((f, v))) for f in PUBLISHED_ORDER for v in VARIANT_NAMES]
        val = {True: "yes", False: "NO (assumed)", None: "no parameters"}[first["validated"]]
        out.append(f"| {device} | {first['runtime']} | {val} | " + " | ".join(cells) + " |")
    out += ["", "\\* no published point of this numeric format on this core type was in the "
            "fit: the estimate extrapolates the fitted costs to another class mix (unvalidated)."]
    return out


def _sensitivity_and_sources(data: Mapping[str, Any]) -> List[str]:
    out = ["", "## Sensitivity: other cost structures, same points", "",
           "| model | costs per core | fit median | fit worst | LOO median | LOO worst (point) |",
           "|---|---:|---:|---:|---:|---|"]
    for r in data["sensitivity"]:
        if "error" in r:
            out.append(f"| {r['model']} | - | - | - | - | {r['error']} |")
            continue
        out.append(f"| {r['model']} | {r['costs_per_core']} | {_apct(r['fit_median_abs_error'])} | "
                   f"{_apct(r['fit_worst_abs_error'])} | {_apct(r['loo_median_abs_error'])} | "
                   f"{_apct(r['loo_worst_abs_error'])} ({r['loo_worst_point']}) |")
    out += ["", "## Published points", "", "| model | variant | device | ms | runtime | source |",
            "|---|---|---|---:|---|---|"]
    for p in data["published"]:
        out.append(f"| {p['model']} | {p['variant']} | {p['device']} | {p['latency_ms']:g} | "
                   f"{p['runtime']} | {p['source']} |")
    return out


def report_markdown(data: Mapping[str, Any]) -> str:
    """The calibration report (markdown) from :func:`report_data`."""
    out = _summary(data) + _costs(data) + _checks(data) + _matrix(data) + _sensitivity_and_sources(data)
    return "\n".join(out) + "\n"


def write_report(cal: Calibration, out_dir: Path) -> Tuple[Path, Path]:
    """Writes ``report.md`` and ``calibration.json`` under ``out_dir``."""
    data = report_data(cal)
    md, js = Path(out_dir) / "report.md", Path(out_dir) / "calibration.json"
    atomic_write_json(js, data)
    atomic_write_text(md, report_markdown(data))
    return md, js

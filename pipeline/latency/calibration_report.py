"""The calibration report: one JSON-serialisable dict and its Markdown rendering."""

from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.devices.profiles import DEVICES, get_device
from pipeline.latency.calibration import SPLITS, Calibration, breakdown, error_summary
from pipeline.latency.model import PARAM_KEYS
from pipeline.latency.published import PUBLISHED_FORMATS, PUBLISHED_ORDER
from pipeline.store.atomic import atomic_write_json, atomic_write_text
from pipeline.table import Table

# What the calibration must meet, leave-one-device-out over the published points (fractions).
LODO_MEDIAN_MAX, LODO_WORST_MAX = 0.10, 0.25
LODO = "leave-one-device-out"


def order_check(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per device and variant: do the estimates rank the families as published?"""
    out = []
    for device in DEVICES.names():
        for variant in PUBLISHED_FORMATS:
            est = {r["family"]: r.get("latency_ms") for r in rows
                   if r["device"] == device and r["variant"] == variant and r.get("loaded")}
            if len(est) != len(PUBLISHED_ORDER) or any(v is None for v in est.values()):
                continue
            ranked = tuple(sorted(est, key=est.get, reverse=True))
            out.append({"device": device, "variant": variant, "order": list(ranked),
                        "as_published": ranked == PUBLISHED_ORDER})
    return out


def _split(preds) -> Dict[str, Any]:
    return {"all": error_summary(preds), **breakdown(preds)}


def report_data(cal: Calibration) -> Dict[str, Any]:
    """The calibration as one JSON-serialisable dict."""
    lodo = error_summary(cal.held_out[LODO])
    by_name = {name: {id(p.point): p for p in preds} for name, preds in cal.held_out.items()}
    return {
        "model": "ms = c * ops * T / clock(T) + max(a * C / T / clock(T), b * DRAM bytes / bandwidth); "
                 "C: the core's pipeline model (llvm-mca per hot block); a, c fitted on all devices "
                 "together, b >= 1 only where a point is memory-bound",
        "params": cal.params.to_mapping(),
        "acceptance": {"lodo_median_abs_error_max": LODO_MEDIAN_MAX, "lodo_worst_abs_error_max": LODO_WORST_MAX,
                       "lodo_median_abs_error": lodo["median_abs_error"],
                       "lodo_worst_abs_error": lodo["worst_abs_error"],
                       "met": lodo["median_abs_error"] <= LODO_MEDIAN_MAX
                       and lodo["worst_abs_error"] <= LODO_WORST_MAX},
        "fit_all": _split(cal.fit_all),
        "held_out": {name: _split(preds) for name, preds in cal.held_out.items()},
        "first_model_held_out": {name: _split(preds) for name, preds in cal.classcost.items()},
        "points": [{"point": a.point.name, "device": a.point.device, "core": a.point.core,
                    "sched_model": a.point.sched_model, "variant": a.point.variant,
                    "threads": a.point.threads, "measured_ms": a.point.measured_ms,
                    "instructions": a.point.instructions, "cycles": a.point.cycles,
                    "ipc": a.point.instructions / a.point.cycles, "ops": a.point.ops,
                    "dram_bytes": a.point.dram_bytes, "fit_all_ms": a.predicted_ms,
                    "fit_all_error": a.error,
                    **{f"{name}_ms": by_name[name][id(a.point)].predicted_ms for name in SPLITS},
                    **{f"{name}_error": by_name[name][id(a.point)].error for name in SPLITS}}
                   for a in cal.fit_all],
        "matrix": cal.matrix,
        "order_check": order_check(cal.matrix),
        "published": [asdict(p) for p in cal.published],
    }


# -- Markdown ----------------------------------------------------------------------

def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _apct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _summary_row(label: str, s: Mapping[str, Any]) -> List[str]:
    return [label, str(s["points"]), _apct(s["median_abs_error"]), _apct(s["worst_abs_error"]),
            s["worst_point"] or "-"]


def _error_table(first: str, points: str, rows: List[List[str]]) -> List[str]:
    return Table([first, points, "median abs error", "worst", "worst point"], rows, "lrrrl").markdown()


def _errors(title: str, split: Mapping[str, Any]) -> List[str]:
    rows = [_summary_row("all", split["all"])]
    for name in ("variant", "core", "threads"):
        rows += [_summary_row(g, s) for g, s in split[name].items()]
    return ["", f"### {title}", ""] + _error_table("subset", "points", rows)


def _summary(data: Mapping[str, Any]) -> List[str]:
    acc, p = data["acceptance"], data["params"]
    out = ["# Latency model calibration", "", f"Model: {data['model']}. See docs/latency.md.", "",
           "Fitted: " + ", ".join(f"{k} = {p[k]:.4g}" for k in PARAM_KEYS), "",
           f"Memory-bound points in the fit: {p['info'].get('memory_bound_points', 0)} (memory_scale is "
           "fitted only from such points; with none it stays 1, the datasheet peak).", "",
           f"Leave-one-device-out: median |error| {_apct(acc['lodo_median_abs_error'])} (limit "
           f"{_apct(acc['lodo_median_abs_error_max'])}), worst {_apct(acc['lodo_worst_abs_error'])} (limit "
           f"{_apct(acc['lodo_worst_abs_error_max'])}): **{'met' if acc['met'] else 'NOT met'}**", "",
           "Validated (core: numeric formats with published points): "
           + "; ".join(f"{c}: {', '.join(v)}" for c, v in p["validated"].items()), "",
           "## Errors", ""]
    out += _errors("Fitted on all points", data["fit_all"])
    for name, split in data["held_out"].items():
        out += _errors(name, split)
    out += ["", "### Comparison: the first model (two costs per class and core type), single-thread points",
            ""]
    out += _error_table("split", "points predicted", [_summary_row(name, split["all"])
                                  for name, split in data["first_model_held_out"].items()])
    out += ["", "Points whose core type has too few other points cannot be predicted by the first model "
            "and are missing from its rows."]
    return out


def _points(data: Mapping[str, Any]) -> List[str]:
    rows = [[p["point"], f"{p['core']} ({p['sched_model']})", f"{p['measured_ms']:g}", f"{p['instructions'] / 1e6:.1f}",
             f"{p['ipc']:.2f}", str(p["ops"]), f"{p['dram_bytes'] / 1e6:.1f}", _pct(p["fit_all_error"]),
             _pct(p["leave-one-point-out_error"]), _pct(p["leave-one-device-out_error"]),
             _pct(p["leave-one-architecture-out_error"])] for p in data["points"]]
    return ["", "## Each point", ""] + Table(
        ["point", "core (model)", "measured ms", "M instr", "IPC", "ops", "DRAM MB", "fit-all", "LOPO", "LODO", "LOAO"],
        rows, "ll" + "r" * 9).markdown()


def _matrix_cell(r: Optional[Mapping[str, Any]]) -> str:
    if r is None:
        return "-"
    if not r["loaded"]:
        return "not loadable"
    return f"{r['latency_ms']:.1f}" + ("" if r["validated"] else "*")


def _matrix(data: Mapping[str, Any]) -> List[str]:
    if not data["matrix"]:
        return []
    columns = [(f, v) for f in PUBLISHED_ORDER for v in PUBLISHED_FORMATS]
    rows = []
    for device in DEVICES.names():
        found = {(r["family"], r["variant"]): r for r in data["matrix"] if r["device"] == device}
        if found:
            rows.append([device, get_device(device).sched_model] + [_matrix_cell(found.get(c)) for c in columns])
    out = ["", "## Estimates, full-size models, one thread (ms)", ""]
    out += Table(["device", "model"] + [f"{f} {v}" for f, v in columns], rows, "ll" + "r" * len(columns)).markdown()
    out += ["", "\\* unvalidated: no published point of this core and numeric format was in the fit."]
    if data["order_check"]:
        out += ["", "## Order of the four models per device (estimates, one thread)", ""]
        out += Table(["device", "variant", "estimated order, slowest first", "as published"],
                     [[r["device"], r["variant"], " > ".join(r["order"]), "yes" if r["as_published"] else "NO"]
                      for r in data["order_check"]], "llll").markdown()
    return out


def _sources(data: Mapping[str, Any]) -> List[str]:
    rows = [[p["model"], p["variant"], p["device"], f"{p['latency_ms']:g}", p["runtime"], p["source"]]
            for p in data["published"]]
    return ["", "## Published points", ""] + Table(["model", "variant", "device", "ms", "runtime", "source"],
                                                   rows, "lllrll").markdown()


def report_markdown(data: Mapping[str, Any]) -> str:
    """The calibration report (markdown) from :func:`report_data`."""
    return "\n".join(_summary(data) + _points(data) + _matrix(data) + _sources(data)) + "\n"


def write_report(cal: Calibration, out_dir: Path) -> Tuple[Path, Path]:
    """Writes ``report.md`` and ``calibration.json`` under ``out_dir``."""
    data = report_data(cal)
    md, js = Path(out_dir) / "report.md", Path(out_dir) / "calibration.json"
    atomic_write_json(js, data)
    atomic_write_text(md, report_markdown(data))
    return md, js

"""The calibration procedure: measure the published architectures, fit, validate.

:func:`calibrate` measures the published architectures (:mod:`pipeline.latency.published`)
on the cores that emulate the published devices (:func:`pipeline.latency.reference.measure`),
fits the cost model of :mod:`pipeline.latency.model` on all points and under
leave-one-out, and gives every device profile its parameters: its core's fitted
costs, or another core's scaled (:data:`ASSUMED_CORES`, unvalidated), or none.
It writes nothing: :mod:`pipeline.latency.calibrate` does.
"""

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.devices.profiles import DEVICES, DeviceProfile, get_device
from pipeline.devices.targets import RUNTIMES
from pipeline.errors import ConfigError, RuntimeIncompatibleError
from pipeline.latency.model import (CLASSES, DEFAULT_TIES, LatencyParams, Point, Prediction, error_summary,
                                    fit_costs, fit_parallel_fraction, leave_one_out, predict,
                                    predict_cycles)
from pipeline.latency.params import variant_in_fit
from pipeline.latency.published import (PUBLISHED_ORDER, PUBLISHED_RUNTIMES, PUBLISHED_VARIANTS,
                                        PublishedPoint, load_multi_thread, load_published)
from pipeline.latency.reference import VARIANT_NAMES, ModelSpec, measure, noop

Log = Callable[[str], None]


@dataclass(frozen=True)
class Assumption:
    """Costs for a core type with no published point: another core's, scaled.

    These are guesses, stated in the parameters file and the report; estimates on
    such a core are marked unvalidated.
    """

    base_core: str
    factor: float
    reason: str


ASSUMED_CORES = {
    "neoverse-n1": Assumption(
        "cortex-a76", 1.0,
        "Neoverse N1 is derived from Cortex-A76; its costs are the cortex-a76 group's, "
        "which were fitted on the Pixel 3a's Cortex-A75-based cores"),
    "cortex-a53": Assumption(
        "cortex-a72", 2.0,
        "Cortex-A53 is in-order, 2-wide, with a 64-bit NEON datapath (a 128-bit SIMD "
        "instruction occupies it twice); assumed twice the cycles per instruction of the "
        "cortex-a72 group (fitted on the out-of-order Kryo / Cortex-A73 cores of Pixel and Pixel 2)"),
}

FULL_SIZE = dict(alpha=1.0, input_size=224, classes=1000)
# Alternatives to DEFAULT_TIES shown in the report (sensitivity, not selection).
ALTERNATIVE_TIES = {
    "one cost (a plain CPI)": (tuple(CLASSES),),
    "simd_mac | rest (chosen)": DEFAULT_TIES,
    "all SIMD | rest": (("simd_mac", "simd_other"), ("ldst", "branch", "scalar")),
    "simd_mac | ldst | rest": (("simd_mac",), ("ldst",), ("simd_other", "branch", "scalar")),
    "simd_mac | simd_other | rest": (("simd_mac",), ("simd_other",), ("ldst", "branch", "scalar")),
}


def runtime_profile(profile: DeviceProfile, runtime: str) -> DeviceProfile:
    """``profile`` with another guest runtime (same core and clock)."""
    return replace(profile, runtime=runtime, runtime_version=RUNTIMES[runtime].version)


def calibration_points(published: Sequence[PublishedPoint], log: Log = noop,
                       runtime=None) -> List[Point]:
    """Measures each published architecture on its device's core and runtime."""
    points = []
    for pub in published:
        profile = runtime_profile(get_device(pub.device), PUBLISHED_RUNTIMES[pub.runtime])
        spec = ModelSpec(pub.model, variant=PUBLISHED_VARIANTS[pub.variant], **FULL_SIZE)
        m = measure(spec, profile, log, runtime)
        points.append(Point(pub.name, profile.qemu_cpu, m.instructions_by_class,
                            profile.clock_ghz, pub.latency_ms, pub.device, spec.variant))
    return points


def thread_pairs(published: Sequence[PublishedPoint],
                 multi: Optional[Mapping[Tuple[str, str], float]] = None
                 ) -> List[Tuple[str, int, float, float]]:
    """(label, threads, single-thread ms, multi-thread ms) of the published multi-thread table."""
    multi = load_multi_thread() if multi is None else multi
    single = {(p.model, p.device): p.latency_ms for p in published
              if p.variant == "float32" and p.runtime == "xnnpack-2020"}
    return [(f"{model} {device}", get_device(device).cores, single[(model, device)], ms)
            for (model, device), ms in multi.items() if (model, device) in single]


def profile_params(costs: Mapping[str, Mapping[str, float]], parallel_fraction: float,
                   points: Sequence[Point], loo: Sequence[Prediction]
                   ) -> Dict[str, Optional[LatencyParams]]:
    """The parameters of every profile: its core's fitted costs, or assumed ones, or None."""
    out: Dict[str, Optional[LatencyParams]] = {}
    for name in DEVICES.names():
        core = get_device(name).qemu_cpu
        if core in costs:
            core_loo = [q for q in loo if q.point.core == core]
            summary = error_summary(core_loo)
            info = {"device_points": sum(1 for p in points if p.device == name),
                    "core_points": len(core_loo),
                    "core_int8_points": sum(1 for p in points
                                            if p.core == core and p.variant == "int8"),
                    "loo_median_abs_error_pct": round(100 * summary["median_abs_error"], 2),
                    "loo_worst_abs_error_pct": round(100 * summary["worst_abs_error"], 2)}
            out[name] = LatencyParams(dict(costs[core]), parallel_fraction, True, info)
        elif core in ASSUMED_CORES and ASSUMED_CORES[core].base_core in costs:
            a = ASSUMED_CORES[core]
            out[name] = LatencyParams({c: a.factor * v for c, v in costs[a.base_core].items()},
                                      parallel_fraction, False,
                                      {"device_points": 0, "core_points": 0, "core_int8_points": 0})
        else:
            out[name] = None
    return out


def params_notes(params: Mapping[str, Optional[LatencyParams]]) -> Dict[str, str]:
    """A comment for each device whose parameters are assumed rather than fitted."""
    notes = {}
    for name, p in params.items():
        core = get_device(name).qemu_cpu
        if p is not None and not p.validated and core in ASSUMED_CORES:
            a = ASSUMED_CORES[core]
            notes[name] = (f"ASSUMED, NOT FITTED (validated: 0): no published latency of a {core} "
                           f"core exists in the calibration set.\n"
                           f"Costs = {a.factor:g} x the {a.base_core} group's. {a.reason}.")
    return notes


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` found (also written as JSON)."""

    points: List[Point]
    fit_all: List[Prediction]
    loo: List[Prediction]
    costs: Dict[str, Dict[str, float]]
    parallel_fraction: float
    thread_pairs: List[Tuple[str, int, float, float]]
    params: Dict[str, Optional[LatencyParams]]
    matrix: List[Dict[str, Any]]
    sensitivity: List[Dict[str, Any]]
    published: List[PublishedPoint]


def _ms(by_class, params: LatencyParams, clock: float) -> float:
    return predict_cycles(by_class, params.costs) / (clock * 1e6)


def estimate_matrix(params: Mapping[str, Optional[LatencyParams]], log: Log = noop,
                    runtime=None) -> List[Dict[str, Any]]:
    """Single-thread estimates of the full-size families, float32 and int8, on every profile."""
    rows = []
    for name in DEVICES.names():
        profile = get_device(name)
        p = params.get(name)
        for family in PUBLISHED_ORDER:
            for variant in VARIANT_NAMES:
                spec = ModelSpec(family, variant=variant, **FULL_SIZE)
                row = {"device": name, "family": family, "variant": variant,
                       "runtime": f"{profile.runtime} {profile.runtime_version}",
                       "validated": None if p is None else p.validated,
                       "variant_in_fit": None if p is None else variant_in_fit(p, variant)}
                try:
                    m = measure(spec, profile, log, runtime)
                except RuntimeIncompatibleError as e:  # a result for the report, not a failure
                    row.update(loaded=False, error=str(e))
                    rows.append(row)
                    continue
                row.update(loaded=True, instructions=m.instructions,
                           latency_ms=None if p is None else _ms(m.instructions_by_class, p,
                                                                 profile.clock_ghz))
                rows.append(row)
    return rows


def _sensitivity_row(label: str, pts: Sequence[Point], ties) -> Dict[str, Any]:
    def fit(ps):
        return fit_costs(ps, ties)
    try:
        a, loo = error_summary(predict(pts, fit(pts))), error_summary(leave_one_out(pts, fit))
    except ConfigError as e:
        return {"model": label, "error": str(e)}
    return {"model": label, "costs_per_core": len(ties),
            "fit_median_abs_error": a["median_abs_error"],
            "fit_worst_abs_error": a["worst_abs_error"],
            "loo_median_abs_error": loo["median_abs_error"],
            "loo_worst_abs_error": loo["worst_abs_error"], "loo_worst_point": loo["worst_point"]}


def sensitivity(published: Sequence[PublishedPoint], points: Sequence[Point],
                log: Log = noop, runtime=None) -> List[Dict[str, Any]]:
    """Fit and leave-one-out errors of other cost structures on the same points."""
    rows = [_sensitivity_row(label, points, ties) for label, ties in ALTERNATIVE_TIES.items()]
    # The same chosen model with the int8 points measured on the profile's runtime
    # (XNNPACK int8) instead of builtin kernels: how much the runtime choice matters.
    alt = []
    for pub, pt in zip(published, points):
        if pub.runtime == "tflite-2019":
            spec = ModelSpec(pub.model, variant=PUBLISHED_VARIANTS[pub.variant], **FULL_SIZE)
            m = measure(spec, get_device(pub.device), log, runtime)
            pt = replace(pt, by_class=m.instructions_by_class)
        alt.append(pt)
    if any(pub.runtime == "tflite-2019" for pub in published):
        rows.append(_sensitivity_row("simd_mac | rest, int8 points run on XNNPACK (litert)", alt,
                                     DEFAULT_TIES))
    return rows


def calibrate(published: Optional[Sequence[PublishedPoint]] = None, log: Log = noop,
              matrix: bool = True, runtime=None) -> Calibration:
    """Measures, fits and validates the cost model (does not write anything).

    Args:
        published: the published points (default :func:`load_published`).
        matrix: also estimate every full-size family x variant on every profile
            (the order check and the int8 speed-ups of the report).

    Raises:
        ConfigError: a core with too few points for its costs.
        DeviceUnavailableError: the ARM runtime or an emulated run failed.
    """
    published = list(published if published is not None else load_published())
    if runtime is None:
        from pipeline.devices.runtime import ensure_runtime

        runtime = ensure_runtime(progress=log)
    points = calibration_points(published, log, runtime)
    costs = fit_costs(points)
    fit_all = predict(points, costs)
    loo = leave_one_out(points)
    pairs = thread_pairs(published)
    p = fit_parallel_fraction([(t, one, many) for _, t, one, many in pairs])
    params = profile_params(costs, p, points, loo)
    rows = estimate_matrix(params, log, runtime) if matrix else []
    sens = sensitivity(published, points, log, runtime)
    return Calibration(points, fit_all, loo, costs, p, pairs, params, rows, sens, published)

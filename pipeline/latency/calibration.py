"""The calibration procedure: measure the published architectures, fit, cross-validate.

:func:`calibrate` runs each published architecture on the emulated core of its
device (:func:`pipeline.latency.reference.measure`, cached), prices the run with
the device's pipeline model (:mod:`pipeline.latency.cycles`) and the graph's
memory traffic, and fits the three global numbers of :mod:`pipeline.latency.model`
on every published point, single- and multi-threaded. Held-out errors come
leave-one-point-out, leave-one-device-out and leave-one-architecture-out, per core
and per numeric format. The first model (two fitted costs per instruction class and
core, :mod:`pipeline.latency.classcost`) is cross-validated the same way as a
comparison row. It writes nothing: :mod:`pipeline.latency.calibrate` does.
"""

import statistics
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.devices.profiles import DEVICES, DeviceProfile, get_device
from pipeline.devices.targets import RUNTIMES
from pipeline.errors import ConfigError, Log, RuntimeIncompatibleError
from pipeline.latency import classcost
from pipeline.latency.model import MEMORY_SCALE_MAX, PARAM_KEYS, Device, LatencyParams, predict
from pipeline.latency.published import (PUBLISHED_FORMATS, PUBLISHED_ORDER, PUBLISHED_RUNTIMES,
                                        PUBLISHED_VARIANTS, PublishedPoint, load_multi_thread, load_published)
from pipeline.latency.reference import ModelSpec, measure, measure_all, noop
from pipeline.pool import open_pool
from pipeline.latency.traffic import GraphTraffic

FULL_SIZE = dict(alpha=1.0, input_size=224, classes=1000)
# Starting values of memory_scale, 1 to MEMORY_SCALE_MAX in steps of 2 ** (1/4).
MEMORY_SCALE_GRID = tuple(2 ** (k / 4) for k in range(9))


def runtime_profile(profile: DeviceProfile, runtime: str) -> DeviceProfile:
    """``profile`` with another guest runtime (same core and clock)."""
    return replace(profile, runtime=runtime, runtime_version=RUNTIMES[runtime].version)


@dataclass(frozen=True)
class Point:
    """One published latency with what the model needs to predict it.

    Attributes:
        name: a label ("mobilenet_v1 float32 pixel2 1t").
        model, device, core, variant: what was measured where (core: the profile's).
        sched_model: the LLVM model that priced the run.
        threads: interpreter threads of the measurement.
        measured_ms: the published latency.
        cycles: the pipeline model's cycles of one single-threaded inference.
        instructions: executed instructions of that inference.
        ops: graph operators; dram_bytes: bytes to and from DRAM on this device.
        device_figures: the profile's clocks, cores, cache and bandwidth.
        by_class: instructions per class (for the first model's comparison row).
        emulated: the qemu CPU the point ran on (the first model kept its costs per
            emulated core); empty means the same as ``core``.
    """

    name: str
    model: str
    device: str
    core: str
    sched_model: str
    variant: str
    threads: int
    measured_ms: float
    cycles: float
    instructions: int
    ops: int
    dram_bytes: float
    device_figures: Device
    by_class: Mapping[str, int]
    emulated: str = ""

    def features(self) -> Tuple[float, float, float]:
        """Milliseconds per unit of each parameter (:data:`PARAM_KEYS` order): compute,
        overhead and memory, the estimate being ``c*overhead + max(a*compute, b*memory)``."""
        b = predict(self.cycles, self.ops, self.dram_bytes, self.device_figures,
                    {k: 1.0 for k in PARAM_KEYS}, self.threads)
        return b.compute_ms, b.overhead_ms, b.memory_ms


def fit_params(points: Sequence[Point]) -> Dict[str, float]:
    """The global parameters: least squares on relative error over ``points``.

    Minimises ``sum(((predicted - measured) / measured) ** 2)``: a 12 ms model weighs
    like an 88 ms one. ``a`` and ``c`` start from non-negative least squares on the
    compute-bound form (linear in them); ``memory_scale`` is searched on a grid in
    ``[1, MEMORY_SCALE_MAX]`` with the three refined together. Where no point is
    memory-bound at any ``b`` the fit cannot see ``b``; it then stays 1 (the peak,
    a bound): of equally good fits the smallest ``b`` is kept.

    Raises:
        ConfigError: fewer points than parameters, or the compute term got no weight.
    """
    import numpy as np
    from scipy.optimize import least_squares, nnls

    if len(points) < len(PARAM_KEYS):
        raise ConfigError(f"{len(points)} point(s) cannot determine {len(PARAM_KEYS)} parameters")
    f = np.array([p.features() for p in points]) / np.array([p.measured_ms for p in points])[:, None]
    scale = f[:, :2].max(axis=0)
    scale[scale == 0] = 1.0
    ac, _ = nnls(f[:, :2] / scale, np.ones(len(points)))
    ac = ac / scale
    if ac[0] <= 0:
        raise ConfigError("the fit gave the compute term no weight; the points cannot calibrate it")

    def residuals(theta):
        a, c, b = theta
        return c * f[:, 1] + np.maximum(a * f[:, 0], b * f[:, 2]) - 1.0

    best = None
    for b0 in MEMORY_SCALE_GRID:
        start = np.array([ac[0], ac[1], b0])
        r = least_squares(residuals, start, bounds=([1e-12, 0.0, 1.0], [np.inf, np.inf, MEMORY_SCALE_MAX]),
                          x_scale="jac", xtol=1e-15, ftol=1e-15, gtol=1e-15)
        cost = float(np.sum(residuals(r.x) ** 2))
        # Ties (b invisible to every point) keep the smallest b: the grid runs upwards.
        if best is None or cost < best[0] * (1 - 1e-9) - 1e-18:
            best = (cost, r.x)
    a, c, b = best[1]
    if not np.any(b * f[:, 2] > a * f[:, 0]):
        a, c, b = ac[0], ac[1], 1.0  # no point memory-bound: the linear fit, exactly, and b at the peak
    return {k: float(v) for k, v in zip(PARAM_KEYS, (a, c, b))}


def memory_bound_points(points: Sequence[Point], params: Mapping[str, float]) -> List[str]:
    """The names of the points whose estimate the memory time sets."""
    return [p.name for p in points
            if predict(p.cycles, p.ops, p.dram_bytes, p.device_figures, params, p.threads).memory_bound]


@dataclass(frozen=True)
class Prediction:
    point: Point
    predicted_ms: float

    @property
    def error(self) -> float:
        return (self.predicted_ms - self.point.measured_ms) / self.point.measured_ms


def predict_points(points: Sequence[Point], params: Mapping[str, float]) -> List[Prediction]:
    return [Prediction(p, predict(p.cycles, p.ops, p.dram_bytes, p.device_figures, params, p.threads).ms)
            for p in points]


def held_out(points: Sequence[Point], group: Callable[[Point], str],
             fit: Callable[[Sequence[Point]], Mapping[str, float]] = fit_params) -> List[Prediction]:
    """Each group's points predicted by a fit on the other groups' (same order as ``points``)."""
    out: Dict[int, Prediction] = {}
    for g in sorted({group(p) for p in points}):
        rest = [p for p in points if group(p) != g]
        params = fit(rest)
        for i, p in enumerate(points):
            if group(p) == g:
                out[i] = predict_points([p], params)[0]
    return [out[i] for i in range(len(points))]


SPLITS = {
    "leave-one-point-out": lambda p: p.name,
    "leave-one-device-out": lambda p: p.device,
    "leave-one-architecture-out": lambda p: p.model,
}


def error_summary(predictions: Sequence[Prediction]) -> Dict[str, Any]:
    """Median and worst absolute relative error (fractions) and the worst point's name."""
    if not predictions:
        return {"median_abs_error": None, "worst_abs_error": None, "worst_point": None, "points": 0}
    errs = [abs(p.error) for p in predictions]
    worst = max(predictions, key=lambda p: abs(p.error))
    return {"median_abs_error": statistics.median(errs), "worst_abs_error": abs(worst.error),
            "worst_point": worst.point.name, "points": len(predictions)}


def breakdown(predictions: Sequence[Prediction]) -> Dict[str, Dict[str, Any]]:
    """Error summaries per numeric format, per core and per thread count."""
    keys = {"variant": lambda p: p.variant, "core": lambda p: p.core,
            "threads": lambda p: "1 thread" if p.threads == 1 else "multi-thread"}
    return {name: {g: error_summary([q for q in predictions if key(q.point) == g])
                   for g in sorted({key(q.point) for q in predictions})}
            for name, key in keys.items()}


# -- measuring -----------------------------------------------------------------------

def _point(pub_name: str, pub_model: str, device: str, spec: ModelSpec, profile: DeviceProfile,
           threads: int, ms: float, log: Log, runtime, variant: str) -> Point:
    from pipeline.latency.cycles import core_cycles

    m = measure(spec, profile, log, runtime)
    traffic = GraphTraffic.from_dict(m.traffic)
    cc = core_cycles(m.block_profile, profile.sched_model, profile.qemu_cpu)
    return Point(pub_name, pub_model, device, profile.core, profile.sched_model, variant, threads, ms, cc.cycles,
                 cc.instructions, traffic.op_count, traffic.dram_bytes(profile.cache_kb * 1024),
                 Device.of(profile), dict(m.instructions_by_class), profile.qemu_cpu)


def _published_runs(published: Sequence[PublishedPoint], multi: Mapping[Tuple[str, str], float]) -> List[tuple]:
    """(name, model, device, spec, profile, threads, ms) of every published point, single-thread
    then multi-thread."""
    runs = []
    for pub in published:
        profile = runtime_profile(get_device(pub.device), PUBLISHED_RUNTIMES[pub.runtime])
        spec = ModelSpec(pub.model, variant=PUBLISHED_VARIANTS[pub.variant], **FULL_SIZE)
        runs.append((f"{pub.name} 1t", pub.model, pub.device, spec, profile, 1, pub.latency_ms))
    for (model, device), ms in multi.items():
        profile = runtime_profile(get_device(device), PUBLISHED_RUNTIMES["xnnpack-2020"])
        t = profile.cores
        runs.append((f"{model} float32 {device} {t}t", model, device, ModelSpec(model, variant="float32", **FULL_SIZE),
                     profile, t, ms))
    return runs


def calibration_points(published: Sequence[PublishedPoint],
                       multi: Optional[Mapping[Tuple[str, str], float]] = None,
                       log: Log = noop, runtime=None, workers: int = 1) -> List[Point]:
    """Every published point, single-thread then multi-thread, with its emulated run priced.

    The runs the cache lacks are measured first, as jobs of a pool
    (:func:`pipeline.pool.open_pool`: ``workers`` processes here, or the Ray cluster this
    process joined); they are priced here.
    """
    runs = _published_runs(published, load_multi_thread() if multi is None else multi)
    with open_pool(workers) as pool:
        measure_all([(r[3], r[4]) for r in runs], pool, log)
    return [_point(name, model, device, spec, profile, threads, ms, log, runtime, spec.variant)
            for name, model, device, spec, profile, threads, ms in runs]


def validated_cores(points: Sequence[Point]) -> Dict[str, Tuple[str, ...]]:
    """Core -> numeric formats with published points (what estimates may call validated)."""
    out: Dict[str, set] = {}
    for p in points:
        out.setdefault(p.core, set()).add(p.variant)
    return {core: tuple(v for v in PUBLISHED_FORMATS if v in got) for core, got in sorted(out.items())}


def validation_errors(predictions: Sequence[Prediction]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Core -> numeric format -> the held-out error on that pair's points: what a validated
    estimate of that core and format states (``points``, ``median_abs_error_pct``,
    ``worst_abs_error_pct``). ``predictions`` are held out (by device, in :func:`calibrate`),
    so a pair's figure says how far off the model was on those points without them."""
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for core in sorted({q.point.core for q in predictions}):
        for variant in PUBLISHED_FORMATS:
            s = error_summary([q for q in predictions if (q.point.core, q.point.variant) == (core, variant)])
            if s["points"]:
                out.setdefault(core, {})[variant] = {
                    "points": s["points"], "median_abs_error_pct": round(100 * s["median_abs_error"], 1),
                    "worst_abs_error_pct": round(100 * s["worst_abs_error"], 1)}
    return out


# -- the first model, as a comparison row ----------------------------------------------

def classcost_held_out(points: Sequence[Point], group: Callable[[Point], str]) -> List[Prediction]:
    """The first model (two costs per class and core type, :mod:`classcost`) held out by
    ``group``, on the single-thread points; a point whose core has too few other
    points gets no prediction (it is left out of the list)."""
    single = [p for p in points if p.threads == 1]

    def as_class_point(p: Point) -> classcost.Point:
        # The first model kept its costs per emulated core (qemu CPU): pixel1 and
        # pixel2 shared the cortex-a72 costs.
        return classcost.Point(p.name, emulated(p), p.by_class, p.device_figures.clock_1t_ghz,
                               p.measured_ms, p.device, p.variant)

    def emulated(p: Point) -> str:
        return p.emulated or p.core

    out = []
    for p in single:
        rest = [as_class_point(q) for q in single if group(q) != group(p)]
        try:
            costs = classcost.fit_costs(rest)
        except ConfigError:
            continue
        if emulated(p) not in costs:
            continue
        out.append(Prediction(p, classcost.predict_cycles(p.by_class, costs[emulated(p)])
                              / (p.device_figures.clock_1t_ghz * 1e6)))
    return out


# -- the whole calibration --------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` found (also written as JSON)."""

    points: List[Point]
    params: LatencyParams
    fit_all: List[Prediction]
    held_out: Dict[str, List[Prediction]]
    classcost: Dict[str, List[Prediction]]
    matrix: List[Dict[str, Any]]
    published: List[PublishedPoint]


def estimate_matrix(params: LatencyParams, log: Log = noop, runtime=None, workers: int = 1) -> List[Dict[str, Any]]:
    """One-thread estimates of the full-size families, float32 and int8, on every profile (the
    runs the cache lacks measured first as jobs of a pool, as in :func:`calibration_points`)."""
    from pipeline.latency.estimate import estimate_run

    cells = [(name, get_device(name), family, variant, ModelSpec(family, variant=variant, **FULL_SIZE))
             for name in DEVICES.names() for family in PUBLISHED_ORDER for variant in PUBLISHED_FORMATS]
    with open_pool(workers) as pool:
        measure_all([(spec, profile) for _, profile, _, _, spec in cells], pool, log)
    rows = []
    for name, profile, family, variant, spec in cells:
        row = {"device": name, "family": family, "variant": variant,
               "runtime": f"{profile.runtime} {profile.runtime_version}",
               "validated": params.is_validated(profile.core, variant)}
        try:
            m = measure(spec, profile, log, runtime)
        except RuntimeIncompatibleError as e:  # a result for the report, not a failure
            rows.append(dict(row, loaded=False, error=str(e)))
            continue
        est = estimate_run(m.block_profile, GraphTraffic.from_dict(m.traffic), profile, variant, 1, params)
        rows.append(dict(row, loaded=True, instructions=m.instructions,
                         latency_ms=est["latency_ms"], cycles=est["cycles_single_thread"],
                         ipc=est["ipc"], pipeline_model=est["pipeline_model"]))
    return rows


def calibrate(published: Optional[Sequence[PublishedPoint]] = None, log: Log = noop,
              matrix: bool = True, runtime=None, measured: Sequence[Point] = ()) -> Calibration:
    """Measures, fits and cross-validates the latency model (writes nothing).

    Args:
        published: the published single-thread points (default :func:`load_published`);
            the multi-thread table is always the package's.
        measured: points measured on real devices (:mod:`pipeline.latency.measured`),
            fitted and held out together with the published ones.
        matrix: also estimate every full-size family x variant on every profile
            (the order check of the report).

    Raises:
        ConfigError: too few points for the parameters.
        DeviceUnavailableError: the ARM runtime, an emulated run or LLVM failed.
    """
    published = list(published if published is not None else load_published())
    if runtime is None:
        from pipeline.devices.runtime import ensure_runtime

        runtime = ensure_runtime(progress=log)
    points = calibration_points(published, log=log, runtime=runtime) + list(measured)
    numbers = fit_params(points)
    outs = {name: held_out(points, key) for name, key in SPLITS.items()}
    lodo = error_summary(outs["leave-one-device-out"])
    info = {"points": len(points), "single_thread_points": sum(p.threads == 1 for p in points),
            "measured_points": len(measured),
            "lodo_median_abs_error_pct": round(100 * lodo["median_abs_error"], 2),
            "lodo_worst_abs_error_pct": round(100 * lodo["worst_abs_error"], 2),
            "memory_bound_points": len(memory_bound_points(points, numbers)),
            # What a validated estimate states: the error on its core and format's points,
            # each held out with its device.
            "validation_lodo": validation_errors(outs["leave-one-device-out"])}
    params = LatencyParams(validated=validated_cores(points), info=info, **numbers)
    comparison = {name: classcost_held_out(points, key) for name, key in SPLITS.items()}
    rows = estimate_matrix(params, log, runtime) if matrix else []
    return Calibration(points, params, predict_points(points, numbers), outs, comparison, rows, published)


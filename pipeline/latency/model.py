"""Estimated latency from an emulated run's instruction counts: the cost model.

An emulated run counts the instructions of one inference, split by class (see
``pipeline/devices/plugin/a64_classes.h``). The cost model turns them into cycles
on a profile's core and milliseconds at its clock::

    cycles = sum over classes c of cost_c * count_c          (one thread)
    ms     = cycles / (clock_ghz * 1e6) / speedup(threads)
    speedup(T) = 1 / ((1 - p) + p / T),  T = min(threads, profile cores)   (Amdahl)

``cost_c`` (cycles per executed instruction of class c) is a property of the core
type, fitted by ``mobile-model calibrate`` on published single-thread latencies
(non-negative least squares on relative error, :func:`fit_costs`); ``p`` (the
parallel fraction) is fitted on published multi-thread / single-thread pairs. The
parameters are data, one mapping per device profile (:data:`PARAM_KEYS`) in a
parameters file (:mod:`pipeline.latency.params`), not constants in code. A device
without them gets no estimate (``latency_ms`` stays None) rather than a made-up one.
See docs/latency.md for the assumptions and the measured error.

This module is pure (numpy/scipy, no TensorFlow, no qemu): measuring lives in
:mod:`pipeline.latency.reference`, the calibration procedure in
:mod:`pipeline.latency.fit`.
"""

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.devices.parse import CLASSES
from pipeline.errors import ConfigError

# Version of the cost model's formula and parameter names; parameters fitted for
# another version are rejected rather than misread.
MODEL_VERSION = 1

COST_KEYS = tuple(f"cost_{c}" for c in CLASSES)
REQUIRED_KEYS = ("model_version",) + COST_KEYS + ("thread_parallel_fraction", "validated")
# Figures of the fit kept next to the parameters, for reports (not used to estimate):
# published points of this device, of its core type, and of its core type in int8,
# and the leave-one-out error over the core type's points (absent when unvalidated).
INFO_KEYS = ("device_points", "core_points", "core_int8_points", "loo_median_abs_error_pct",
             "loo_worst_abs_error_pct")
PARAM_KEYS = REQUIRED_KEYS + INFO_KEYS


@dataclass(frozen=True)
class LatencyParams:
    """The cost-model parameters of one device profile.

    Attributes:
        costs: cycles per executed instruction, one entry per class of ``CLASSES``.
        parallel_fraction: Amdahl parallel fraction ``p`` in [0, 1].
        validated: whether published measurements of this core type were in the
            fit (False: the costs are assumed, the estimate is unvalidated).
        info: the fit's figures (``INFO_KEYS``), for reports.
    """

    costs: Mapping[str, float]
    parallel_fraction: float
    validated: bool
    info: Mapping[str, float]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "latency parameters"
                     ) -> Optional["LatencyParams"]:
        """Validates one device's parameters mapping; None when it is empty.

        Raises:
            ConfigError: an unknown or missing key (the message lists the valid
                ones), another model version, or a value out of range.
        """
        if not data:
            return None
        for key in data:
            if key not in PARAM_KEYS:
                raise ConfigError(f"{source}: unknown key {key!r}; valid keys: {', '.join(PARAM_KEYS)}")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing key(s) {', '.join(missing)}; "
                              f"run `mobile-model calibrate` to fill them")
        values = {}
        for key, v in data.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{source}: {key} must be a finite number, got {v!r}")
            values[key] = float(v)
        if values["model_version"] != MODEL_VERSION:
            raise ConfigError(f"{source}: fitted for cost model version {values['model_version']:g}, "
                              f"this code reads version {MODEL_VERSION}; run `mobile-model calibrate`")
        for key in COST_KEYS:
            if values[key] < 0:
                raise ConfigError(f"{source}: {key} must be >= 0 cycles per instruction, got {values[key]:g}")
        if not any(values[k] > 0 for k in COST_KEYS):
            raise ConfigError(f"{source}: every cost_* is 0; an estimate would be 0 ms")
        p = values["thread_parallel_fraction"]
        if not 0 <= p <= 1:
            raise ConfigError(f"{source}: thread_parallel_fraction must be in [0, 1], got {p:g}")
        if values["validated"] not in (0.0, 1.0):
            # Parameters files hold numbers only, so the flag is 1 (validated) or 0.
            raise ConfigError(f"{source}: validated must be 1 (fitted on published points) "
                              f"or 0 (assumed), got {values['validated']:g}")
        return cls(costs={c: values[f"cost_{c}"] for c in CLASSES}, parallel_fraction=p,
                   validated=values["validated"] == 1.0,
                   info={k: values[k] for k in INFO_KEYS if k in values})

    def to_mapping(self) -> Dict[str, float]:
        """The parameters as a mapping of numbers (what a parameters file holds)."""
        d: Dict[str, float] = {"model_version": MODEL_VERSION}
        d.update({f"cost_{c}": float(self.costs[c]) for c in CLASSES})
        d["thread_parallel_fraction"] = float(self.parallel_fraction)
        d["validated"] = 1 if self.validated else 0
        d.update({k: self.info[k] for k in INFO_KEYS if k in self.info})
        return d


def _counts(by_class: Mapping[str, int]) -> Dict[str, float]:
    missing = [c for c in CLASSES if c not in by_class]
    if missing:
        raise ConfigError(f"instruction counts lack class(es) {', '.join(missing)}; "
                          f"expected {', '.join(CLASSES)}")
    return {c: float(by_class[c]) for c in CLASSES}


def predict_cycles(by_class: Mapping[str, int], costs: Mapping[str, float]) -> float:
    """Cycles of one single-threaded inference: ``sum(costs[c] * by_class[c])``."""
    n = _counts(by_class)
    return sum(float(costs[c]) * n[c] for c in CLASSES)


def speedup(threads: int, parallel_fraction: float, cores: Optional[int] = None) -> float:
    """Amdahl speed-up of ``threads`` over one thread, at most ``cores`` of them useful.

    Threads beyond the device's big cores land on little cores or share a big one:
    the model gives them no further speed-up.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    t = min(threads, cores) if cores else threads
    p = float(parallel_fraction)
    return 1.0 / ((1.0 - p) + p / t)


def estimate_ms(by_class: Mapping[str, int], params: Mapping[str, Any], clock_ghz: float,
                threads: int = 1, cores: Optional[int] = None) -> Optional[float]:
    """Milliseconds for one inference, or None without fitted parameters.

    Args:
        by_class: instructions of one single-threaded inference, per class.
        params: a device's parameters mapping (see :class:`LatencyParams`).
        clock_ghz: the device's big-core clock.
        threads: interpreter threads on the device.
        cores: the device's big cores (threads beyond them add nothing).

    Raises:
        ConfigError: malformed parameters or counts.
    """
    p = LatencyParams.from_mapping(params)
    if p is None or not by_class:
        return None
    cycles = predict_cycles(by_class, p.costs)
    return cycles / (clock_ghz * 1e6) / speedup(threads, p.parallel_fraction, cores)


def attach_latency(result: Dict[str, Any], device: str, threads: int) -> None:
    """Adds ``latency_ms`` (None when not estimable) and ``latency_validated`` to a result dict.

    The counts should come from a single-threaded run (``counts_exact``): the runs
    of a multi-threaded interpreter also count its workers' spin-waits, so their
    estimate is an overestimate; ``threads`` then scales by the model instead. The
    parameters come from :func:`pipeline.latency.params.params_file`.
    """
    from pipeline.devices.profiles import get_device
    from pipeline.latency.params import device_params

    profile = get_device(device)
    params, _, _ = device_params(profile.name)
    if not result.get("loaded") or params is None:
        result["latency_ms"] = None
        result["latency_validated"] = None
        return
    result["latency_ms"] = estimate_ms(result.get("instructions_by_class") or {}, params.to_mapping(),
                                       profile.clock_ghz, threads, profile.cores)
    result["latency_validated"] = params.validated


# -- fitting ---------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One published measurement with the counts of its emulated run.

    Attributes:
        name: a label for reports ("mobilenet_v1 float32 pixel2").
        core: the group whose costs explain it (the qemu CPU model).
        by_class: instructions of one inference, per class.
        clock_ghz: the device's clock.
        measured_ms: the published single-thread latency.
        device: the device measured (for reports).
        variant: the numeric format measured, "float32" or "int8" (for reports).
    """

    name: str
    core: str
    by_class: Mapping[str, int]
    clock_ghz: float
    measured_ms: float
    device: str = ""
    variant: str = ""

    @property
    def measured_cycles(self) -> float:
        return self.measured_ms * self.clock_ghz * 1e6


# Which classes share one cost. Five free costs per core type would be more than the
# four published points of the Cortex-A76 type can determine, and the class mixes of
# the four MobileNets are close to collinear; see docs/latency.md for why these ties.
Tie = Tuple[Tuple[str, ...], ...]
DEFAULT_TIES: Tie = (("simd_mac",), ("simd_other", "ldst", "branch", "scalar"))


def _validate_ties(ties: Tie) -> None:
    flat = [c for group in ties for c in group]
    if sorted(flat) != sorted(CLASSES) or len(flat) != len(set(flat)):
        raise ConfigError(f"cost ties must cover each of {', '.join(CLASSES)} exactly once, "
                          f"got {ties!r}")


def features(by_class: Mapping[str, int], ties: Tie = DEFAULT_TIES) -> List[float]:
    """Counts summed within each tie group (the regressors of one core's costs)."""
    n = _counts(by_class)
    return [sum(n[c] for c in group) for group in ties]


def fit_costs(points: Sequence[Point], ties: Tie = DEFAULT_TIES) -> Dict[str, Dict[str, float]]:
    """Cycles per instruction class, per core: non-negative least squares on relative error.

    For each core, minimises ``sum(((predicted - measured) / measured) ** 2)`` over
    its points, with every cost >= 0; classes tied in ``ties`` share one cost.
    Relative error weights a 12 ms model like an 88 ms one (an absolute fit would
    let the big models decide everything).

    Returns:
        ``{core: {class: cycles per instruction}}``.

    Raises:
        ConfigError: a core with fewer points than free costs (under-determined).
    """
    import numpy as np
    from scipy.optimize import nnls

    _validate_ties(ties)
    out: Dict[str, Dict[str, float]] = {}
    for core in sorted({p.core for p in points}):
        pts = [p for p in points if p.core == core]
        if len(pts) < len(ties):
            raise ConfigError(f"core {core}: {len(pts)} point(s) cannot determine "
                              f"{len(ties)} costs")
        y = np.array([p.measured_cycles for p in pts])
        x = np.array([features(p.by_class, ties) for p in pts])
        # Column scaling keeps NNLS well conditioned (counts are ~1e7-1e8).
        scale = x.max(axis=0)
        scale[scale == 0] = 1.0
        theta, _ = nnls((x / scale) / y[:, None], np.ones(len(pts)))
        theta = theta / scale
        out[core] = {c: float(theta[i]) for i, group in enumerate(ties) for c in group}
    return out


def relative_error(predicted: float, measured: float) -> float:
    """``(predicted - measured) / measured``."""
    return (predicted - measured) / measured


@dataclass(frozen=True)
class Prediction:
    point: Point
    predicted_ms: float

    @property
    def error(self) -> float:
        return relative_error(self.predicted_ms, self.point.measured_ms)


def predict(points: Sequence[Point], costs: Mapping[str, Mapping[str, float]]) -> List[Prediction]:
    """Single-thread predictions of ``points`` with per-core ``costs``."""
    return [Prediction(p, predict_cycles(p.by_class, costs[p.core]) / (p.clock_ghz * 1e6))
            for p in points]


def leave_one_out(points: Sequence[Point],
                  fit: Callable[[Sequence[Point]], Mapping[str, Mapping[str, float]]] = fit_costs
                  ) -> List[Prediction]:
    """Each point predicted by a fit on all the others (same order as ``points``).

    Raises:
        ConfigError: leaving a point out leaves its core under-determined.
    """
    out = []
    for i, p in enumerate(points):
        rest = [q for j, q in enumerate(points) if j != i]
        out.extend(predict([p], fit(rest)))
    return out


def error_summary(predictions: Sequence[Prediction]) -> Dict[str, Any]:
    """Median and worst absolute relative error (fractions) and the worst point's name."""
    errs = [abs(p.error) for p in predictions]
    worst = max(predictions, key=lambda p: abs(p.error))
    return {"median_abs_error": statistics.median(errs), "worst_abs_error": abs(worst.error),
            "worst_point": worst.point.name, "points": len(predictions)}


def fit_parallel_fraction(pairs: Sequence[Tuple[int, float, float]]) -> float:
    """Amdahl parallel fraction from (threads, single-thread ms, multi-thread ms) pairs.

    Least squares on log speed-up (a ratio: symmetric in over/under-estimate),
    bounded to [0, 1].
    """
    import numpy as np
    from scipy.optimize import minimize_scalar

    if not pairs:
        raise ConfigError("no multi-thread measurements to fit the thread scaling on")

    def loss(p):
        return sum((math.log(speedup(t, p)) - math.log(one / many)) ** 2 for t, one, many in pairs)

    res = minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded",
                          options={"xatol": 1e-9})
    return float(np.clip(res.x, 0.0, 1.0))

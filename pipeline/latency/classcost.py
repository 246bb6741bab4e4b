"""The first latency model, kept as a comparison row of the calibration report.

It priced an inference as ``sum over instruction classes c of cost_c * count_c``
with two costs per core type (multiplies, the rest), fitted by non-negative least
squares on relative error. Two costs cannot see a microarchitecture: the fitted
costs flip between core types (collinear features), and estimates on devices
outside the fit were off by up to 2x. :mod:`pipeline.latency.calibration` cross-validates it
next to the pipeline model; nothing estimates with it.
"""

from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

from pipeline.devices.insn_counts import CLASSES
from pipeline.errors import ConfigError


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

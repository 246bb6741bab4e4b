"""What the regression gate compares and how much change it allows.

:data:`THRESHOLDS` are the tolerances (each a ``--max-...`` option of ``compare``),
:data:`METRICS` the compared figures with the thresholds that apply to each; the
helpers at the end write values and changes the way tables and messages show them.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from pipeline.errors import UnusableInputError


@dataclass(frozen=True)
class Threshold:
    """One tolerance: its option name, default, unit and help text."""

    name: str
    default: float
    unit: str
    help: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


THRESHOLDS: Dict[str, Threshold] = {t.name: t for t in (
    # Test splits are small (a smoke build tests 128 images: one image = 0.78 points)
    # and a retrained model moves a little between machines: allow a point.
    Threshold("max_top1_drop", 1.0, "points", "Largest allowed host top-1 drop, in percentage points."),
    # Devices run a subset of the test split (recipe devices.samples: 100 in the default
    # recipe, so one image is one point): allow two images there.
    Threshold("max_device_top1_drop", 2.0, "points", "Largest allowed top-1 drop on a device, in percentage points."),
    # A .tflite's size depends on the architecture and variant, not on trained values.
    Threshold("max_size_increase", 0.001, "fraction", "Largest allowed relative file-size increase."),
    Threshold("max_size_increase_bytes", 0.0, "bytes", "Largest allowed absolute file-size increase."),
    # gzip size depends on the trained values (zeros, repeats): a retrain moves it a little.
    Threshold("max_gzip_increase", 0.01, "fraction", "Largest allowed relative gzip-size increase."),
    Threshold("max_gzip_increase_bytes", 0.0, "bytes", "Largest allowed absolute gzip-size increase."),
    # Counts repeat exactly run to run for an identical model and runtime (README.md, "Emulated devices").
    Threshold("max_instr_increase", 0.001, "fraction",
              "Largest allowed relative increase of instructions per inference."),
    Threshold("max_instr_increase_abs", 0.0, "instructions",
              "Largest allowed absolute increase of instructions per inference."),
    Threshold("max_latency_increase", 0.001, "fraction",
              "Largest allowed relative increase of estimated latency (compared when both sides have one)."),
    Threshold("max_latency_increase_ms", 0.0, "ms", "Largest allowed absolute increase of estimated latency."),
    # A measured latency moves between sessions on the same board (clock governor, heat,
    # other load) by more than its runs' standard error: allow 10%, or the spread of the
    # single inferences (docs/devices.md, "Gating on a real device").
    Threshold("max_measured_latency_increase", 0.10, "fraction",
              "Largest allowed relative increase of latency measured on a real device (compared when both "
              "sides measured it; else the estimates are compared)."),
    Threshold("max_measured_latency_increase_ms", 0.0, "ms",
              "Largest allowed absolute increase of latency measured on a real device."),
    Threshold("measured_noise_sigmas", 2.0, "x std",
              "A measured latency may also rise by this many standard deviations of single inferences "
              "(both sides' combined)."),
    Threshold("max_memory_increase", 0.01, "fraction", "Largest allowed relative peak-memory increase."),
    Threshold("max_memory_increase_bytes", 0.0, "bytes", "Largest allowed absolute peak-memory increase."),
)}

DEFAULT_THRESHOLDS: Dict[str, float] = {name: t.default for name, t in THRESHOLDS.items()}


def validate_thresholds(values: Any, where: str, error: type = UnusableInputError) -> Dict[str, float]:
    """Checks a thresholds mapping (from a recipe, a baseline or options).

    Args:
        where: how the mapping is named in messages (``baseline thresholds``).
        error: the exception type to raise (``ConfigError`` when validating a recipe).

    Returns:
        The mapping with float values.

    Raises:
        UnusableInputError (or ``error``): not a mapping, an unknown key (the message
            lists the valid keys), or a value that is not a non-negative number.
    """
    if not isinstance(values, Mapping):
        raise error(f"{where}: expected a mapping of threshold name to number, got {values!r}")
    out = {}
    for key, value in values.items():
        if key not in THRESHOLDS:
            raise error(f"{where}: unknown threshold {key!r}; valid: {', '.join(THRESHOLDS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
            raise error(f"{where}.{key}: expected a number >= 0 ({THRESHOLDS[key].unit}), got {value!r}")
        out[key] = float(value)
    return out


@dataclass(frozen=True)
class Metric:
    """One compared figure.

    Attributes:
        key: field of a snapshot record.
        scope: ``host`` (per variant) or ``device`` (per device x variant).
        lower_is_better: direction of a good change.
        rel, abs_: threshold names (relative, absolute); either may be None.
        scale, fmt, unit: how the value is shown in tables.
    """

    key: str
    label: str
    scope: str
    lower_is_better: bool
    rel: Optional[str]
    abs_: Optional[str]
    scale: float
    fmt: str
    unit: str


METRICS: Tuple[Metric, ...] = (
    Metric("top1", "top-1 %", "host", False, None, "max_top1_drop", 1.0, ".2f", "%"),
    Metric("size_bytes", "size KiB", "host", True, "max_size_increase", "max_size_increase_bytes",
           1 / 1024, ".1f", "KiB"),
    Metric("gzip_bytes", "gzip KiB", "host", True, "max_gzip_increase", "max_gzip_increase_bytes",
           1 / 1024, ".1f", "KiB"),
    Metric("top1", "top-1 %", "device", False, None, "max_device_top1_drop", 1.0, ".2f", "%"),
    Metric("instructions_per_inference", "M instr / inference", "device", True, "max_instr_increase",
           "max_instr_increase_abs", 1e-6, ".4f", "M"),
    Metric("latency_ms", "est. latency ms", "device", True, "max_latency_increase", "max_latency_increase_ms",
           1.0, ".3f", "ms"),
    Metric("peak_memory_bytes", "memory MiB", "device", True, "max_memory_increase", "max_memory_increase_bytes",
           1 / 2 ** 20, ".3f", "MiB"),
)

#: The latency check where both sides measured it on a real device (in the latency column,
#: with its own, looser thresholds; :func:`pipeline.gate.compare.compare_snapshots`).
MEASURED_LATENCY = Metric("latency_ms", "measured latency ms", "device", True, "max_measured_latency_increase",
                          "max_measured_latency_increase_ms", 1.0, ".3f", "ms")

HOST_METRICS = tuple(m for m in METRICS if m.scope == "host")
DEVICE_METRICS = tuple(m for m in METRICS if m.scope == "device")


def format_value(metric: Optional[Metric], value: Optional[float]) -> str:
    """``value`` in the metric's display unit and format (``-`` when not measured)."""
    if value is None:
        return "-"
    if metric is None:
        return f"{value:g}"
    return format(value * metric.scale, metric.fmt)


def delta_text(metric: Metric, base: float, cur: float) -> str:
    """The change from ``base`` to ``cur``: in points for accuracy, else in units and percent."""
    d = cur - base
    if d == 0:
        return "="
    if metric.rel is None:  # accuracy: points
        return f"{d:+.2f} points"
    rel = f", {d / abs(base):+.2%}" if base else ""
    return f"{d * metric.scale:+{metric.fmt}} {metric.unit}{rel}"


def allowed_text(metric: Metric, allowed: float, th: Mapping[str, float], std: Optional[float] = None) -> str:
    """The allowance of a check and where it comes from (max of relative and absolute, and
    for a measured latency the runs' combined standard deviation ``std`` times the sigmas)."""
    word = "drop" if not metric.lower_is_better else "increase"
    if metric.rel is None:
        return f"{word} <= {allowed:g} points"
    noise = "" if std is None else f", {th['measured_noise_sigmas']:g} x std {std * metric.scale:{metric.fmt}} " \
                                   f"{metric.unit}"
    return f"{word} <= {allowed * metric.scale:{metric.fmt}} {metric.unit} = max({th[metric.rel]:.2%}, " \
           f"{th[metric.abs_]:g} {THRESHOLDS[metric.abs_].unit}{noise})"

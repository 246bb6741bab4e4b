"""Estimated latency: the core's pipeline model plus the device's memory system.

One emulated, single-threaded inference gives the executed instruction stream as
translated blocks with execution counts (the qemu plugin, ``pipeline.devices.insn_counts``).
The latency of one inference on ``T`` threads of a device is::

    core cycles  C = sum over hot blocks of count x cycles per iteration (llvm-mca,
                     the profile's scheduling model) + calls x CALL_CYCLES
                     + cold instructions at the hot blocks' mean IPC
    compute   = a * C / T / clock(T)
    overhead  = c * ops * T / clock(T)
    memory    = b * DRAM bytes / DRAM bandwidth
    ms = overhead + max(compute, memory)

- ``clock(1)`` is the core a one-thread benchmark runs on (``clock_1t_ghz``, e.g. a
  phone's prime core), ``clock(T > 1)`` the big cluster's (``clock_ghz``); ``T`` is
  capped at the profile's big cores.
- ``ops`` is the graph's operator count: per-operator work llvm-mca's steady state
  does not see (set-up, pipeline fill, the thread pool's hand-off). It does not
  shrink with threads; it grows with them: every operator is one fork and join
  of the thread pool, and each thread that joins adds its wake-up and barrier
  (``c * ops * T``; on one thread, the set-up alone). Fitted across devices, this
  form predicted left-out devices better than a fixed per-operator cost
  (leave-one-device-out median 9.8% against 14.9% with version 3's memory
  term, see docs/latency.md).
- **Threads and memory.** DRAM bytes are what the graph's working sets force past
  the shared cache (:mod:`pipeline.latency.traffic`); they do not change with
  ``T`` (the threads split an operator's output, its working set stays whole and
  the cache stays shared). They cross one memory bus (``dram_gbps``, the
  datasheet peak: bus width x transfer rate) that every thread shares: threads
  divide the compute, never the memory time. Compute and memory overlap (the
  cores stream while they compute, as a roofline), so an inference takes the
  longer of the two: a working set inside the cache (no DRAM bytes) leaves the
  estimate exactly compute + overhead, and more threads never take an inference
  below ``b * DRAM bytes / bandwidth``. ``b >= 1`` is 1 / the fraction of the peak
  the bus sustains.

``a`` and ``c`` are fitted by ``mobile-model calibrate`` on published latencies
(:mod:`pipeline.latency.calibration`); ``b`` is fitted in ``[1, MEMORY_SCALE_MAX]``
only where a point is memory-bound, else it stays 1 (the peak, a bound no device
beats). Everything per device is a datasheet figure of its profile. The
parameters are data (:mod:`pipeline.latency.params`). See docs/latency.md for the
measured errors.

This module is pure: pricing blocks lives in :mod:`pipeline.latency.cycles`.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple

from pipeline.errors import ConfigError

# Version of the formula and parameter names; parameters fitted for another version
# are rejected rather than misread.
# 4: compute and memory overlap (max) instead of adding up; memory_scale >= 1.
MODEL_VERSION = 4
# The fitted numbers, all devices together.
PARAM_KEYS = ("compute_scale", "op_overhead_cycles", "memory_scale")
VARIANTS = ("float32", "int8")
# The largest memory_scale a fit may choose: a bus that sustains a quarter of its peak.
MEMORY_SCALE_MAX = 4.0


@dataclass(frozen=True)
class LatencyParams:
    """The fitted parameters and which (core, numeric format) pairs published points validate.

    Attributes:
        compute_scale: ``a``, multiplies the pipeline model's cycles.
        op_overhead_cycles: ``c``, cycles per graph operator and thread.
        memory_scale: ``b`` (>= 1), multiplies the time to move the DRAM bytes at
            the datasheet peak bandwidth (1 / the fraction of it the bus sustains).
        validated: core -> numeric formats with published points in the fit or its check.
        info: the fit's figures, for reports (errors, points).
    """

    compute_scale: float
    op_overhead_cycles: float
    memory_scale: float
    validated: Mapping[str, Tuple[str, ...]]
    info: Mapping[str, Any]

    @classmethod
    def from_mapping(cls, data: Any, source: str = "latency parameters") -> "LatencyParams":
        """Validates a parameters file's mapping.

        Raises:
            ConfigError: not a mapping, an unknown or missing key (the message lists
                the valid ones), another model version, or a value out of range.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
        keys = ("model_version",) + PARAM_KEYS + ("validated", "info")
        unknown = [k for k in data if k not in keys]
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(keys)}")
        missing = [k for k in keys[:-1] if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing key(s) {', '.join(missing)}; "
                              f"run `mobile-model calibrate` to write a parameters file")
        if data["model_version"] != MODEL_VERSION:
            raise ConfigError(f"{source}: fitted for latency model version {data['model_version']!r}, "
                              f"this code reads version {MODEL_VERSION}; run `mobile-model calibrate`")
        values = {}
        for key in PARAM_KEYS:
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{source}: {key} must be a finite number >= 0, got {v!r}")
            values[key] = float(v)
        if values["compute_scale"] <= 0:
            raise ConfigError(f"{source}: compute_scale must be > 0, got {values['compute_scale']:g}")
        if values["memory_scale"] < 1:
            raise ConfigError(f"{source}: memory_scale must be >= 1 (no bus beats its datasheet peak), "
                              f"got {values['memory_scale']:g}")
        return cls(validated=_validated(data["validated"], source), info=dict(data.get("info") or {}),
                   **values)

    def to_mapping(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"model_version": MODEL_VERSION}
        d.update({k: float(getattr(self, k)) for k in PARAM_KEYS})
        d["validated"] = {core: list(v) for core, v in sorted(self.validated.items())}
        d["info"] = dict(self.info)
        return d

    def is_validated(self, core: str, variant: str) -> bool:
        """Whether published points of ``core`` in ``variant`` were in the fit or its check."""
        return variant in self.validated.get(core, ())


def _validated(v: Any, source: str) -> Dict[str, Tuple[str, ...]]:
    if not isinstance(v, dict):
        raise ConfigError(f"{source}: validated must map core names to numeric formats, got {v!r}")
    out = {}
    for core, variants in v.items():
        if not isinstance(variants, list) or any(x not in VARIANTS for x in variants):
            raise ConfigError(f"{source}: validated.{core} must be a list of {', '.join(VARIANTS)}, "
                              f"got {variants!r}")
        out[str(core)] = tuple(variants)
    return out


@dataclass(frozen=True)
class CoreCycles:
    """The pipeline model's cycles of one single-threaded inference on one core.

    Attributes:
        cycles: hot blocks by llvm-mca, calls at ``CALL_CYCLES``, the cold rest at
            the hot blocks' mean IPC.
        instructions: executed instructions of the inference.
        sched_model: the LLVM ``-mcpu`` whose model priced the blocks.
        hot_blocks: blocks priced one by one.
        hot_fraction: their share of the executed instructions.
    """

    cycles: float
    instructions: int
    sched_model: str
    hot_blocks: int
    hot_fraction: float

    @property
    def ipc(self) -> float:
        return self.instructions / self.cycles if self.cycles else 0.0


@dataclass(frozen=True)
class Device:
    """What the model needs of a device profile (all datasheet figures)."""

    cores: int
    clock_1t_ghz: float
    clock_ghz: float
    cache_kb: int
    dram_gbps: float

    @classmethod
    def of(cls, profile) -> "Device":
        return cls(profile.cores, profile.clock_1t_ghz, profile.clock_ghz, profile.cache_kb,
                   profile.dram_gbps)


@dataclass(frozen=True)
class Breakdown:
    """One estimate and its parts, in milliseconds: ``ms = overhead + max(compute, memory)``."""

    ms: float
    compute_ms: float
    overhead_ms: float
    memory_ms: float
    threads: int
    clock_ghz: float

    @property
    def memory_bound(self) -> bool:
        """Whether the DRAM bytes, not the cores, set the time."""
        return self.memory_ms > self.compute_ms


def threads_used(threads: int, cores: int) -> int:
    """Interpreter threads that get a big core of their own (at most ``cores``).

    Raises:
        ConfigError: ``threads`` is not an integer >= 1.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    return min(threads, cores)


def predict(core_cycles: float, ops: int, dram_bytes: float, device: Device,
            params: Mapping[str, float], threads: int = 1) -> Breakdown:
    """Milliseconds of one inference (see the module docstring for the formula).

    Args:
        core_cycles: the pipeline model's cycles of one single-threaded inference.
        ops: operators in the graph.
        dram_bytes: bytes one inference moves to and from DRAM on this device
            (the same on any number of threads).
        device: the device's clocks, cores, cache and bandwidth.
        params: ``compute_scale``, ``op_overhead_cycles``, ``memory_scale``.
        threads: interpreter threads.
    """
    t = threads_used(threads, device.cores)
    clock = device.clock_1t_ghz if t == 1 else device.clock_ghz
    compute = params["compute_scale"] * core_cycles / t / (clock * 1e6)
    overhead = params["op_overhead_cycles"] * ops * t / (clock * 1e6)
    memory = params["memory_scale"] * dram_bytes / (device.dram_gbps * 1e6)
    return Breakdown(overhead + max(compute, memory), compute, overhead, memory, t, clock)

"""Estimates: one emulated run's latency on a device, with its provenance.

:func:`estimate_run` prices a run's block profile (:mod:`pipeline.latency.cycles`),
adds the memory system (:mod:`pipeline.latency.traffic`) and applies the fitted
parameters (:mod:`pipeline.latency.params`). :func:`attach_latency` does it for a
device check's result, :func:`estimate_model` for ``mobile-model estimate``.

Every estimate carries its provenance: the pipeline model, cycles and IPC, and
``validated``: whether published measurements of that core and numeric format were
in the fit or its check.
"""

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from pipeline.devices.profiles import DeviceProfile, get_device
from pipeline.latency.model import Device, LatencyParams, predict, threads_used
from pipeline.latency.traffic import GraphTraffic, graph_traffic
from pipeline.summary import LATENCY_FIELDS
from pipeline.tflite.host import numeric_format
from pipeline.errors import Log


def pipeline_model_name(profile: DeviceProfile) -> str:
    """How the latency of ``profile`` is modelled, as shown next to every figure."""
    return f"llvm-mca {profile.sched_model} + memory"


def estimate_run(block_profile: Mapping[str, Any], traffic: GraphTraffic, profile: DeviceProfile,
                 variant: str, threads: int = 1, params: Optional[LatencyParams] = None,
                 stats: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One run's estimate on ``profile`` at ``threads`` threads, with its provenance.

    Args:
        block_profile: the run's ``block_profile`` (a single-threaded run).
        traffic: the model graph's bytes.
        variant: "float32", "int8" or "hybrid" (:func:`numeric_format`).
        params: the fitted parameters (default: :func:`pipeline.latency.params.current_params`).
        stats: filled with llvm-mca's work.

    Raises:
        ConfigError: bad threads, a malformed block profile or a bad parameters file.
        DeviceOutputError: an undecodable instruction word.
        DeviceUnavailableError: llvm-mc / llvm-mca missing or failing.
    """
    from pipeline.latency.cycles import core_cycles
    from pipeline.latency.params import current_params

    source = {}
    if params is None:
        params, path, origin = current_params()
        source = {"params_file": str(path), "params_source": origin}
    threads_used(threads, profile.cores)  # validates threads before any work
    cc = core_cycles(block_profile, profile.sched_model, profile.qemu_cpu, stats)
    dram = traffic.dram_bytes(profile.cache_kb * 1024)
    b = predict(cc.cycles, traffic.op_count, dram, Device.of(profile), _numbers(params), threads)
    validated = params.is_validated(profile.core, variant)
    # A validated estimate states the model's error on the points that validate it
    # (held out by device; None where the parameters file predates the record).
    errors = ((params.info or {}).get("validation_lodo") or {}).get(profile.core, {}).get(variant)
    return {
        "latency_ms": b.ms, "validated": validated, "validation_error": errors if validated else None,
        "pipeline_model": pipeline_model_name(profile), "core": profile.core,
        "numeric_format": variant, "cycles_single_thread": cc.cycles, "ipc": cc.ipc,
        "instructions": cc.instructions, "hot_blocks": cc.hot_blocks,
        "hot_fraction": cc.hot_fraction, "compute_ms": b.compute_ms, "overhead_ms": b.overhead_ms,
        "memory_ms": b.memory_ms, "memory_bound": b.memory_bound, "dram_bytes": dram, "ops": traffic.op_count,
        "threads": threads, "threads_effective": b.threads, "clock_ghz": b.clock_ghz, **source,
    }


def _numbers(params: LatencyParams) -> Dict[str, float]:
    return {"compute_scale": params.compute_scale, "op_overhead_cycles": params.op_overhead_cycles,
            "memory_scale": params.memory_scale}


def attach_latency(result: Dict[str, Any], device: str, threads: int) -> None:
    """Adds the estimate's keys (:data:`LATENCY_FIELDS`, None when not estimable) to a device result.

    Args:
        result: a :class:`pipeline.devices.check.DeviceResult` as ``to_dict()``, from a
            single-threaded run (its counts repeat exactly); ``threads`` then scales by
            the model.
    """
    from pipeline.tflite.reader import read_tflite

    result.update({k: None for k in LATENCY_FIELDS})
    if not result.get("loaded") or not result.get("block_profile"):
        return
    profile = get_device(device)
    model = read_tflite(Path(result["model"]))
    est = estimate_run(result["block_profile"], graph_traffic(model), profile, numeric_format(model),
                       threads)
    result.update(latency_ms=est["latency_ms"], latency_validated=est["validated"],
                  latency_model=est["pipeline_model"], latency_cycles=est["cycles_single_thread"],
                  latency_ipc=est["ipc"])


def estimate_model(spec, device: Union[str, DeviceProfile], threads: int = 1, log: Log = None
                   ) -> Dict[str, Any]:
    """Estimated latency of a :class:`~pipeline.latency.reference.ModelSpec` on ``device``.

    Builds and converts the model and runs it once on the device's emulated core
    (both cached), then prices the run (block analysis cached too).

    Raises:
        ConfigError: unknown device, bad spec or threads, a bad parameters file.
        RuntimeIncompatibleError: the device's runtime cannot load the model.
        DeviceUnavailableError: the emulated run or LLVM failed.
    """
    from pipeline.latency.reference import build_tflite, measure, noop

    log = log or noop
    t0 = time.monotonic()
    profile = get_device(device) if isinstance(device, str) else device
    threads_used(threads, profile.cores)
    m = measure(spec, profile, log)
    stats: Dict[str, Any] = {}
    est = estimate_run(m.block_profile, GraphTraffic.from_dict(m.traffic), profile,
                       "int8" if spec.variant == "int8" else "float32", threads, stats=stats)
    if not est["validated"]:
        log(f"[latency] {profile.name}: no published {spec.variant} point of a {profile.core} core "
            f"was in the fit: the estimate is unvalidated")
    est.update({
        "device": profile.name, "qemu_cpu": profile.qemu_cpu, "runtime": f"{m.runtime} {m.runtime_version}",
        "model": asdict(spec), "model_sha256": m.model_sha256, "cached": m.cached,
        "llvm_mca": stats, "model_file": str(build_tflite(spec)),
        "wall_s": round(time.monotonic() - t0, 3),
    })
    return est


def estimate_file(path: Union[str, Path], device: Union[str, DeviceProfile], threads: int = 1,
                  log: Log = None) -> Dict[str, Any]:
    """Estimated latency of any ``.tflite`` file on ``device``: the keys of :func:`estimate_model`.

    Runs the file once on the device's emulated core (one random input per model input,
    seed 0, one thread; not cached) and prices that run. The file is untrusted: checked
    by the reader, then run by the host runtime only in an isolated child.

    Raises:
        ModelFileError: a missing, unreadable or malformed file.
        RuntimeIncompatibleError: the device's runtime cannot load the model (its verdict).
        ConfigError: unknown device, bad threads, a bad parameters file.
        DeviceUnavailableError: the emulated run or LLVM failed.
    """
    from pipeline.devices.check import run_device_check
    from pipeline.devices.model_io import random_inputs
    from pipeline.errors import RuntimeIncompatibleError
    from pipeline.tflite.reader import read_tflite

    log = log or (lambda s: None)
    t0 = time.monotonic()
    profile = get_device(device) if isinstance(device, str) else device
    threads_used(threads, profile.cores)
    path = Path(path)
    model = read_tflite(path)
    log(f"[latency] {profile.name}: running {path.name} once on {profile.qemu_cpu}")
    r = run_device_check(path, profile, random_inputs(model, 1), threads=1, untrusted=True)
    if not r.loaded:
        raise RuntimeIncompatibleError(f"{path.name}: {r.verdict}")
    stats: Dict[str, Any] = {}
    variant = numeric_format(model)
    est = estimate_run(r.to_dict()["block_profile"], graph_traffic(model), profile, variant, threads,
                       stats=stats)
    if not est["validated"]:
        log(f"[latency] {profile.name}: no published {variant} point of a {profile.core} core "
            f"was in the fit: the estimate is unvalidated")
    est.update({
        "device": profile.name, "qemu_cpu": profile.qemu_cpu, "runtime": f"{r.runtime} {r.runtime_version}",
        "model": str(path.resolve()), "model_sha256": r.model_sha256, "cached": False,
        "llvm_mca": stats, "model_file": str(path.resolve()), "wall_s": round(time.monotonic() - t0, 3),
    })
    return est

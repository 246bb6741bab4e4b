"""What ``mobile-model estimate`` computes: one model's latency on one device."""

import time
from dataclasses import asdict
from typing import Any, Callable, Dict

from pipeline.devices.profiles import get_device
from pipeline.errors import ConfigError
from pipeline.latency.model import predict_cycles, speedup
from pipeline.latency.params import device_params, variant_in_fit
from pipeline.latency.reference import ModelSpec, measure, noop

Log = Callable[[str], None]


def estimate_model(spec: ModelSpec, device: str, threads: int = 1, log: Log = noop) -> Dict[str, Any]:
    """Estimated latency of ``spec`` on ``device`` (what ``mobile-model estimate`` prints).

    Builds and converts the model and runs it once on the device's emulated core
    (both cached), then applies the device's cost-model parameters
    (:func:`pipeline.latency.params.params_file` says which file; the result's
    ``params_source`` and ``params_file`` name it).

    Raises:
        ConfigError: unknown device, bad spec or threads, a bad parameters file, or
            no parameters for the device (run ``mobile-model calibrate``).
        RuntimeIncompatibleError: the device's runtime cannot load the model.
        DeviceUnavailableError: the emulated run failed.
    """
    t0 = time.monotonic()
    profile = get_device(device)
    params, path, source = device_params(profile.name)
    if params is None:
        raise ConfigError(f"device {profile.name} has no latency parameters in {path}; "
                          f"run `mobile-model calibrate` first")
    s = speedup(threads, params.parallel_fraction, profile.cores)  # validates threads
    m = measure(spec, profile, log)
    cycles = predict_cycles(m.instructions_by_class, params.costs)
    single_ms = cycles / (profile.clock_ghz * 1e6)
    info = params.info
    return {
        "device_points": int(info.get("device_points", 0)),
        "core_points": int(info.get("core_points", 0)),
        # Whether published points of this numeric format on this core type were in the
        # fit: int8 kernels have another class mix than float ones (docs/latency.md).
        "variant_in_fit": variant_in_fit(params, spec.variant),
        "latency_ms": single_ms / s,
        "latency_ms_single_thread": single_ms,
        "instructions": m.instructions,
        "instructions_by_class": dict(m.instructions_by_class),
        "cycles_single_thread": cycles,
        "threads": threads, "threads_effective": min(threads, profile.cores), "thread_speedup": s,
        "device": profile.name, "qemu_cpu": profile.qemu_cpu, "clock_ghz": profile.clock_ghz,
        "runtime": f"{m.runtime} {m.runtime_version}",
        "validated": params.validated,
        # Leave-one-out error over the published points of this profile's core type.
        "loo_median_abs_error_pct": info.get("loo_median_abs_error_pct"),
        "loo_worst_abs_error_pct": info.get("loo_worst_abs_error_pct"),
        "params_source": source, "params_file": str(path),
        "model": asdict(spec), "model_sha256": m.model_sha256,
        "cached": m.cached, "wall_s": round(time.monotonic() - t0, 3),
    }

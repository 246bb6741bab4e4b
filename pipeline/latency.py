"""Estimated latency from an emulated run's instruction counts.

The cost model turns instructions per inference, split by class, into cycles on a
profile's core and milliseconds at its clock. Its parameters are data in each
device profile (``latency:``), fitted by ``mobile-model calibrate``; a profile
without fitted parameters gets no estimate (``latency_ms`` stays None) rather
than a made-up one.
"""

from typing import Any, Dict, Optional


def estimate_ms(by_class: Dict[str, int], params: Dict[str, Any], clock_ghz: float,
                threads: int = 1) -> Optional[float]:
    """Milliseconds for one inference, or None without fitted parameters."""
    cpi = params.get("cycles_per_instruction")
    if not cpi or not by_class:
        return None
    cycles = sum(float(cpi.get(cls, cpi.get("default", 0.0))) * n for cls, n in by_class.items())
    ms = cycles / (clock_ghz * 1e6)
    if threads > 1:
        eff = float(params.get("thread_efficiency", 0.0))
        ms /= 1 + (threads - 1) * eff
    return ms


def attach_latency(result: Dict[str, Any], device: str, threads: int) -> None:
    """Adds ``latency_ms`` to a device result dict (None when not estimable)."""
    from pipeline.devices.profiles import get_device

    profile = get_device(device)
    result["latency_ms"] = (estimate_ms(result.get("instructions_by_class") or {}, dict(profile.latency or {}),
                                        profile.clock_ghz, threads) if result.get("loaded") else None)

"""The real-device half of a build's ``PROFILE@ssh://...`` and ``PROFILE@adb://...`` entries.

A build (:mod:`pipeline.build.matrix`) runs the emulated profile as for any entry, then
measures the deploy variant on the device the entry names, with the recipe's
``devices.remote`` settings at ``devices.threads`` threads (the threads the profile's
latency is estimated at, so the two figures are like for like). The figure the build
keeps is a :class:`pipeline.summary.MeasuredLatency`.
"""

from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from pipeline.devices.remote.measurement import Measurement
from pipeline.devices.remote.target import AdbTarget, Settings
from pipeline.errors import Log
from pipeline.recipe.stages import RemoteConfig
from pipeline.recipe.targets import DeviceEntry
from pipeline.summary import MeasuredLatency


def entry_settings(entry: DeviceEntry, remote: RemoteConfig, threads: int) -> Settings:
    """The exact settings of the entry's timed run."""
    adb = isinstance(entry.target, AdbTarget)
    return Settings(threads=threads, runs=remote.runs, warmup=remote.warmup,
                    remote_python=None if adb else remote.remote_python).validate()


def entry_key(entry: DeviceEntry, remote: RemoteConfig, threads: int) -> Dict[str, Any]:
    """What determines the entry's measurement (part of its stage's cache key): where, and
    the settings; not how the device is reached (the key file)."""
    key: Dict[str, Any] = {"target": entry.target.url(), "profile": entry.profile,
                           "settings": asdict(entry_settings(entry, remote, threads))}
    if isinstance(entry.target, AdbTarget):
        key["benchmark_model"] = remote.benchmark_model
    return key


def _path(text: Optional[str]) -> Optional[Path]:
    return None if text is None else Path(text).expanduser()


def measure_entry(model: Path, entry: DeviceEntry, remote: RemoteConfig, threads: int, x: np.ndarray,
                  y: Optional[np.ndarray], progress: Optional[Log] = None) -> Measurement:
    """Measures ``model`` on the entry's real device (an ssh board on the inputs ``x`` with
    labels ``y``; a phone on benchmark_model's own inputs).

    Raises:
        ConfigError: the key file or benchmark_model does not exist.
        DeviceUnavailableError: the device cannot be reached, refused, or the connection
            dropped during the run (the message says which).
        DeviceOutputError: results that cannot be read.
    """
    settings = entry_settings(entry, remote, threads)
    if isinstance(entry.target, AdbTarget):
        from pipeline.devices.remote.adb import measure_over_adb

        return measure_over_adb(model, entry.target, settings, _path(remote.benchmark_model), profile=entry.profile,
                                progress=progress)
    from pipeline.devices.remote.ssh_run import measure_over_ssh

    return measure_over_ssh(model, entry.target, [x], settings, identity=_path(remote.identity),
                            profile=entry.profile, progress=progress, y=y)


def measured_latency(m: Measurement) -> MeasuredLatency:
    """The figures a build keeps of a measurement (milliseconds)."""
    t, d = m.timing, m.device

    def ms(seconds: Optional[float]) -> Optional[float]:
        return None if seconds is None else 1000.0 * seconds

    return MeasuredLatency(
        target=m.target, loaded=m.loaded, verdict=m.verdict, runtime=f"{m.runtime} {m.runtime_version}",
        threads=int(m.settings["threads"]), runs=t.runs if t else int(m.settings["runs"]),
        warmup=t.warmup_runs if t else int(m.settings["warmup"]),
        mean_ms=ms(t and t.mean_s), std_ms=ms(t and t.std_s), min_ms=ms(t and t.min_s), max_ms=ms(t and t.max_s),
        device=None if d is None else (d.model or d.machine), top1=m.top1, outputs_agree=m.outputs_agree(),
        measured_at=m.measured_at)

"""Points measured on real devices (``device run --target``) as calibration points.

A stored point (:mod:`pipeline.devices.remote.store`) can join the fit when it names
the emulated profile of its board (``--device`` beside ``--target``): the profile gives
the core, clocks, cache and bandwidth the latency model needs. Its numeric format must
be one the published points have (float32, int8), so that "validated" keeps its meaning.
The store's copy of its model runs once on the profile's emulated core (one thread, with
the runtime the board ran where the emulator has it), and that run is priced like a
published architecture's. Several points of one model, profile, thread count and
runtime count once, at the median of their means.
"""

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

from pipeline.devices.profiles import DEVICES, get_device
from pipeline.devices.targets import RUNTIMES
from pipeline.errors import ConfigError, DataError, Log
from pipeline.latency.calibration import Point, runtime_profile
from pipeline.latency.model import Device
from pipeline.latency.published import PUBLISHED_FORMATS
from pipeline.latency.reference import noop


@dataclass(frozen=True)
class MeasuredGroup:
    """Stored points of one model on one profile, thread count and runtime."""

    model_sha256: str
    model: str
    profile: str
    threads: int
    runtime: str
    number_format: str
    measured_ms: float
    count: int

    @property
    def name(self) -> str:
        return f"measured {self.model} {self.number_format} {self.profile} {self.threads}t"


def group_rows(rows: Sequence[Mapping[str, str]]) -> Tuple[List[MeasuredGroup], List[str]]:
    """The usable groups of stored rows, and one reason per row left out.

    Raises:
        DataError: a row whose threads or mean is not a number.
    """
    groups: Dict[Tuple[str, str, int, str], List[Mapping[str, str]]] = {}
    skipped = []
    for i, row in enumerate(rows, start=1):
        where = f"measured point {i} ({row['model']} on {row['target']})"
        try:
            threads, mean = int(row["threads"]), float(row["mean_ms"])
        except ValueError:
            raise DataError(f"{where}: threads {row['threads']!r} and mean_ms {row['mean_ms']!r} must be "
                            f"numbers") from None
        if not row["profile"]:
            skipped.append(f"{where}: names no profile (give --device with --target), so the board's "
                           f"clocks are unknown")
        elif row["profile"] not in DEVICES.names():
            skipped.append(f"{where}: profile {row['profile']!r} is not registered")
        elif row["number_format"] not in PUBLISHED_FORMATS:
            skipped.append(f"{where}: {row['number_format']} has no published points "
                           f"({', '.join(PUBLISHED_FORMATS)} have)")
        elif not mean > 0:
            skipped.append(f"{where}: mean {mean:g} ms")
        else:
            key = (row["model_sha256"], row["profile"], threads, f"{row['runtime']} {row['runtime_version']}")
            groups.setdefault(key, []).append(row)
    out = [MeasuredGroup(model_sha256=sha, model=rs[0]["model"], profile=profile, threads=threads, runtime=runtime,
                         number_format=rs[0]["number_format"],
                         measured_ms=statistics.median(float(r["mean_ms"]) for r in rs), count=len(rs))
           for (sha, profile, threads, runtime), rs in groups.items()]
    return out, skipped


def measured_points(groups: Sequence[MeasuredGroup], model_path: Callable[[str], Path], log: Log = noop,
                    runtime=None) -> List[Point]:
    """One calibration point per group: its model run once on the profile's emulated core, priced.

    Args:
        model_path: the stored copy of a model, by sha256.

    Raises:
        ConfigError: a stored model is missing, or its emulated run does not load it.
        DeviceUnavailableError: the ARM runtime, the emulated run or LLVM failed.
    """
    from pipeline.devices.check import run_device_check
    from pipeline.devices.model_io import random_inputs
    from pipeline.latency.cycles import core_cycles
    from pipeline.latency.traffic import graph_traffic
    from pipeline.tflite.reader import read_tflite

    points = []
    for g in groups:
        path = model_path(g.model_sha256)
        if not path.is_file():
            raise ConfigError(f"{g.name}: the store's copy of the model ({path}) is missing")
        name = g.runtime.split(" ", 1)[0]
        profile = get_device(g.profile)
        if name in RUNTIMES:
            profile = runtime_profile(profile, name)
        model = read_tflite(path)
        log(f"[calibrate] {g.name}: running the model once on {profile.qemu_cpu} ({profile.runtime})")
        r = run_device_check(path, profile, random_inputs(model, 1), threads=1, untrusted=True, runtime=runtime)
        if not r.loaded:
            raise ConfigError(f"{g.name}: the emulated {profile.name} does not load the model: {r.verdict}")
        cc = core_cycles(r.to_dict()["block_profile"], profile.sched_model, profile.qemu_cpu)
        traffic = graph_traffic(model)
        points.append(Point(g.name, f"{g.model} ({g.model_sha256[:12]})", profile.name, profile.core,
                            profile.sched_model, g.number_format, g.threads, g.measured_ms, cc.cycles,
                            cc.instructions, traffic.op_count, traffic.dram_bytes(profile.cache_kb * 1024),
                            Device.of(profile), dict(r.instructions_by_class), profile.qemu_cpu))
    return points


def stored_points(log: Log = noop, runtime=None) -> List[Point]:
    """The calibration points of the store of measured points (rows left out are logged).

    Raises:
        ConfigError: no stored point can join the fit (the message says why the first could not).
        DataError: an unreadable store.
    """
    from pipeline.devices.remote import store

    rows = store.read_rows()
    groups, skipped = group_rows(rows)
    for reason in skipped:
        log(f"[calibrate] left out: {reason}")
    if not groups:
        why = skipped[0] if skipped else f"the store {store.store_path()} is empty"
        raise ConfigError(f"no measured point can join the fit ({len(rows)} stored): {why}")
    log(f"[calibrate] {len(groups)} measured point(s) from {len(rows) - len(skipped)} stored run(s)")
    return measured_points(groups, store.model_copy, log, runtime)

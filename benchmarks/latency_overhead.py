"""The latency estimate's own cost, for ``make bench``: figures, not pass/fail.

Three measurements, each taken in this one run so machine noise mostly cancels:

- llvm-mca time per distinct model: every full-size reference model's hot blocks
  priced from an empty analysis cache, per scheduling model;
- the per-block profile's cost in a device run: the same emulated run with the
  plugin profiling blocks and with it profiling none (alternating, best of each),
  plus the uncached pricing, against the unprofiled run;
- a cached ``mobile-model estimate``: the whole command, a fresh process, once
  its emulated run and block analysis are cached.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator, List, Sequence

from pipeline.devices.profiles import get_device
from pipeline.latency.reference import ModelSpec, measure, noop
from pipeline.errors import Log
from pipeline.table import Table

#: Profiles whose scheduling models the bench prices with (an in-order and a wide core).
BENCH_DEVICES = ("camera-a53", "pixel4")
FAMILIES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
#: The model whose device run is timed with and without the block profile.
OVERHEAD_SPEC = ModelSpec("mobilenet_v2", variant="float32")
OVERHEAD_REPEATS = 2


@contextmanager
def _empty_analysis_cache() -> Iterator[None]:
    """Points the latency cache (and so the llvm-mca cache) at an empty directory."""
    old = os.environ.get("MOBILE_MODEL_CACHE")
    with tempfile.TemporaryDirectory(prefix="mm-bench-mca-") as tmp:
        os.environ["MOBILE_MODEL_CACHE"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("MOBILE_MODEL_CACHE", None)
            else:
                os.environ["MOBILE_MODEL_CACHE"] = old


def _price_uncached(block_profile, profile) -> dict:
    """Prices a run's hot blocks from an empty cache; the llvm-mca stats."""
    from pipeline.latency.cycles import core_cycles

    stats: dict = {}
    with _empty_analysis_cache():
        core_cycles(block_profile, profile.sched_model, profile.qemu_cpu, stats)
    return stats


def mca_time_table(log: Log = noop) -> List[str]:
    """Markdown rows: uncached llvm-mca seconds per reference model and scheduling model."""
    rows = []
    for name in BENCH_DEVICES:
        profile = get_device(name)
        for family in FAMILIES:
            for variant in ("float32", "int8"):
                spec = ModelSpec(family, variant=variant)
                m = measure(spec, profile, log)
                stats = _price_uncached(m.block_profile, profile)
                rows.append([spec.label, f"{name} ({profile.sched_model})", str(len(m.block_profile["hot"])),
                             f"{stats['llvm_seconds']:.2f}"])
    return Table(["model", "device (model)", "hot blocks", "llvm-mc + llvm-mca s"], rows, "llrr").markdown()


def _timed_run(spec: ModelSpec, profile, profile_from: int) -> float:
    import numpy as np

    from pipeline.devices.runner import run_on_device
    from pipeline.latency.reference import SEED, build_tflite

    x = np.random.default_rng(SEED).random((1, *spec.input_shape), dtype=np.float32)
    run = run_on_device(build_tflite(spec), profile, x, threads=1, profile_from=profile_from)
    if run.returncode != 0:
        raise RuntimeError(f"bench device run failed (exit {run.returncode}): {run.stderr[-500:]}")
    return run.wall_s


def profile_overhead(log: Log = noop, device: str = "pixel4") -> List[str]:
    """Markdown lines: a device run's wall time with and without the block profile."""
    from pipeline.devices.insn_counts import FIRST_INFERENCE_REGION

    profile = get_device(device)
    spec = OVERHEAD_SPEC
    m = measure(spec, profile, log)
    with_profile, without = [], []
    for i in range(OVERHEAD_REPEATS):
        log(f"[bench] {spec.label} on {device}: timed run {i + 1}/{OVERHEAD_REPEATS} of each")
        without.append(_timed_run(spec, profile, profile_from=10 ** 9))
        with_profile.append(_timed_run(spec, profile, profile_from=FIRST_INFERENCE_REGION))
    base, profiled = min(without), min(with_profile)
    mca = _price_uncached(m.block_profile, profile)["llvm_seconds"]
    return [
        f"Device run of {spec.label} on {device} (one warm-up and one measured inference, "
        f"best of {OVERHEAD_REPEATS}):",
        "",
        *Table(["", "seconds", "vs run without the profile"], [
            ["run, blocks not profiled", f"{base:.1f}", "1.00x"],
            ["run, blocks profiled", f"{profiled:.1f}", f"{profiled / base:.2f}x"],
            ["+ llvm-mca pricing, uncached", f"{mca:.1f}", f"{mca / base:.2f}x"],
            ["per-block analysis in all", f"{profiled - base + mca:.1f}",
             f"+{100 * (profiled - base + mca) / base:.0f}%"]]).markdown(),
    ]


def cached_estimate_seconds(device: str = "pixel4", family: str = "mobilenet_v2",
                            repeats: int = 3) -> Sequence[float]:
    """Wall seconds of ``mobile-model estimate --json`` in fresh processes, after one to fill caches."""
    command = [sys.executable, "-m", "pipeline.cli", "estimate", "--model", family,
               "--device", device, "--json", "-q"]
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if not json.loads(done.stdout)["cached"]:
            raise RuntimeError("the estimate was not served from the cache")
    return times


def latency_bench(log: Log = noop) -> str:
    """The whole latency section of ``make bench``, as markdown."""
    lines = ["## latency estimate: its own cost", ""]
    times = cached_estimate_seconds()
    lines += [f"Cached `mobile-model estimate --model mobilenet_v2 --device pixel4 --json` "
              f"(fresh process each): {', '.join(f'{t:.2f}' for t in times)} s "
              f"(median {sorted(times)[len(times) // 2]:.2f} s)", ""]
    lines += profile_overhead(log) + [""]
    lines += ["llvm-mca time per distinct model (hot blocks priced from an empty cache):", ""]
    lines += mca_time_table(log)
    return "\n".join(lines)


if __name__ == "__main__":
    print(latency_bench(lambda s: print(s, file=sys.stderr)))

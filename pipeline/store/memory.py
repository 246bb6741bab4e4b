"""Wall time and peak resident memory (RSS) of one stage of a build.

Linux keeps the peak resident set of a process (``VmHWM`` in ``/proc/self/status``)
and lets the process reset it to the current RSS by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0), so a peak is measured per stage, not only
since the process started. Use :func:`measure_stage` around the work::

    with measure_stage() as m:
        splits = load_dataset(...)
    manifest.set("data", {..., **m.record()})   # {"wall_s": ..., "peak_rss_mb": ...}

:meth:`pipeline.store.manifest.Manifest.run_stage` records the same two figures
for every stage it runs.

What the figures cover: this process only (a child process, such as an emulated
device run or an isolated converter, is not counted), and the whole process (the
counter is process-wide: work on other threads during the stage counts too). MiB
are 2**20 bytes; the manifest key says ``mb`` for short.
"""

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")
# clear_refs value that resets the peak RSS counter (Documentation/filesystems/proc.rst).
_RESET_PEAK = "5"


# The highest peak read before any reset: what the process has held at most, whatever the resets.
_process_peak_kib = 0


def process_peak_rss_mb() -> float:
    """The peak resident memory of this process since it started, in MiB, across every
    :func:`reset_peak_rss` (each reset first folds the peak so far into this figure).

    A reset also resets the kernel's ``ru_maxrss`` of this process (both read the same
    high-water mark), so this, not ``getrusage``, is the whole-build peak."""
    return max(_process_peak_kib / 1024, peak_rss_mb())


def reset_peak_rss() -> bool:
    """Resets this process's peak RSS counter (``VmHWM``) to its current RSS.

    Returns:
        Whether the counter was reset. False where ``/proc/self/clear_refs`` is
        missing or refuses the write (not Linux, Linux < 4.0, a restricted
        container): :func:`peak_rss_mb` then reads the peak since the process
        started. Never raises: a build does not fail for want of a memory figure.
    """
    global _process_peak_kib
    _process_peak_kib = max(_process_peak_kib, _vm_hwm_kib() or 0)
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write(_RESET_PEAK)
        return True
    except OSError:
        return False


def _vm_hwm_kib() -> Optional[int]:
    """``VmHWM`` of /proc/self/status in KiB, or None where it cannot be read."""
    try:
        text = STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():  # "VmHWM:   123456 kB"
                return int(fields[1])
    return None


def peak_rss_mb() -> float:
    """The peak resident memory of this process, in MiB, since the last :func:`reset_peak_rss`.

    Reads ``VmHWM`` from ``/proc/self/status``. Where that is unavailable, falls back
    to ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS),
    which is the peak since the process started: a reset does not reach it, so the
    figure of a later stage is never below that of an earlier one.
    """
    kib = _vm_hwm_kib()
    if kib is not None:
        return kib / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2 ** 20 if sys.platform == "darwin" else maxrss / 1024


@dataclass(eq=False)
class StageMeasure:
    """Wall time (s) and peak RSS (MiB) of a block of code, filled in when the block exits.

    ``per_stage`` says whether the peak is the block's own (the kernel counter was
    reset on entry) or the process's since it started (the fallback).
    """

    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    per_stage: bool = False
    # The peak before a nested measurement reset the counter (see measure_stage).
    _floor_mb: float = field(default=0.0, repr=False)

    def record(self) -> Dict[str, float]:
        """The figures as a manifest record holds them: ``{"wall_s", "peak_rss_mb"}``, rounded."""
        return {"wall_s": round(self.wall_s, 3), "peak_rss_mb": round(self.peak_rss_mb, 1)}


_open: List[StageMeasure] = []  # measurements in progress, outermost first


@contextmanager
def measure_stage() -> Iterator[StageMeasure]:
    """Measures the wall time and peak RSS of the ``with`` block.

    Usage::

        with measure_stage() as m:
            work()
        record = {..., **m.record()}   # or m.wall_s, m.peak_rss_mb

    Yields:
        A :class:`StageMeasure`, filled in when the block exits (also when it raises).

    Measurements may nest: a block inside another resets the counter, so the peak
    seen so far is carried into the enclosing measurements first, and theirs is
    never below what the inner block saw. Not thread-safe: measure stages run one
    at a time.
    """
    m = StageMeasure()
    if _open:
        seen = peak_rss_mb()
        for outer in _open:
            outer._floor_mb = max(outer._floor_mb, seen)
    m.per_stage = reset_peak_rss()
    _open.append(m)
    t0 = time.perf_counter()
    try:
        yield m
    finally:
        m.wall_s = time.perf_counter() - t0
        _open.remove(m)
        m.peak_rss_mb = max(peak_rss_mb(), m._floor_mb)

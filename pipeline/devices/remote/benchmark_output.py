"""The output of TFLite's ``benchmark_model`` (LiteRT's native benchmark tool), parsed.

A pure parser (``adb.py`` runs the tool): what it needs must be there, else
:class:`DeviceOutputError`. The lines read (an ``INFO: `` prefix is allowed)::

    Num threads: [4]
    count=22 first=40532 curr=22187 min=21962 max=40532 avg=23023.9 std=3822     (warm-up)
    count=50 first=22290 curr=22207 min=21947 max=22531 avg=22168.5 std=104      (timed)
    Inference timings in us: Init: 3281, First inference: 40532, Warmup (avg): 23023.9, Inference (avg): 22168.5
    Memory footprint delta from the start of the tool (MB): init=5.37891 overall=12.0938
    Overall peak memory footprint (MB) via periodic monitoring: 16.2305

Times are in microseconds; the warm-up loop's count includes the first inference.
The memory lines are optional (the tool leaves them out when not monitoring).
"""

import re
from dataclasses import dataclass
from typing import Optional

from pipeline.devices.guest_result import LoadError, Timing, parse_load_error
from pipeline.errors import DeviceOutputError

_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_COUNT = re.compile(rf"count=(\d+) first=({_NUM}) curr=({_NUM}) min=({_NUM}) max=({_NUM}) avg=({_NUM}) "
                    rf"std=({_NUM})")
_TIMINGS = re.compile(rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
                      rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})")
_THREADS = re.compile(r"Num threads: \[(\d+)\]")
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})")
_DELTA = re.compile(rf"Memory footprint delta from the start of the tool \(MB\): init=({_NUM}) overall=({_NUM})")
#: What the tool says when the model does not load (before any timing).
_REFUSED = re.compile(r"Didn't find op for builtin opcode|Encountered unresolved custom op|"
                      r"Op builtin_code out of range|Failed to allocate tensors|Failed to construct interpreter|"
                      r"Failed to mmap model|Failed to apply .* delegate")


@dataclass(frozen=True)
class BenchmarkOutput:
    """What one run of benchmark_model printed; memory figures None where not printed."""

    timing: Timing
    threads: Optional[int]
    init_footprint_mb: Optional[float]
    overall_footprint_mb: Optional[float]


def _us(value: str) -> float:
    return float(value) / 1e6


def parse_benchmark_output(text: str) -> BenchmarkOutput:
    """Parses a successful run's output.

    Raises:
        DeviceOutputError: no ``Inference timings in us`` line, fewer than two ``count=``
            lines (warm-up, then timed), a negative time, or counts that disagree.
    """
    m = _TIMINGS.search(text)
    counts = _COUNT.findall(text)
    if m is None:
        raise DeviceOutputError("benchmark_model output: no 'Inference timings in us: Init: ..., First "
                                "inference: ..., Warmup (avg): ..., Inference (avg): ...' line")
    if len(counts) < 2:
        raise DeviceOutputError(f"benchmark_model output: {len(counts)} 'count=... avg=... std=...' line(s), "
                                "expected two (warm-up, then timed)")
    init, first, warm_avg, avg = (float(v) for v in m.groups())
    warm, timed = counts[-2], counts[-1]
    runs, t_min, t_max, t_avg, t_std = int(timed[0]), *(float(v) for v in timed[3:7])
    if min(init, first, warm_avg, avg, t_min, t_max, t_std) < 0 or runs < 1 or not t_min <= t_avg <= t_max:
        raise DeviceOutputError(f"benchmark_model output: impossible timings (init {init}, first {first}, "
                                f"min {t_min}, avg {t_avg}, max {t_max}, std {t_std}, {runs} runs)")
    peak = _PEAK.search(text)
    delta = _DELTA.search(text)
    peak_mb = float(peak.group(1)) if peak else None
    threads = _THREADS.search(text)
    return BenchmarkOutput(
        timing=Timing(init_s=_us(init), first_inference_s=_us(first), warmup_runs=int(warm[0]),
                      warmup_mean_s=_us(warm_avg), runs=runs, mean_s=_us(avg), std_s=_us(t_std),
                      min_s=_us(t_min), max_s=_us(t_max),
                      peak_rss_kib=None if peak_mb is None or peak_mb < 0 else round(peak_mb * 1024),
                      cpus_allowed=None),
        threads=int(threads.group(1)) if threads else None,
        init_footprint_mb=float(delta.group(1)) if delta else None,
        overall_footprint_mb=float(delta.group(2)) if delta else None)


def refusal(text: str) -> Optional[LoadError]:
    """The load error of a run whose runtime refused the model, or None when the output
    says nothing of the kind (a failure of another sort)."""
    lines = [line.split("INFO: ", 1)[-1].split("ERROR: ", 1)[-1] for line in text.splitlines()]
    hits = [line for line in lines if _REFUSED.search(line)]
    return parse_load_error("\n".join(hits)) if hits else None

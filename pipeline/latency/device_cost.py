"""A model's device cost from one emulated run: what the search's cost tier and the
device-aware channel pruning keep of it, and its estimated latency.

An entry (:func:`run_cost`) holds the run's instruction counts, block profile, graph
bytes, peak memory and file size; :func:`price` turns it into latency and memory with
the current parameters, so a cached entry is re-priced when they change.
"""

from typing import Any, Dict

from pipeline.devices.profiles import DeviceProfile
from pipeline.latency.reference import noop
from pipeline.latency.traffic import GraphTraffic, graph_traffic
from pipeline.errors import Log

# Bump when what a cost entry holds changes.
COST_VERSION = 2


def measure_keras(model, label: str, profile: DeviceProfile, int8_io: bool = False,
                  log: Log = noop) -> Dict[str, Any]:
    """One emulated run of a Keras model's full-int8 conversion (random calibration
    images; ``int8_io``: int8 input and output instead of float) on ``profile``'s core,
    one thread: :func:`run_cost` of it (not cached)."""
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    import numpy as np

    from pipeline.devices.check import run_device_check
    from pipeline.devices.runtime import ensure_runtime
    from pipeline.export.convert import convert_keras
    from pipeline.variants import VARIANTS
    from pipeline.latency.reference import CALIBRATION_IMAGES, SEED
    from pipeline.native import captured_stderr

    shape = tuple(model.input_shape[1:])
    calibration = np.random.default_rng(SEED).random((CALIBRATION_IMAGES, *shape), dtype=np.float32)
    with captured_stderr():
        tflite = convert_keras(model, VARIANTS.get("int8-ptq"), calibration, int8_io=int8_io)
    runtime = ensure_runtime(progress=log)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{label}.tflite"
        path.write_bytes(tflite)
        x = np.random.default_rng(SEED).random((1, *shape), dtype=np.float32)
        res = run_device_check(path, replace(profile, default_threads=1), x, threads=1, runtime=runtime)
        return run_cost(res, path)
def run_cost(res, path) -> Dict[str, Any]:
    """What the cost tier keeps of one device check (``res``) of the file at ``path``:
    counts, block profile, graph bytes, memory, size, or why it did not load."""
    out = {"loaded": res.loaded, "load_error": res.load_error, "load_error_op": res.load_error_op,
           "size_bytes": path.stat().st_size, "model_sha256": res.model_sha256,
           "process_wall_s": res.process_wall_s}
    if res.loaded:
        out.update(instructions=int(res.instructions_median),
                   instructions_by_class={k: int(v) for k, v in res.instructions_by_class.items()},
                   peak_memory_bytes=int(res.memory.total_bytes),
                   block_profile=res.to_dict()["block_profile"], traffic=graph_traffic(path).to_dict())
    return out
def price(cost: Dict[str, Any], profile: DeviceProfile, numeric: str, threads: int) -> Dict[str, Any]:
    """``cost`` (a :func:`run_cost` entry) with its estimated latency and memory, when it loaded.

    The latency is recomputed from the kept block profile with the current parameters.
    """
    from pipeline.latency.estimate import estimate_run

    cost = dict(cost, latency_ms=None, memory_mb=None)
    if cost["loaded"]:
        est = estimate_run(cost["block_profile"], GraphTraffic.from_dict(cost["traffic"]), profile,
                           "int8" if numeric.startswith("int8") else "float32", threads)
        cost.update(latency_ms=est["latency_ms"], latency_validated=est["validated"],
                    latency_model=est["pipeline_model"], latency_cycles=est["cycles_single_thread"])
        cost["memory_mb"] = cost["peak_memory_bytes"] / 2**20
    return cost


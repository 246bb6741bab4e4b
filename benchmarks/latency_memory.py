"""The latency model's threads-and-memory term, measured on the cached runs (docs/latency.md).

    python -m benchmarks.latency_memory            # after `mobile-model calibrate` (runs cached)

Figures, not pass/fail. Four tables:

- held out by device, version 3's form (compute + b x memory, non-negative least
  squares on ``a``, ``b``, ``c``) against the shipped roofline
  (``overhead + max(compute, memory)``), on the same published points;
- the shipped term's effect on rpi4 and camera-a53, full-size models, 1 and 4 threads;
- a sensitivity that the model does not ship: per-operator rooflines (compute split
  by multiply-accumulates), a sustained bandwidth, and weights re-read once per tile
  of ``TILE_ROWS`` output rows once they outgrow the shared cache;
- those per-operator forms refitted on the published points, held out by device.
"""

import math
import statistics
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from pipeline.devices.profiles import get_device
from pipeline.latency import calibration as cal
from pipeline.latency.calibration import FULL_SIZE
from pipeline.latency.cycles import core_cycles
from pipeline.latency.model import MEMORY_SCALE_MAX, Device, predict
from pipeline.latency.params import DEFAULT_PARAMS, load_params
from pipeline.latency.published import PUBLISHED_ORDER, PUBLISHED_VARIANTS, load_published
from pipeline.latency.reference import ModelSpec, build_tflite, measure
from pipeline.latency.traffic import GraphTraffic, graph_traffic, spill
from pipeline.table import Table

BOARDS = ("rpi4", "camera-a53")
#: Output rows per pass over a GEMM's weights (XNNPACK's float 4x8 kernels): an assumption.
TILE_ROWS = 4
#: Sustained / peak DRAM bandwidth: STREAM copy on a Raspberry Pi 4, 5.56 of 12.8 GB/s
#: (sci-pi.org.uk, "Stream"); assumed for camera-a53 too.
SUSTAINED = 5.56 / 12.8
GEMMS = ("CONV_2D", "FULLY_CONNECTED")


def _pct(errors: Sequence[float]) -> str:
    e = [abs(x) for x in errors]
    return f"{100 * statistics.median(e):.1f}% / {100 * max(e):.1f}%" if e else "-"


def _held_out_by_device(points, fit: Callable, pred: Callable) -> List[float]:
    errors = {}
    for device in sorted({p.device for p in points}):
        params = fit([p for p in points if p.device != device])
        errors.update({i: pred(p, params) / p.measured_ms - 1 for i, p in enumerate(points) if p.device == device})
    return [errors[i] for i in range(len(points))]


def _additive_fit(points) -> np.ndarray:
    from scipy.optimize import nnls

    x = np.array([p.features() for p in points]) / np.array([p.measured_ms for p in points])[:, None]
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    theta, _ = nnls(x / scale, np.ones(len(points)))
    return theta / scale


def before_after(points) -> Table:
    """Held out by device: version 3's additive form against the shipped roofline."""
    def additive(p, th):
        return float(np.dot(th, p.features()))

    def roofline(p, params):
        return predict(p.cycles, p.ops, p.dram_bytes, p.device_figures, params, p.threads).ms

    t = Table(["model", "all", "1 thread", "multi-thread"], [])
    for name, fit, pred in (("before: compute + b x memory", _additive_fit, additive),
                            ("after: overhead + max(compute, memory)", cal.fit_params, roofline)):
        e = _held_out_by_device(points, fit, pred)
        t.rows.append([name, _pct(e), _pct([x for x, p in zip(e, points) if p.threads == 1]),
                       _pct([x for x, p in zip(e, points) if p.threads > 1])])
    return t


def per_operator(model, traffic: GraphTraffic, cache: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per operator: multiply-accumulates, bytes re-read with LRU, and with partial retention."""
    macs, lru, partial = [], [], []
    for op, ob in zip(model.operators, traffic.ops):
        out = model.tensors[op.outputs[0]]
        n_out = int(np.prod([max(d, 1) for d in out.shape]))
        ins = [i for i in op.inputs if i >= 0]
        filt = model.tensors[ins[1]].shape if len(ins) > 1 else ()
        if op.opcode == "CONV_2D" and filt:
            macs.append(n_out * int(np.prod(filt[1:])))
        elif op.opcode == "DEPTHWISE_CONV_2D" and filt:
            macs.append(n_out * filt[1] * filt[2])
        elif op.opcode == "FULLY_CONNECTED" and filt:
            macs.append(n_out * filt[-1])
        else:
            macs.append(n_out)
        passes = math.ceil(n_out / max(out.shape[-1], 1) / TILE_ROWS) - 1 if op.opcode in GEMMS else 0
        lru.append(ob.weights * passes if ob.weights > cache else 0)
        partial.append(ob.weights * passes * spill(ob.weights, cache))
    return np.array(macs, float), np.array(lru, float), np.array(partial, float)


def _op_terms(spec: ModelSpec, traffic: GraphTraffic, cycles_ms: float, device: Device):
    """Per operator: unit compute (a = 1, split by MACs) and bytes (spilled, LRU and partial re-reads)."""
    cache = device.cache_kb * 1024
    macs, lru, partial = per_operator(graph_model(spec), traffic, cache)
    live = np.array([o.inputs > 0 for o in traffic.ops])
    share = macs * live / (macs * live).sum()
    weights = spill(traffic.weight_bytes, cache)
    spilled = np.array([(o.inputs + o.outputs) * spill(o.inputs + o.outputs + o.weights, cache)
                        + o.weights * weights for o in traffic.ops])
    return cycles_ms * share, {"none": spilled, "partial": spilled + partial, "lru": spilled + lru}


def graph_model(spec: ModelSpec):
    from pipeline.tflite.reader import read_tflite

    return read_tflite(build_tflite(spec))


def board_tables(params, runtime) -> Tuple[Table, Table]:
    """The shipped term on the narrow-bus boards, and the sensitivity beyond it."""
    effect = Table(["device", "model", "format", "DRAM MB", "threads", "ms", "compute", "memory at peak",
                    "bound below"], [], "lllrrrrrr")
    sens = Table(["device", "model", "format", "threads", "shipped", "per op", "+ sustained",
                  "+ re-reads, partial", "+ re-reads, LRU"], [], "lllrrrrrr")
    unit = {"compute_scale": 1.0, "op_overhead_cycles": 1.0, "memory_scale": 1.0}
    for name in BOARDS:
        profile = get_device(name)
        device = Device.of(profile)
        for family in PUBLISHED_ORDER:
            for variant in ("float32", "int8"):
                spec = ModelSpec(family, variant=variant, **FULL_SIZE)
                m = measure(spec, profile, runtime=runtime)
                traffic = GraphTraffic.from_dict(m.traffic)
                cycles = core_cycles(m.block_profile, profile.sched_model, profile.qemu_cpu).cycles
                dram = traffic.dram_bytes(profile.cache_kb * 1024)
                for threads in (1, 4):
                    b = predict(cycles, traffic.op_count, dram, device, params, threads)
                    u = predict(cycles, traffic.op_count, dram, device, unit, threads)
                    bound = 100 * u.memory_ms / b.compute_ms
                    effect.rows.append([name, family, variant, f"{dram / 1e6:.1f}", str(b.threads), f"{b.ms:.1f}",
                                        f"{b.compute_ms:.1f}", f"{u.memory_ms:.2f}", f"{bound:.0f}%"])
                    comp, mem = _op_terms(spec, traffic, b.compute_ms, device)
                    rate = device.dram_gbps * 1e6
                    cols = [(1.0, "none"), (1 / SUSTAINED, "none"), (1 / SUSTAINED, "partial"), (1 / SUSTAINED, "lru")]
                    sens.rows.append([name, family, variant, str(b.threads), f"{b.ms:.1f}"]
                             + [f"{b.overhead_ms + float(np.maximum(comp, s * mem[k] / rate).sum()):.1f}"
                                for s, k in cols])
    return effect, sens


def per_operator_fits(points) -> Table:
    """The per-operator forms refitted on the published points (a, c, b in [1, MEMORY_SCALE_MAX])."""
    from scipy.optimize import least_squares

    rows = []
    for p in points:
        spec = ModelSpec(p.model, variant=PUBLISHED_VARIANTS["int8_qat"] if "int8_qat" in p.name else "float32",
                         **FULL_SIZE)
        f = p.features()
        comp, mem = _op_terms(spec, graph_traffic(build_tflite(spec)), f[0], p.device_figures)
        rows.append((comp, f[1], {k: v / (p.device_figures.dram_gbps * 1e6) for k, v in mem.items()}, p.measured_ms))

    def fit_and_predict(kind: str) -> List[float]:
        def pred(i, th):
            a, c, b = th
            return c * rows[i][1] + float(np.maximum(a * rows[i][0], b * rows[i][2][kind]).sum())

        def fit(idx):
            best = None
            for b0 in (1.0, 2.0, MEMORY_SCALE_MAX):
                r = least_squares(lambda th: np.array([pred(i, th) / rows[i][3] - 1 for i in idx]),
                                  [1.2, 2e4, b0], bounds=([1e-9, 0, 1], [np.inf, np.inf, MEMORY_SCALE_MAX]),
                                  x_scale="jac")
                if best is None or r.cost < best.cost:
                    best = r
            return best.x

        index = list(range(len(points)))
        errors: Dict[int, float] = {}
        for device in sorted({p.device for p in points}):
            th = fit([i for i in index if points[i].device != device])
            errors.update({i: pred(i, th) / rows[i][3] - 1 for i in index if points[i].device == device})
        return [errors[i] for i in index]

    t = Table(["per-operator form", "held out by device", "multi-thread"], [])
    for kind in ("none", "partial", "lru"):
        e = fit_and_predict(kind)
        t.rows.append([kind, _pct(e), _pct([x for x, p in zip(e, points) if p.threads > 1])])
    return t


def main() -> None:
    from pipeline.devices.runtime import ensure_runtime

    runtime = ensure_runtime()
    points = cal.calibration_points(load_published(), runtime=runtime)
    params = load_params(DEFAULT_PARAMS)
    numbers = {"compute_scale": params.compute_scale, "op_overhead_cycles": params.op_overhead_cycles,
               "memory_scale": params.memory_scale}
    effect, sens = board_tables(numbers, runtime)
    for title, table in (("Held out by device", before_after(points)), ("The shipped term on the boards", effect),
                         ("Beyond the shipped term (not in the model)", sens),
                         ("Per-operator forms refitted", per_operator_fits(points))):
        print("\n".join(["", f"## {title}", ""] + table.markdown()))


if __name__ == "__main__":
    main()

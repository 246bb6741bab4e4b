"""Runs a TFLite model on many inputs INSIDE the emulated ARM python (the guest).

Stand-alone on purpose: the guest has only the standard library, numpy and one
TFLite runtime on its path, never the ``pipeline`` package. The host side is
``runner.py``; ``guest_result.py`` reads what this writes.

    python3 guest_runner.py --runtime litert --model M.tflite --inputs x.npy \
        --outputs y.npy --result result.json --threads 1

Inputs and outputs are one ``.npy`` for a model of one input and one output; an ``.npz``
(arrays ``input_0``, ``input_1``, ... in the model's input order; outputs likewise
``output_0``, ...) when the path ends in ``.npz``. Each array has one row per sample.
It writes ``result.json`` (format "mm-guest-result 2": every input and output with its
quantization) and, when the model ran, the raw outputs (their own dtypes). A model the
runtime cannot load is reported as data (``loaded: false`` with the runtime's message),
not as a crash. Anything else that goes wrong ends the process with a traceback, and
the host reports it.

Instruction-count regions (seen by the qemu plugin insn_count) are marked with
lseek(-1, MAGIC, SEEK_SET), which fails harmlessly with EBADF:
    region 0               an empty region: the cost of the markers themselves
    region 1               a warm-up inference on the first input (not in outputs)
    region 2 .. 2+N-1      one per input, around ``invoke()`` only

Timing mode (``--timed-runs N``, for a real device; the emulator never asks for it) adds
a ``timing`` object to the result: load+allocate time, the first inference, the mean of
``--warmup`` further invokes, then mean/std/min/max over N invokes of the first input,
the peak resident memory (``ru_maxrss``), the CPUs the process may run on, and a
``device`` object with what the board says about itself where readable.
"""

import argparse
import json
import os
import platform
import sys
import time

MAGIC_BEGIN = 0x6D6D5F7200000001  # must match insn_count.c
MAGIC_END = 0x6D6D5F7200000002
FORMAT = "mm-guest-result 2"
MODULES = {"litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
           "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime")}


def mark(magic):
    try:
        os.lseek(-1, magic, os.SEEK_SET)
    except OSError:
        pass


def io_detail(d):
    scale, zero_point = d["quantization"]
    return {"name": d["name"], "shape": [int(v) for v in d["shape"]],
            "dtype": d["dtype"].__name__, "scale": float(scale),
            "zero_point": int(zero_point)}


def tensor_list(interp, np):
    """Index, name, shape, dtype and size of every tensor, as get_tensor_details() has them.

    Read one field at a time through the wrapper: get_tensor_details() also reads each
    tensor's sparsity parameters, which crashes tflite-runtime 2.14 on ARM (SIGSEGV) on
    some models (MediaPipe's pose_detection, face_detection_full_range_sparse). Tensors
    without a type or a shape are left out, as get_tensor_details() leaves them out.
    """
    raw = interp._interpreter

    def call(name, *args):
        try:
            return getattr(raw, name)(*args, 0)  # the subgraph index, where the wrapper takes one
        except TypeError:
            return getattr(raw, name)(*args)

    tensors = []
    for i in range(call("NumTensors")):
        try:
            dtype = call("TensorType", i)
            shape = [int(v) for v in call("TensorSize", i)] if dtype else None
        except ValueError:  # "Tensor with no shape found": get_tensor_details() skips it too
            continue
        if not dtype:
            continue
        tensors.append({"index": i, "name": call("TensorName", i), "shape": shape, "dtype": dtype.__name__,
                        "nbytes": int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize})
    return tensors


def quantize(x, detail, np):
    """Float inputs -> the model's input dtype, as pipeline.tflite.host does on the host."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        if np.issubdtype(x.dtype, np.integer):
            return x.astype(dtype)
        scale, zero = detail["quantization"]
        if scale == 0:
            raise ValueError(f"integer input {detail['name']!r} has no quantization scale")
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def load_arrays(path, prefix, np):
    """The arrays of an .npy (one) or an .npz (``<prefix>_0``, ``<prefix>_1``, ...)."""
    if not path.endswith(".npz"):
        return [np.load(path)]
    with np.load(path) as data:
        return [data[f"{prefix}_{i}"] for i in range(len(data.files))]


def save_arrays(path, prefix, arrays, np):
    if path.endswith(".npz"):
        np.savez(path, **{f"{prefix}_{i}": a for i, a in enumerate(arrays)})
    else:
        np.save(path, arrays[0])


def set_inputs(interp, inputs, xs, i):
    for d, a in zip(inputs, xs):
        interp.set_tensor(d["index"], a[i:i + 1])


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().replace("\x00", "").strip() or None
    except OSError:
        return None


def board_and_cpu(cpuinfo, tree_model):
    """``(model, cpu)`` of a board: the device tree's model, else cpuinfo's Model; the
    CPU's model name or Hardware, else the ARM implementer and part of the first core."""
    fields = {}
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        if value.strip():
            fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name") or fields.get("Hardware")
    if cpu is None and "CPU part" in fields:
        cpu = f"implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return tree_model or fields.get("Model"), cpu


def device_facts():
    """What the board says about itself, each None where unreadable."""
    model, cpu = board_and_cpu(read_text("/proc/cpuinfo"), read_text("/proc/device-tree/model"))
    return {"model": model, "cpu": cpu, "machine": platform.machine(), "kernel": platform.release(),
            "governor": read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "cpus": os.cpu_count()}


def timed_invokes(interp, runs):
    """Seconds of each of ``runs`` invokes on the inputs already set."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t0)
    return times


def timing_summary(init_s, first_s, warmup, timed):
    import resource
    import statistics

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"init_s": init_s, "first_inference_s": first_s, "warmup_runs": len(warmup),
            "warmup_mean_s": statistics.fmean(warmup) if warmup else None, "runs": len(timed),
            "mean_s": statistics.fmean(timed), "std_s": statistics.pstdev(timed),
            "min_s": min(timed), "max_s": max(timed),
            # Linux reports ru_maxrss in KiB.
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "cpus_allowed": affinity}


def parse_args(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", required=True, choices=sorted(MODULES))
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timed-runs", type=int, default=0, help="timing mode: invokes to time")
    ap.add_argument("--warmup", type=int, default=0, help="timing mode: untimed invokes first")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    import importlib
    import importlib.metadata

    import numpy as np

    module, dist = MODULES[args.runtime]
    Interpreter = importlib.import_module(module).Interpreter
    result = {
        "format": FORMAT,
        "runtime": args.runtime,
        "runtime_version": importlib.metadata.version(dist),
        "numpy_version": np.__version__,
        "threads": args.threads,
        "loaded": False,
        "load_error": None,
    }
    if args.timed_runs:
        result["device"] = device_facts()
    try:
        t_init = time.perf_counter()
        interp = Interpreter(model_path=args.model, num_threads=args.threads)
        interp.allocate_tensors()
        init_s = time.perf_counter() - t_init
    except (ValueError, RuntimeError) as e:
        # What an old runtime says about an op (version) it does not know.
        result["load_error"] = str(e).strip()
        write_json(args.result, result)
        return 0

    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    xs = [quantize(a, d, np) for a, d in zip(load_arrays(args.inputs, "input", np), inputs)]
    if len(xs) != len(inputs):
        raise SystemExit(f"{len(xs)} input arrays for {len(inputs)} model inputs")
    for a, d in zip(xs, inputs):
        if tuple(a.shape[1:]) != tuple(d["shape"][1:]):
            raise SystemExit(f"input {d['name']!r} has shape {list(a.shape[1:])} per sample, the "
                             f"model wants {[int(v) for v in d['shape'][1:]]}")
    samples = len(xs[0])

    mark(MAGIC_BEGIN)
    mark(MAGIC_END)
    set_inputs(interp, inputs, xs, 0)
    t_first = time.perf_counter()
    mark(MAGIC_BEGIN)
    interp.invoke()
    mark(MAGIC_END)
    first_s = time.perf_counter() - t_first
    warmup = timed_invokes(interp, args.warmup) if args.timed_runs else []

    ys, wall = [[] for _ in outputs], []
    for i in range(samples):
        set_inputs(interp, inputs, xs, i)
        t0 = time.perf_counter()
        mark(MAGIC_BEGIN)
        interp.invoke()
        mark(MAGIC_END)
        wall.append(time.perf_counter() - t0)
        for k, out in enumerate(outputs):
            ys[k].append(interp.get_tensor(out["index"])[0].copy())
    save_arrays(args.outputs, "output", [np.stack(y) for y in ys], np)
    if args.timed_runs:
        set_inputs(interp, inputs, xs, 0)
        result["timing"] = timing_summary(init_s, first_s, warmup, timed_invokes(interp, args.timed_runs))

    result.update({
        "loaded": True,
        "inputs": [io_detail(d) for d in inputs],
        "outputs": [io_detail(d) for d in outputs],
        "tensors": tensor_list(interp, np),
        "samples": samples,
        "wall_s": wall,
        "regions": {"marker_overhead": 0, "warmup": 1, "first_inference": 2},
    })
    write_json(args.result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

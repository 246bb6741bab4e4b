"""Runs a TFLite model on many inputs INSIDE the emulated ARM python (the guest).

Stand-alone on purpose: the guest has only the standard library, numpy and one
TFLite runtime on its path, never the ``pipeline`` package. The host side is
``runner.py``; ``guest_result.py`` reads what this writes.

    python3 guest_runner.py --runtime litert --model M.tflite --inputs x.npy \
        --outputs y.npy --result result.json --threads 1

It writes ``result.json`` (format "mm-guest-result 1") and, when the model ran,
the outputs as one .npy (raw output dtype, one row per input). A model the runtime
cannot load is reported as data (``loaded: false`` with the runtime's message), not
as a crash. Anything else that goes wrong ends the process with a traceback, and
the host reports it.

Instruction-count regions (seen by the qemu plugin insn_count) are marked with
lseek(-1, MAGIC, SEEK_SET), which fails harmlessly with EBADF:
    region 0               an empty region: the cost of the markers themselves
    region 1               a warm-up inference on the first input (not in outputs)
    region 2 .. 2+N-1      one per input, around ``invoke()`` only
"""

import argparse
import json
import os
import sys
import time

MAGIC_BEGIN = 0x6D6D5F7200000001  # must match insn_count.c
MAGIC_END = 0x6D6D5F7200000002
FORMAT = "mm-guest-result 1"
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


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", required=True, choices=sorted(MODULES))
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

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
    try:
        interp = Interpreter(model_path=args.model, num_threads=args.threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        # What an old runtime says about an op (version) it does not know.
        result["load_error"] = str(e).strip()
        write_json(args.result, result)
        return 0

    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise SystemExit(f"device runs need one input and one output; the model has "
                         f"{len(inputs)} inputs and {len(outputs)} outputs")
    inp, out = inputs[0], outputs[0]
    x = quantize(np.load(args.inputs), inp, np)
    if tuple(x.shape[1:]) != tuple(inp["shape"][1:]):
        raise SystemExit(f"inputs have shape {list(x.shape[1:])} per sample, the model "
                         f"wants {[int(v) for v in inp['shape'][1:]]}")

    mark(MAGIC_BEGIN)
    mark(MAGIC_END)
    interp.set_tensor(inp["index"], x[:1])
    mark(MAGIC_BEGIN)
    interp.invoke()
    mark(MAGIC_END)

    ys, wall = [], []
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i:i + 1])
        t0 = time.perf_counter()
        mark(MAGIC_BEGIN)
        interp.invoke()
        mark(MAGIC_END)
        wall.append(time.perf_counter() - t0)
        ys.append(interp.get_tensor(out["index"])[0].copy())
    np.save(args.outputs, np.stack(ys) if ys else np.zeros((0,) + tuple(out["shape"][1:])))

    result.update({
        "loaded": True,
        "input": io_detail(inp),
        "output": io_detail(out),
        "tensors": [{"index": int(t["index"]), "name": t["name"],
                     "shape": [int(v) for v in t["shape"]], "dtype": t["dtype"].__name__,
                     "nbytes": int(np.prod(t["shape"], dtype=np.int64))
                     * np.dtype(t["dtype"]).itemsize}
                    for t in interp.get_tensor_details()],
        "samples": len(x),
        "wall_s": wall,
        "regions": {"marker_overhead": 0, "warmup": 1, "first_inference": 2},
    })
    write_json(args.result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

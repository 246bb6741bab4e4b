"""Inspecting and evaluating a ``.tflite`` file given by a user.

Such a file is untrusted. :func:`describe_model` only reads it, with the
bounds-checked parser: no runtime sees the file, so a model with custom ops the
runtimes lack is described like any other. Evaluation (and ``describe_model`` with
``load``) hands it to LiteRT only in a child process (:mod:`pipeline.tflite.sandbox`),
so a malformed or hostile file gives a clear :class:`ModelFileError` instead of a
crash or a hang.
"""

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from pipeline.errors import ConfigError, DataError
from pipeline.tflite.sandbox import load_check, run_untrusted
from pipeline.tflite.reader import TFLiteModel, read_tflite


def describe_model(path: Path, load: bool = False, model: Optional[TFLiteModel] = None) -> Dict[str, Any]:
    """Ops with versions, custom ops, tensors, inputs/outputs with quantization, and size.

    Read from the file alone unless ``load``.

    Args:
        load: also have the host runtime (LiteRT) load the file and allocate its
            tensors, in an isolated child process.
        model: the file as already parsed (read otherwise).

    Raises:
        ModelFileError: missing, truncated or not a TFLite file, or (with ``load``)
            the runtime rejects it, crashes on it or times out.
    """
    m = model if model is not None else read_tflite(path)
    runtime = None
    if load:
        info = load_check(path, model=m)
        runtime = {"loads": True, "ops": len(info["ops"])}

    def tensor(i):
        t = m.tensors[i]
        q = t.quantization
        return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                "scale": [float(s) for s in q.scale[:4]], "zero_point": [int(z) for z in q.zero_point[:4]],
                "per_channel": len(q.scale) > 1, "channels": len(q.scale),
                "quantized_dimension": q.quantized_dimension}

    counts: Dict[str, int] = {}
    for op in m.operators:
        key = f"{op.opcode}:v{op.version}"
        counts[key] = counts.get(key, 0) + 1
    dtypes: Dict[str, int] = {}
    for t in m.tensors:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
    return {
        "path": str(path),
        "size_bytes": m.size,
        "subgraphs": m.num_subgraphs,
        "operators": len(m.operators),
        "ops": counts,
        "op_codes": [{"op": c.name, "version": c.version} for c in m.op_codes],
        "custom_ops": sorted({c.custom_code or "" for c in m.op_codes if c.builtin == "CUSTOM"}),
        "tensor_dtypes": dtypes,
        "inputs": [tensor(i) for i in m.inputs],
        "outputs": [tensor(i) for i in m.outputs],
        "host_runtime": runtime,
    }


def format_description(d: Dict[str, Any]) -> str:
    """The text form of :func:`describe_model`'s result."""
    lines = [f"{d['path']}: {d['size_bytes']:,} bytes, {d['operators']} operators, {d['subgraphs']} subgraph(s)"]
    for kind in ("inputs", "outputs"):
        for t in d[kind]:
            lines.append(f"  {kind[:-1]:<7}{t['name']}: {t['dtype']} {t['shape']}{_quantization(t)}")
    lines.append("  ops:")
    for op, n in sorted(d["ops"].items()):
        lines.append(f"    {op:<31} x{n}")
    if d.get("custom_ops"):
        lines.append("  custom ops: " + ", ".join(d["custom_ops"]))
    lines.append("  tensor dtypes: " + ", ".join(f"{k} x{v}" for k, v in sorted(d["tensor_dtypes"].items())))
    if d.get("runtimes"):
        lines.append("  device runtimes (read from the file, never run):")
        for r in d["runtimes"]:
            lines.append(f"    {r['runtime'] + ' ' + r['version']:<24}{_verdict(r)}  [{', '.join(r['devices'])}]")
    if d.get("host_runtime"):
        lines.append(f"  host LiteRT: loads and allocates ({d['host_runtime']['ops']} ops, isolated process)")
    return "\n".join(lines)


def _quantization(t: Dict[str, Any]) -> str:
    if not t["scale"]:
        return ""
    if t["per_channel"]:
        return f" per-channel ({t['channels']} scales, axis {t['quantized_dimension']})"
    return f" scale {t['scale'][0]:.6g} zero_point {t['zero_point'][0]}"


def _verdict(r: Dict[str, Any]) -> str:
    if r["loads"] is None:
        return r["reason"]
    if r["loads"]:
        return "loads"
    text = "cannot load: lacks " + ", ".join(r["lacks"])
    if all(m.startswith("custom op ") for m in r["lacks"]):
        text += " (with the op resolver alone; a delegate, e.g. the default XNNPACK, may still take those nodes)"
    return text


#: Images per sandboxed evaluation run (at 224x224x3 float32, 0.6 MiB each).
EVAL_BLOCK = 1024


def evaluate_file(path: Path, recipe: Optional[str] = None, smoke: bool = False,
                  folder: Optional[Path] = None) -> Dict[str, Any]:
    """Top-1 of a TFLite file on a recipe's test split or on a folder data set.

    Raises:
        ConfigError: neither or both of ``recipe`` and ``folder`` given.
        ModelFileError / DataError: unusable model or data.
    """
    from pipeline.recipe.schema import DataConfig
    from pipeline.recipe.load import load_recipe
    from pipeline.data import load_dataset
    if (recipe is None) == (folder is None):
        raise ConfigError("evaluation needs exactly one source of test images: a recipe or a folder")
    m = read_tflite(path)
    shape = tuple(m.tensors[m.inputs[0]].shape[1:])
    if len(shape) != 3:
        raise DataError(f"{path}: expected an image input [N, H, W, C], the model's input is {list(shape)}")
    if recipe is not None:
        r = load_recipe(recipe, smoke=smoke)
        splits = load_dataset(r.data, shape, r.seed)
        parts, source = [(splits.x_test, splits.y_test)], f"test split of {r.build_name}"
    else:
        cfg = DataConfig(dataset="folder", path=str(folder), train_samples=None, val_samples=None,
                         test_samples=None)
        splits = load_dataset(cfg, shape, 0)
        parts = [splits.split(name) for name in ("train", "val", "test")]
        source = f"all images of {folder}"
    out_classes = m.tensors[m.outputs[0]].shape[-1]
    if out_classes != len(splits.labels):
        raise DataError(f"{path}: the model has {out_classes} outputs but the data has "
                        f"{len(splits.labels)} classes")
    # In blocks: the sandboxed runtime gets a bounded batch of images at a time.
    correct = samples = 0
    for x, y in parts:
        for s in range(0, len(x), EVAL_BLOCK):
            probs = run_untrusted(path, x[s:s + EVAL_BLOCK], model=m)
            correct += int(np.sum(np.argmax(probs, 1) == y[s:s + EVAL_BLOCK]))
            samples += len(probs)
    return {"top1": correct / samples * 100, "samples": samples, "source": source, "size_bytes": m.size}

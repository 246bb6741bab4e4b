"""The deployable bundle: what an engineer flashes onto a phone or a camera.

``build/<recipe>/bundle/``::

    model.tflite    the recipe's deploy variant, byte for byte as built
    labels.txt      one class name per line, in output-index order
    metadata.json   input shape/dtype/normalization/quantization, output, op list with
                    versions, runtimes that load it (and the op that fails where not),
                    target devices with their measured figures
    MODEL_CARD.md   the same for people: what it is, how well it does, how to feed it
    SHA256SUMS      ``cd bundle && sha256sum -c SHA256SUMS``

The bundle is assembled in a temporary directory next to it and swapped in by
renames, so a reader never sees a half-written bundle.

Labels and normalization are *not* embedded as TFLite metadata inside
``model.tflite``: the maintained writer (``mediapipe``'s metadata_writers) needs
absl-py ~= 2.3, which conflicts with tfmot's pin (absl-py 1.4.0), and imports
OpenCV; ``tflite-support`` 0.4.4 (2023) is unmaintained. ``metadata.json`` and
``labels.txt`` carry the same facts instead (see baselines/README.md).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from pipeline.export.evaluate import gzip_size
from pipeline.store.atomic import atomic_write_bytes, sha256_bytes
from pipeline.tflite.reader import read_tflite

Log = Callable[[str], None]

BUNDLE_FORMAT = "mobile-model-bundle"
BUNDLE_VERSION = 1
MODEL_FILE = "model.tflite"
FILES = (MODEL_FILE, "labels.txt", "metadata.json", "MODEL_CARD.md", "SHA256SUMS")

# Why the model file carries no embedded TFLite metadata (shown in the metadata and model card).
EMBEDDED_METADATA_NOTE = (
    "Labels and normalization are not embedded as TFLite metadata: the maintained writer "
    "(mediapipe metadata_writers) requires absl-py~=2.3, which conflicts with the absl-py 1.4.0 "
    "pin of tensorflow-model-optimization 0.8.1, and tflite-support 0.4.4 (2023) is unmaintained. "
    "labels.txt and metadata.json carry the same information.")

# Runtime lineage, oldest first: tflite-runtime (TF Lite <= 2.14), then LiteRT (ai-edge-litert).
RUNTIME_ORDER = ("tflite-runtime", "litert")


def runtime_sort_key(runtime: str) -> Tuple[int, Tuple[int, ...], str]:
    """Orders "name version" strings oldest first (unknown names last)."""
    name, _, version = runtime.partition(" ")
    rank = RUNTIME_ORDER.index(name) if name in RUNTIME_ORDER else len(RUNTIME_ORDER)
    nums = tuple(int(p) if p.isdigit() else 0 for p in version.split("."))
    return rank, nums, runtime


def runtime_support(devices: Mapping[str, Mapping[str, Any]], variant: str) -> Dict[str, Any]:
    """Which runtimes loaded ``variant`` on which devices, and which failed on what op.

    Args:
        devices: the build's ``devices`` metrics ({device: {variant: figures}}).

    Returns:
        ``{"tested": [{runtime, loads, devices, failing_op, failing_op_version, error}],
        "minimum": oldest runtime that loads it or None, "note": one sentence}``.
    """
    by_runtime: Dict[str, Dict[str, Any]] = {}
    for dev, per in devices.items():
        rec = per.get(variant)
        if rec is None:
            continue
        rt = rec.get("runtime") or "unknown runtime"
        entry = by_runtime.setdefault(rt, {"runtime": rt, "loads": True, "devices": [], "failing_op": None,
                                           "failing_op_version": None, "error": None})
        entry["devices"].append(dev)
        if not rec.get("loaded"):
            entry["loads"] = False
            entry["failing_op"] = rec.get("load_error_op")
            entry["failing_op_version"] = rec.get("load_error_op_version")
            entry["error"] = ((rec.get("load_error") or "").strip().splitlines() or [None])[0]
    tested = sorted(by_runtime.values(), key=lambda e: runtime_sort_key(e["runtime"]))
    loading = [e["runtime"] for e in tested if e["loads"]]
    failing = [e for e in tested if not e["loads"]]
    minimum = loading[0] if loading else None
    if not tested:
        note = "not run on any emulated device runtime (build without devices)"
    elif minimum is None:
        note = "no tested device runtime loads it"
    else:
        older = [e for e in failing if runtime_sort_key(e["runtime"]) < runtime_sort_key(minimum)]
        note = f"oldest tested runtime that loads it: {minimum}"
        if older:
            note += "; fails on " + ", ".join(
                f"{e['runtime']} ({_op(e)})" for e in older)
        elif not failing:
            note += " (every tested runtime loads it)"
        newer = [e for e in failing if e not in older]
        if newer:
            note += "; also fails on newer " + ", ".join(f"{e['runtime']} ({_op(e)})" for e in newer)
    return {"tested": tested, "minimum": minimum, "note": note}


def _op(entry: Mapping[str, Any]) -> str:
    if entry.get("failing_op"):
        return f"{entry['failing_op']} v{entry['failing_op_version']}"
    return entry.get("error") or "load error"


def _profile(name: str):
    from pipeline.devices.profiles import get_device
    from pipeline.errors import ConfigError

    try:
        return get_device(name)
    except ConfigError:  # a device of an older build that is no longer registered
        return None


def device_figures(devices: Mapping[str, Mapping[str, Any]], variant: str) -> Dict[str, Dict[str, Any]]:
    """Per target device: the profile (real device, core, clock, RAM, runtime) and the
    measured figures of ``variant`` on its emulation."""
    out = {}
    for dev, per in devices.items():
        rec = per.get(variant)
        if rec is None:
            continue
        prof = _profile(dev)
        out[dev] = {
            "description": prof.description if prof else None,
            "emulated_cpu": prof.qemu_cpu if prof else None,
            "clock_ghz": prof.clock_ghz if prof else None,
            "ram_mb": prof.ram_mb if prof else None,
            "runtime": rec.get("runtime"),
            "loads": bool(rec.get("loaded")),
            "load_error_op": rec.get("load_error_op"),
            "load_error_op_version": rec.get("load_error_op_version"),
            "top1": rec.get("top1"),
            "samples": rec.get("samples"),
            "instructions_per_inference": rec.get("instructions_per_inference"),
            "estimated_latency_ms": rec.get("latency_ms"),
            "peak_memory_bytes": rec.get("peak_memory_bytes"),
            "fits_ram": rec.get("fits_ram"),
            "bit_exact_fraction": rec.get("exact_fraction"),
            "top1_agreement_with_host": rec.get("top1_agreement"),
        }
    return out


def bundle_metadata(recipe, metrics: Mapping[str, Any], model_bytes: bytes) -> Dict[str, Any]:
    """The contents of ``metadata.json`` for the recipe's deploy variant."""
    variant = metrics["deploy_variant"]
    v = metrics["variants"][variant]
    model = read_tflite_bytes(model_bytes, variant)
    channels = recipe.model.channels
    inp, out = v["input"], v["output"]
    integer_in = inp["dtype"] not in ("float32", "float16")
    quant_in = {"scale": inp.get("scale") or [], "zero_point": inp.get("zero_point") or []}
    feed = ("x = pixel / 255 as float32, NHWC" if not integer_in else
            f"x = pixel / 255, then q = clip(round(x / scale) + zero_point) as {inp['dtype']}")
    from pipeline.export.variants import VARIANTS

    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "name": metrics["recipe"],
        "model_file": MODEL_FILE,
        "variant": variant,
        "variant_description": VARIANTS.get(variant).description if variant in VARIANTS.names() else "",
        "sha256": sha256_bytes(model_bytes),
        "size_bytes": len(model_bytes),
        "gzip_bytes": gzip_size(model_bytes),
        "architecture": {"family": recipe.model.family, "alpha": recipe.model.alpha,
                         "params": metrics.get("params"), "macs": metrics.get("macs")},
        "input": {
            "shape": inp["shape"],
            "dtype": inp["dtype"],
            "layout": "NHWC",
            "color": "grayscale" if channels == 1 else "RGB",
            "fit": recipe.data.fit,
            "normalization": {"range": [0.0, 1.0], "formula": "x = pixel / 255",
                              "mean": [0.0] * channels, "std": [255.0] * channels},
            "quantization": quant_in if integer_in else None,
            "quantized_inside": _boundary_quantization(model, model.inputs[0], "QUANTIZE", "input"),
            "how_to_feed": feed,
        },
        "output": {
            "shape": out["shape"],
            "dtype": out["dtype"],
            "meaning": "class probabilities (softmax) in labels.txt order",
            "quantization": ({"scale": out.get("scale") or [], "zero_point": out.get("zero_point") or []}
                             if out["dtype"] not in ("float32", "float16") else None),
            "quantized_inside": _boundary_quantization(model, model.outputs[0], "DEQUANTIZE", "output"),
        },
        "labels": list(metrics.get("labels") or []),
        "labels_file": "labels.txt",
        "ops": [{"op": name, "version": ver} for name, ver in model.op_versions()],
        "accuracy": {"float_top1": metrics.get("float_top1"), "top1": v.get("top1"),
                     "agreement_with_float": v.get("agreement_with_float"), "test_samples": v.get("samples"),
                     "dataset": recipe.data.dataset},
        "sparsity": {"zeros_prunable": v.get("zeros_prunable"), "zeros_all_kernels": v.get("zeros_all_kernels")},
        "runtimes": runtime_support(metrics.get("devices") or {}, variant),
        "devices": device_figures(metrics.get("devices") or {}, variant),
        "budgets": [b for b in metrics.get("budgets") or []],
        "embedded_tflite_metadata": False,
        "embedded_tflite_metadata_note": EMBEDDED_METADATA_NOTE,
        "smoke_build": bool(recipe.smoke_form),
    }


def _boundary_quantization(model, tensor: int, opcode: str, side: str) -> Optional[Dict[str, Any]]:
    """For a float-I/O integer model: the integer tensor behind the graph's float input
    (the QUANTIZE op's output) or output (the DEQUANTIZE op's input); None otherwise."""
    for op in model.operators:
        if op.opcode != opcode:
            continue
        if side == "input" and tensor in op.inputs:
            t = model.tensors[op.outputs[0]]
        elif side == "output" and tensor in op.outputs:
            t = model.tensors[op.inputs[0]]
        else:
            continue
        return {"dtype": t.dtype, "scale": list(t.quantization.scale),
                "zero_point": list(t.quantization.zero_point)}
    return None


def read_tflite_bytes(data: bytes, name: str):
    from pipeline.tflite.reader import parse_tflite

    return parse_tflite(data, name)


def write_bundle(recipe, root: Path, metrics: Mapping[str, Any], log: Log = print) -> Dict[str, Any]:
    """Writes ``root/bundle/`` for the recipe's deploy variant.

    Args:
        recipe: the build's recipe.
        root: the build directory (holds ``tflite/<variant>.tflite``).
        metrics: the build's summary (``summary.json`` contents).

    Returns:
        ``{"path": bundle dir, "files": {name: {"sha256", "size_bytes"}}, "metadata": {...}}``.

    Raises:
        ModelFileError: the deploy variant's .tflite is missing or not a TFLite file.
    """
    root = Path(root)
    variant = metrics["deploy_variant"]
    model_path = root / "tflite" / f"{variant}.tflite"
    read_tflite(model_path)  # a missing or corrupt file raises ModelFileError naming the path
    model_bytes = model_path.read_bytes()
    meta = bundle_metadata(recipe, metrics, model_bytes)
    contents: Dict[str, bytes] = {
        MODEL_FILE: model_bytes,
        "labels.txt": ("\n".join(meta["labels"]) + "\n").encode(),
        "metadata.json": (json.dumps(meta, indent=2, sort_keys=False) + "\n").encode(),
        "MODEL_CARD.md": model_card(recipe, metrics, meta).encode(),
    }
    contents["SHA256SUMS"] = "".join(f"{sha256_bytes(data)}  {name}\n"
                                     for name, data in sorted(contents.items())).encode()
    final = root / "bundle"
    _swap_in(root, final, contents)
    files = {name: {"sha256": sha256_bytes(data), "size_bytes": len(data)} for name, data in contents.items()}
    log(f"[bundle] {final}: {variant} ({len(model_bytes) / 1024:.1f} KiB), {', '.join(contents)}")
    return {"path": final, "files": files, "metadata": meta}


def _swap_in(root: Path, final: Path, contents: Mapping[str, bytes]) -> None:
    """Writes ``contents`` into a fresh directory, then renames it onto ``final``."""
    staging = Path(tempfile.mkdtemp(prefix=".bundle.", suffix=".tmp", dir=root))
    old = None
    try:
        for name, data in contents.items():
            atomic_write_bytes(staging / name, data)
        os.chmod(staging, 0o755)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=".bundle.", suffix=".old", dir=root))
            os.rmdir(old)
            os.rename(final, old)
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        if old is not None and old.exists():
            shutil.rmtree(old)


def _fmt(value: Optional[float], fmt: str, scale: float = 1.0, none: str = "-") -> str:
    return none if value is None else format(value * scale, fmt)


def model_card(recipe, metrics: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md``: the model for people (what, how well, how to feed it, limits)."""
    r = recipe
    variant = meta["variant"]
    acc = meta["accuracy"]
    inp = meta["input"]
    lines = [
        f"# Model card: {meta['name']} ({variant})",
        "",
        f"`{MODEL_FILE}` is the **{variant}** variant ({meta['variant_description']}) of a "
        f"{r.model.family} (width {r.model.alpha:g}) image classifier built by mobile-model from the "
        f"recipe `{meta['name']}`: {len(meta['labels'])} classes, input {'x'.join(map(str, inp['shape'][1:]))} "
        f"{inp['color']}, {meta['architecture']['params']:,} parameters, "
        f"{meta['architecture']['macs']:,} multiply-accumulates per image, "
        f"{meta['size_bytes'] / 1024:.1f} KiB ({meta['gzip_bytes'] / 1024:.1f} KiB gzipped).",
        "",
    ]
    if meta["smoke_build"]:
        lines += ["> **Smoke build**: tiny data and one epoch, for tests only. Do not deploy.", ""]
    lines += [
        "## Training data",
        "",
        f"Data set `{r.data.dataset}` (train {_count(r.data.train_samples)}, validation "
        f"{_count(r.data.val_samples)}, test {_count(r.data.test_samples)} images requested; seed {r.seed}). "
        f"Training: {r.train.epochs} epoch(s)"
        + (f", magnitude pruning to {r.prune.target_sparsity:.0%} of Conv2D/Dense weights" if r.prune.enabled else "")
        + (", quantization-aware training" if r.qat.enabled else "") + ".",
        "",
        "## Accuracy (test split, host runtime)",
        "",
        "| model | top-1 % |",
        "|---|---:|",
        f"| float Keras | {_fmt(acc['float_top1'], '.2f')} |",
        f"| {variant} (this file) | {_fmt(acc['top1'], '.2f')} |",
        "",
        f"Agreement with the float model: {_fmt(acc['agreement_with_float'], '.2f')}% of "
        f"{acc['test_samples']} test images.",
        "",
        "## How to feed it",
        "",
        f"- Input tensor: shape {inp['shape']}, {inp['dtype']}, NHWC, {inp['color']}, "
        f"image fitted by `{inp['fit']}` to {inp['shape'][1]}x{inp['shape'][2]}.",
        f"- Normalization: {inp['normalization']['formula']} (float in [0, 1]; mean 0, std 255 in "
        "TFLite metadata terms).",
    ]
    if inp["quantization"]:
        q = inp["quantization"]
        lines.append(f"- Quantization: scale {q['scale']}, zero point {q['zero_point']}: {inp['how_to_feed']}.")
    elif inp["quantized_inside"]:
        qi = inp["quantized_inside"]
        lines.append(f"- Feed floats: the model quantizes its input itself (QUANTIZE op to {qi['dtype']}, "
                     f"scale {qi['scale']}, zero point {qi['zero_point']}).")
    else:
        lines.append(f"- Feed {inp['dtype']} values as they are.")
    out = meta["output"]
    lines += [f"- Output: shape {out['shape']}, {out['dtype']}: {out['meaning']}"
              + (f"; dequantize with scale {out['quantization']['scale']}, zero point "
                 f"{out['quantization']['zero_point']}" if out["quantization"] else "") + ".",
              "- Labels: `labels.txt`, one per line, line *i* is output index *i*.",
              "",
              "```python",
              "import numpy as np",
              "from ai_edge_litert.interpreter import Interpreter",
              f"interp = Interpreter(model_path=\"{MODEL_FILE}\")",
              "interp.allocate_tensors()",
              "inp, out = interp.get_input_details()[0], interp.get_output_details()[0]",
              "x = image.astype(np.float32)[None] / 255.0          # (1, H, W, C) in [0, 1]"]
    if inp["quantization"]:
        lines.append("s, z = inp['quantization']; x = np.clip(np.round(x / s + z), -128, 127).astype(np.int8)")
    lines += ["interp.set_tensor(inp['index'], x); interp.invoke()",
              "label = open('labels.txt').read().split('\\n')[int(np.argmax(interp.get_tensor(out['index'])))]",
              "```",
              "",
              "## Runtimes and devices",
              "",
              "Ops: " + ", ".join(f"{o['op']} v{o['version']}" for o in meta["ops"]) + ".",
              "",
              f"Runtime compatibility (emulated devices): {meta['runtimes']['note']}.",
              ""]
    devs = meta["devices"]
    if devs:
        lines += ["| device | runtime | loads | top-1 % | M instr / inference | est. latency ms | memory MiB |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for name, d in devs.items():
            loads = "yes" if d["loads"] else f"no ({d['load_error_op']} v{d['load_error_op_version']})"
            lines.append(f"| {name}: {d['description'] or ''} | {d['runtime']} | {loads} | "
                         f"{_fmt(d['top1'], '.1f')} | {_fmt(d['instructions_per_inference'], '.3f', 1e-6)} | "
                         f"{_fmt(d['estimated_latency_ms'], '.2f')} | "
                         f"{_fmt(d['peak_memory_bytes'], '.2f', 1 / 2 ** 20)} |")
        lines += ["",
                  "Device figures come from the real ARM runtime under qemu-aarch64: top-1 on "
                  f"{next(iter(devs.values()))['samples']} test images, instructions counted per inference "
                  "(deterministic). Latency is an estimate from a cost model, blank where the device "
                  "profile has no fitted parameters; it was not measured on the device.", ""]
    else:
        lines += ["No emulated-device results in this build.", ""]
    lines += ["## Limitations",
              "",
              f"- Accuracy is measured on the recipe's `{r.data.dataset}` test split only; "
              "images unlike the training data (other cameras, lighting, classes) will do worse.",
              "- " + EMBEDDED_METADATA_NOTE,
              "",
              "## Files",
              "",
              "Verify with `sha256sum -c SHA256SUMS` in this directory.",
              ""]
    return "\n".join(lines)


def _count(n: Optional[int]) -> str:
    return "all" if n is None else f"{n:,}"


def bundle_files(bundle: Path) -> List[Tuple[str, int, str]]:
    """(name, size, sha256) of the files listed in ``bundle/SHA256SUMS`` (for reports)."""
    out = []
    for line in (Path(bundle) / "SHA256SUMS").read_text().splitlines():
        sha, _, name = line.partition("  ")
        out.append((name, (Path(bundle) / name).stat().st_size, sha))
    return out

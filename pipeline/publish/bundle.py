"""The deployable bundle: what an engineer flashes onto a phone or a camera.

``build/<recipe>/bundle/``::

    model.tflite    the recipe's deploy variant with TFLite metadata embedded (name,
                    description, input normalization, labels.txt packed inside, the
                    output as class scores), written by MediaPipe's metadata writer in
                    its own environment (:mod:`pipeline.publish.tflite_metadata`); a
                    one-channel float model also gets an RGB front (MediaPipe Tasks
                    reads only RGB images), so its input is [1, H, W, 3]
    model_without_metadata.tflite
                    the deploy variant byte for byte as built and measured on the devices
    labels.txt      one class name per line, in output-index order
    metadata.json   input shape/dtype/normalization/quantization, output, op list with
                    versions, runtimes that load it (and the op that fails where not),
                    target devices with their measured figures and estimated latency
                    (with its latency model, cycles, IPC and whether it is validated),
                    what the embedded TFLite metadata says
    MODEL_CARD.md   the same for people: what it is, how well it does, how to feed it
    SHA256SUMS      ``cd bundle && sha256sum -c SHA256SUMS``

:func:`assemble_bundle` computes the files in memory (the report shows their
hashes without writing them); :func:`write_bundle` writes them into a temporary
directory next to ``bundle/`` and swaps it in by renames, so a reader never sees a
half-written bundle.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from pipeline.store.atomic import gzip_size
from pipeline.publish.model_card import MODEL_FILE, PLAIN_MODEL_FILE, model_card
from pipeline.publish.records import device_profile, in_recipe_order
from pipeline.publish.tflite_metadata import LABELS_FILE, embed_metadata
from pipeline.recipe.targets import profile_of
from pipeline.publish.variant_table import variant_description
from pipeline.store.atomic import atomic_write_bytes, sha256_bytes
from pipeline.summary import BuildSummary, DeviceSummary, TensorIO
from pipeline.tflite.reader import parse_tflite, read_tflite
from pipeline.errors import Log


BUNDLE_FORMAT = "mobile-model-bundle"
BUNDLE_VERSION = 1
FILES = (MODEL_FILE, PLAIN_MODEL_FILE, "labels.txt", "metadata.json", "MODEL_CARD.md", "SHA256SUMS")

# Runtime lineage, oldest first: tflite-runtime (TF Lite <= 2.14), then LiteRT (ai-edge-litert).
RUNTIME_ORDER = ("tflite-runtime", "litert")

__all__ = ["Bundle", "FILES", "MODEL_FILE", "PLAIN_MODEL_FILE", "assemble_bundle", "bundle_metadata", "device_figures",
           "runtime_sort_key", "runtime_support", "write_bundle"]


@dataclass(frozen=True)
class Bundle:
    """The files of a bundle (name -> bytes), its ``metadata.json`` contents, and where it goes."""

    path: Path
    contents: Dict[str, bytes]
    metadata: Dict[str, Any]

    @property
    def files(self) -> Dict[str, Dict[str, Any]]:
        """``{name: {"sha256", "size_bytes"}}`` of every file."""
        return {name: {"sha256": sha256_bytes(data), "size_bytes": len(data)} for name, data in self.contents.items()}


def runtime_sort_key(runtime: str) -> Tuple[int, Tuple[int, ...], str]:
    """Orders "name version" strings oldest first (unknown names last)."""
    name, _, version = runtime.partition(" ")
    rank = RUNTIME_ORDER.index(name) if name in RUNTIME_ORDER else len(RUNTIME_ORDER)
    nums = tuple(int(p) if p.isdigit() else 0 for p in version.split("."))
    return rank, nums, runtime


def _runtimes_tested(devices: Mapping[str, Mapping[str, DeviceSummary]], variant: str) -> List[Dict[str, Any]]:
    by_runtime: Dict[str, Dict[str, Any]] = {}
    for dev, per in devices.items():
        rec = per.get(variant)
        if rec is None:
            continue
        rt = rec.runtime or "unknown runtime"
        entry = by_runtime.setdefault(rt, {"runtime": rt, "loads": True, "devices": [], "failing_op": None,
                                           "failing_op_version": None, "error": None})
        entry["devices"].append(dev)
        if not rec.loaded:
            entry["loads"] = False
            entry["failing_op"] = rec.load_error_op
            entry["failing_op_version"] = rec.load_error_op_version
            entry["error"] = ((rec.load_error or "").strip().splitlines() or [None])[0]
    return sorted(by_runtime.values(), key=lambda e: runtime_sort_key(e["runtime"]))


def runtime_support(devices: Mapping[str, Mapping[str, DeviceSummary]], variant: str) -> Dict[str, Any]:
    """Which runtimes loaded ``variant`` on which devices, and which failed on what op.

    Args:
        devices: the build's device results ({device: {variant: result}}).
        variant: the variant to describe.

    Returns:
        ``{"tested": [{runtime, loads, devices, failing_op, failing_op_version, error}],
        "minimum": oldest runtime that loads it or None, "note": one sentence}``.
    """
    tested = _runtimes_tested(devices, variant)
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
            note += "; fails on " + ", ".join(f"{e['runtime']} ({_op(e)})" for e in older)
        elif not failing:
            note += " (every tested runtime loads it)"
        newer = [e for e in failing if e not in older]
        if newer:
            note += "; also fails on newer " + ", ".join(f"{e['runtime']} ({_op(e)})" for e in newer)
    return {"tested": tested, "minimum": minimum, "note": note}


def _op(entry: Mapping[str, Any]) -> str:
    if entry["failing_op"]:
        return f"{entry['failing_op']} v{entry['failing_op_version']}"
    return entry["error"] or "load error"


def device_figures(devices: Mapping[str, Mapping[str, DeviceSummary]], variant: str) -> Dict[str, Dict[str, Any]]:
    """Per target device: the profile (real device, core, clock, RAM, runtime), the
    measured figures of ``variant`` on its emulation, and its estimated latency with
    the estimate's provenance (latency model, cycles on one thread, IPC, validated)."""
    out = {}
    for dev, per in devices.items():
        rec = per.get(variant)
        if rec is None:
            continue
        prof = device_profile(profile_of(dev))  # an entry may name a real device beside its profile
        out[dev] = {
            "description": prof.description if prof else None,
            "emulated_cpu": prof.qemu_cpu if prof else None,
            "clock_ghz": prof.clock_ghz if prof else None,
            "ram_mb": prof.ram_mb if prof else None,
            "runtime": rec.runtime,
            "loads": bool(rec.loaded),
            "load_error_op": rec.load_error_op,
            "load_error_op_version": rec.load_error_op_version,
            "top1": rec.top1,
            "samples": rec.samples,
            "instructions_per_inference": rec.instructions_per_inference,
            "estimated_latency_ms": rec.latency_ms,
            # Where the estimate comes from (docs/latency.md); all None without one.
            "latency_validated": rec.latency_validated,
            "latency_model": rec.latency_model,
            "latency_cycles": rec.latency_cycles,
            "latency_ipc": rec.latency_ipc,
            "peak_memory_bytes": rec.peak_memory_bytes,
            "fits_ram": rec.fits_ram,
            "bit_exact_fraction": rec.exact_fraction,
            "top1_agreement_with_host": rec.top1_agreement,
            # Timed on the real device the entry names (rpi4@ssh://...); None: emulated only.
            "measured": rec.measured.to_dict() if rec.measured is not None else None,
        }
    return out


def _quantization(t: TensorIO) -> Optional[Dict[str, List]]:
    """Scale and zero point of an integer I/O tensor; None for a float one."""
    if t.dtype in ("float32", "float16"):
        return None
    return {"scale": list(t.scale), "zero_point": list(t.zero_point)}


def _input(recipe, inp: TensorIO, model) -> Dict[str, Any]:
    channels = recipe.model.channels
    quant = _quantization(inp)
    feed = ("x = pixel / 255 as float32, NHWC" if quant is None else
            f"x = pixel / 255, then q = clip(round(x / scale) + zero_point) as {inp.dtype}")
    return {
        "shape": list(inp.shape),
        "dtype": inp.dtype,
        "layout": "NHWC",
        "color": "grayscale" if channels == 1 else "RGB",
        "fit": recipe.data.fit,
        "normalization": {"range": [0.0, 1.0], "formula": "x = pixel / 255",
                          "mean": [0.0] * channels, "std": [255.0] * channels},
        "quantization": quant,
        "quantized_inside": _boundary_quantization(model, model.inputs[0], "QUANTIZE", "input"),
        "how_to_feed": feed,
    }


def _output(out: TensorIO, model) -> Dict[str, Any]:
    return {
        "shape": list(out.shape),
        "dtype": out.dtype,
        "meaning": "class probabilities (softmax) in labels.txt order",
        "quantization": _quantization(out),
        "quantized_inside": _boundary_quantization(model, model.outputs[0], "DEQUANTIZE", "output"),
    }


def bundle_metadata(recipe, summary: BuildSummary, model_bytes: bytes,
                    embedded: Mapping[str, Any]) -> Dict[str, Any]:
    """The contents of ``metadata.json`` for the recipe's deploy variant.

    Args:
        model_bytes: the deploy variant as built (``model_without_metadata.tflite``).
        embedded: :func:`pipeline.publish.tflite_metadata.embed_metadata`'s result for it.
    """
    variant = summary.deploy_variant
    v = summary.variants[variant]
    model = parse_tflite(model_bytes, variant)
    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "name": summary.recipe,
        "model_file": MODEL_FILE,
        "model_without_metadata_file": PLAIN_MODEL_FILE,
        "variant": variant,
        "variant_description": variant_description(variant),
        "sha256": sha256_bytes(model_bytes),
        "size_bytes": len(model_bytes),
        "gzip_bytes": gzip_size(model_bytes),
        "architecture": {"family": recipe.model.family, "alpha": recipe.model.alpha,
                         "params": summary.params, "macs": summary.macs,
                         **({"genotype": recipe.model.genotype} if recipe.model.genotype else {})},
        "input": _input(recipe, v.input, model),
        "output": _output(v.output, model),
        "labels": list(summary.labels),
        "labels_file": "labels.txt",
        "ops": [{"op": name, "version": ver} for name, ver in model.op_versions()],
        "accuracy": {"float_top1": summary.float_top1, "top1": v.top1,
                     "agreement_with_float": v.agreement_with_float, "test_samples": v.samples,
                     "dataset": recipe.data.dataset},
        "sparsity": {"zeros_prunable": v.zeros_prunable, "zeros_all_kernels": v.zeros_all_kernels},
        "runtimes": runtime_support(summary.devices, variant),
        "devices": device_figures(summary.devices, variant),
        "budgets": [{"budget": b.budget, "subject": b.subject, "limit": b.limit, "measured": b.measured,
                     "unit": b.unit, "ok": b.ok} for b in summary.budgets],
        "embedded_tflite_metadata": True,
        "tflite_metadata": _embedded_summary(embedded),
        "smoke_build": bool(recipe.smoke_form),
        "init": summary.init.to_dict() if summary.init else None,
        "float_choice": summary.float_choice.to_dict() if summary.float_choice else None,
    }


def _embedded_summary(embedded: Mapping[str, Any]) -> Dict[str, Any]:
    """What ``model.tflite``'s embedded metadata says, and how its file differs from the variant."""
    md = embedded["metadata"]
    sub = md["subgraph_metadata"][0]
    norm = next(u["options"] for u in sub["input_tensor_metadata"][0].get("process_units", [])
                if u["options_type"] == "NormalizationOptions")
    model = parse_tflite(embedded["model"], MODEL_FILE)
    inp = model.tensors[model.inputs[0]]
    shape = [int(d) for d in inp.shape]
    front = embedded["rgb_front"]
    # MediaPipe Tasks' image classifier: RGB(A) images into a float32 or uint8 tensor.
    mediapipe_tasks = shape[-1] in (3, 4) and inp.dtype in ("float32", "uint8")
    return {
        "writer": f"MediaPipe metadata_writers (mediapipe {embedded['writer_version']})",
        "name": md["name"],
        "description": md["description"],
        "input_shape": shape,
        "color_space": embedded["color_space"],
        "normalization": {"mean": norm["mean"], "std": norm["std"]},
        "labels_file": sub["output_tensor_metadata"][0]["associated_files"][0]["name"],
        "output": sub["output_tensor_metadata"][0]["content"]["content_properties_type"],
        "rgb_front": front,
        "rgb_front_note": ("RGB input converted to grey inside (1x1 CONV_2D, luma 0.299/0.587/0.114), "
                           "then the deploy variant unchanged" if front else None),
        "sha256": sha256_bytes(embedded["model"]),
        "size_bytes": len(embedded["model"]),
        "mediapipe_tasks": mediapipe_tasks,
    }


# Embedding runs MediaPipe in a subprocess (seconds); the report assembles the bundle
# before writing it, so the result is kept per process by (model sha256, request).
_EMBEDDED: Dict[str, Dict[str, Any]] = {}


def embedded_model(recipe, summary: BuildSummary, model_bytes: bytes) -> Dict[str, Any]:
    """:func:`~pipeline.publish.tflite_metadata.embed_metadata` of the deploy variant, with the
    recipe's name, a description, the labels and the recipe's input channels."""
    from pipeline.publish.mediapipe_env import ensure_env

    variant = summary.deploy_variant
    request = {
        "name": f"{summary.recipe} ({variant})",
        "description": (f"{recipe.model.family} (width {recipe.model.alpha:g}) image classifier built by "
                        f"mobile-model from recipe {summary.recipe}, variant {variant}: "
                        f"{len(summary.labels)} classes."),
        "labels": list(summary.labels),
        "channels": recipe.model.channels,
        "input_description": "Image, NHWC, pixel values normalized as x = pixel / 255.",
        "output_description": f"Class probabilities (softmax) in {LABELS_FILE} order.",
    }
    key = sha256_bytes(model_bytes + json.dumps(request, sort_keys=True).encode())
    if key not in _EMBEDDED:
        env = ensure_env()
        out = embed_metadata(model_bytes, env=env, **request)
        out["writer_version"] = env.versions["mediapipe"]
        _EMBEDDED[key] = out
    return _EMBEDDED[key]


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


def assemble_bundle(recipe, root: Path, summary: BuildSummary) -> Bundle:
    """The files of ``root/bundle/`` for the recipe's deploy variant, in memory.

    Args:
        recipe: the build's recipe.
        root: the build directory (holds ``tflite/<variant>.tflite``).
        summary: the build's figures.

    Raises:
        ModelFileError: the deploy variant's .tflite is missing or not a TFLite file.
        DeviceUnavailableError: the MediaPipe environment that writes the metadata cannot be
            built, or its writer failed.
    """
    root = Path(root)
    summary = in_recipe_order(recipe, summary)
    model_path = root / "tflite" / f"{summary.deploy_variant}.tflite"
    read_tflite(model_path)  # a missing or corrupt file raises ModelFileError naming the path
    model_bytes = model_path.read_bytes()
    embedded = embedded_model(recipe, summary, model_bytes)
    meta = bundle_metadata(recipe, summary, model_bytes, embedded)
    contents: Dict[str, bytes] = {
        MODEL_FILE: embedded["model"],
        PLAIN_MODEL_FILE: model_bytes,
        "labels.txt": ("\n".join(meta["labels"]) + "\n").encode(),
        "metadata.json": (json.dumps(meta, indent=2, sort_keys=False) + "\n").encode(),
        "MODEL_CARD.md": model_card(recipe, meta).encode(),
    }
    contents["SHA256SUMS"] = "".join(f"{sha256_bytes(data)}  {name}\n"
                                     for name, data in sorted(contents.items())).encode()
    return Bundle(root / "bundle", contents, meta)


def write_bundle(recipe, root: Path, summary: BuildSummary, log: Log = print) -> Bundle:
    """Writes ``root/bundle/`` for the recipe's deploy variant (replacing any older one whole).

    Args:
        recipe: the build's recipe.
        root: the build directory (holds ``tflite/<variant>.tflite``).
        summary: the build's figures.
        log: progress output.

    Returns:
        The bundle written.

    Raises:
        ModelFileError: the deploy variant's .tflite is missing or not a TFLite file.
    """
    bundle = assemble_bundle(recipe, root, summary)
    _swap_in(Path(root), bundle.path, bundle.contents)
    log(f"[bundle] {bundle.path}: {summary.deploy_variant} ({len(bundle.contents[MODEL_FILE]) / 1024:.1f} KiB), "
        f"{', '.join(bundle.contents)}")
    return bundle


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

"""``MODEL_CARD.md``: the bundle's model for people (what, how well, how to feed it, limits).

It is written from the bundle's ``metadata.json`` contents (:func:`pipeline.publish.bundle.bundle_metadata`)
and the recipe, so the card and the metadata never disagree.
"""

from typing import Any, List, Mapping, Optional

from pipeline.recipe.training import as_list
from pipeline.summary import (LATENCY_ALIGN, LATENCY_HEADERS, MEASURED_HEADER, FloatChoice, LatencyEstimate,
                              unvalidated_note)
from pipeline.table import Table

# The model's file names inside bundle/: with embedded TFLite metadata, and as built.
MODEL_FILE = "model.tflite"
PLAIN_MODEL_FILE = "model_without_metadata.tflite"


def _fmt(value: Optional[float], fmt: str, scale: float = 1.0, none: str = "-") -> str:
    return none if value is None else format(value * scale, fmt)


def model_card(recipe, meta: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md``: the model for people (what, how well, how to feed it, limits).

    Args:
        recipe: the build's recipe.
        meta: the bundle's ``metadata.json`` contents.
    """
    lines = _intro(recipe, meta) + _training(recipe, meta) + _how_to_feed(meta) + _runtimes(meta)
    lines += ["## Limitations",
              "",
              f"- Accuracy is measured on the recipe's `{recipe.data.dataset}` test split only; "
              "images unlike the training data (other cameras, lighting, classes) will do worse.",
              "",
              "## Files",
              "",
              "Verify with `sha256sum -c SHA256SUMS` in this directory.",
              ""]
    return "\n".join(lines)


def _intro(r, meta: Mapping[str, Any]) -> List[str]:
    variant, inp = meta["variant"], meta["input"]
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
    if r.model.genotype:
        from models.genotype import Genotype

        g = Genotype.from_dict(r.model.genotype)
        lines += [f"Architecture (block-level genotype `{g.key()}`, {len(g.stages)} stages, {g.blocks} blocks; "
                  "each stage as k<kernel>e<expansion>x<depth>w<width>, se: squeeze-excite, hs: hard-swish, "
                  "/s<stride>):", "", f"    {g.text()}", "",
                  "The whole genotype is under `architecture.genotype` in `metadata.json`.", ""]
    if meta["smoke_build"]:
        lines += ["> **Smoke build**: tiny data and one epoch, for tests only. Do not deploy.", ""]
    return lines


def _epochs(r) -> str:
    epochs = r.train.epochs_for(r.data.dataset)
    if isinstance(epochs, int):
        return f"{epochs} epoch(s)"
    return (f"until validation top-1 stopped improving (`epochs: auto`, patience {r.train.patience}, "
            f"at most {r.train.max_epochs} epochs), best epoch kept")


def _init(r, init: Optional[Mapping[str, Any]], choice: Optional[Mapping[str, Any]] = None) -> List[str]:
    """The starting weights of a transferred model (``model.init``) and, when a scratch
    model was trained beside it, which of the two was kept; or nothing."""
    lines = []
    if choice:
        lines += [FloatChoice.from_dict(choice, "float_choice").line(), ""]
    if not init:
        return lines
    t = r.transfer
    rates = ", ".join(f"{rate:g}" for rate in as_list(t.finetune_learning_rate))
    blocks = " or ".join("every layer" if b == "all" else f"the top {b} blocks" for b in as_list(t.finetune_blocks))
    tried = " (each combination tried, the best on validation kept)" if len(t.candidates()) > 1 else ""
    return [f"Started from `{init['path']}` ({init['kind']}, {init['family']}; sha256 `{init['sha256']}`): "
            f"new classifier trained with the rest frozen ({t.head_epochs} epochs), then {blocks} "
            f"fine-tuned ({t.finetune_epochs} epochs at learning rate {rates}){tried}"
            + (f"; {r.data.train_per_class} training images per class" if r.data.train_per_class else "") + ".",
            ""] + lines


def _training(r, meta: Mapping[str, Any]) -> List[str]:
    acc = meta["accuracy"]
    return [
        "## Training data",
        "",
        f"Data set `{r.data.dataset}` (train {_count(r.data.train_samples)}, validation "
        f"{_count(r.data.val_samples)}, test {_count(r.data.test_samples)} images requested; seed {r.seed}). "
        f"Training: {_epochs(r)}"
        + (f", magnitude pruning to {r.prune.target_sparsity:.0%} of Conv2D/Dense weights" if r.prune.enabled else "")
        + (", quantization-aware training" if r.qat.enabled else "") + ".",
        "",
        *_init(r, meta["init"], meta.get("float_choice")),
        "## Accuracy (test split, host runtime)",
        "",
        *Table(["model", "top-1 %"], [["float Keras", _fmt(acc["float_top1"], ".2f")],
                                      [f"{meta['variant']} (this file)", _fmt(acc["top1"], ".2f")]]).markdown(),
        "",
        f"Agreement with the float model: {_fmt(acc['agreement_with_float'], '.2f')}% of "
        f"{acc['test_samples']} test images.",
        "",
    ]


def _embedded(meta: Mapping[str, Any]) -> List[str]:
    md = meta["tflite_metadata"]
    lines = [f"- `{MODEL_FILE}` carries TFLite metadata ({md['writer']}): name, description, input "
             f"normalization mean {md['normalization']['mean']} std {md['normalization']['std']} "
             f"({md['color_space']}), `{md['labels_file']}` packed inside, output as {md['output']}. "
             "the form MediaPipe Tasks and Android Studio's ML model binding read."]
    if md["rgb_front"]:
        lines.append(f"- `{MODEL_FILE}` takes RGB [{', '.join(map(str, md['input_shape']))}]: {md['rgb_front_note']}. "
                     f"`{PLAIN_MODEL_FILE}` is the deploy variant as built and as measured on the "
                     f"devices, grey input, no metadata; the rest of this section describes it.")
    else:
        lines.append(f"- `{PLAIN_MODEL_FILE}` is the same model without metadata, byte for byte as built.")
    if not md["mediapipe_tasks"]:
        lines.append("- MediaPipe Tasks cannot load this model (it reads only float32 or uint8 RGB(A) inputs).")
    return lines


def _litert_file(meta: Mapping[str, Any]) -> str:
    """The file the LiteRT example loads: the one this section describes."""
    return PLAIN_MODEL_FILE if meta["tflite_metadata"]["rgb_front"] else MODEL_FILE


def _how_to_feed(meta: Mapping[str, Any]) -> List[str]:
    inp, out = meta["input"], meta["output"]
    lines = [
        "## How to feed it",
        "",
        *_embedded(meta),
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
    lines += [f"- Output: shape {out['shape']}, {out['dtype']}: {out['meaning']}"
              + (f"; dequantize with scale {out['quantization']['scale']}, zero point "
                 f"{out['quantization']['zero_point']}" if out["quantization"] else "") + ".",
              "- Labels: `labels.txt`, one per line, line *i* is output index *i*.",
              "",
              "```python",
              "import numpy as np",
              "from ai_edge_litert.interpreter import Interpreter",
              f"interp = Interpreter(model_path=\"{_litert_file(meta)}\")",
              "interp.allocate_tensors()",
              "inp, out = interp.get_input_details()[0], interp.get_output_details()[0]",
              "x = image.astype(np.float32)[None] / 255.0          # (1, H, W, C) in [0, 1]"]
    if inp["quantization"]:
        lines.append("s, z = inp['quantization']; x = np.clip(np.round(x / s + z), -128, 127).astype(np.int8)")
    return lines + ["interp.set_tensor(inp['index'], x); interp.invoke()",
                    "label = open('labels.txt').read().split('\\n')[int(np.argmax(interp.get_tensor(out['index'])))]",
                    "```",
                    ""]


def _runtimes(meta: Mapping[str, Any]) -> List[str]:
    lines = ["## Runtimes and devices",
             "",
             "Ops: " + ", ".join(f"{o['op']} v{o['version']}" for o in meta["ops"]) + ".",
             "",
             f"Runtime compatibility (emulated devices): {meta['runtimes']['note']}.",
             ""]
    devs = meta["devices"]
    if not devs:
        return lines + ["No emulated-device results in this build.", ""]
    estimates = {name: _estimate(d) for name, d in devs.items()}
    measured = {name: d.get("measured") for name, d in devs.items() if d.get("measured")}
    rows = []
    for name, d in devs.items():
        loads = "yes" if d["loads"] else f"no ({d['load_error_op']} v{d['load_error_op_version']})"
        est, *provenance = estimates[name].cells()
        rows.append([f"{name}: {d['description'] or ''}", d["runtime"], loads, _fmt(d["top1"], ".1f"),
                     _fmt(d["instructions_per_inference"], ".3f", 1e-6), est,
                     *([_measured(measured.get(name))] if measured else []), *provenance,
                     _fmt(d["peak_memory_bytes"], ".2f", 1 / 2 ** 20)])
    head = [LATENCY_HEADERS[0], *([MEASURED_HEADER] if measured else []), *LATENCY_HEADERS[1:]]
    lines += Table(["device", "runtime", "loads", "top-1 %", "M instr / inference", *head, "memory MiB"],
                   rows, "lllrr" + LATENCY_ALIGN[0] + "r" * bool(measured) + LATENCY_ALIGN[1:] + "r").markdown()
    note = unvalidated_note(estimates.values())
    if note:
        lines += ["", note]
    where = ("Latency is an estimate of the latency model named in its row, blank where the device has none; "
             + ("the measured column is the mean ± standard deviation of single inferences timed on the real "
                "device the entry names (" + ", ".join(f"{m['target']}: {m['runs']} runs, {m['runtime']}"
                                                       for m in measured.values()) + ")."
                if measured else "it was not measured on the device."))
    return lines + ["",
                    "Device figures come from the real ARM runtime under qemu-aarch64: top-1 on "
                    f"{next(iter(devs.values()))['samples']} test images, instructions counted per inference "
                    f"(deterministic). {where}", ""]


def _measured(m: Optional[Mapping[str, Any]]) -> str:
    """The measured-latency cell of one ``metadata.json`` device entry."""
    if not m:
        return "-"
    if m["mean_ms"] is None:
        return "not loadable"
    return f"{m['mean_ms']:.2f} ± {_fmt(m['std_ms'], '.2f')}"


def _estimate(d: Mapping[str, Any]) -> LatencyEstimate:
    """The estimated latency of one ``metadata.json`` device entry."""
    return LatencyEstimate(d["estimated_latency_ms"], d["latency_validated"], d["latency_model"],
                           d["latency_cycles"], d["latency_ipc"])


def _count(n: Optional[int]) -> str:
    return "all" if n is None else f"{n:,}"

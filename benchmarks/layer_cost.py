"""Device cost per layer, from emulated runs of the model's prefixes.

``python -m benchmarks.layer_cost MODEL.h5 [MODEL2.h5 ...] [--device pixel4]``

The emulated run counts whole inferences, not operators. To split a model's device
cost by layer, this cuts the model after every Conv2D (with the BatchNorm and
activation that follow it), converts each prefix (input -> that cut) to int8 and
runs it once on the device's emulated core (:func:`pipeline.compress.netadapt.device_cost`:
cached per architecture, priced by the same estimate as every device figure). A
segment's cost is its prefix's cost minus the previous prefix's: the ops between
two cuts (in MobileNetV1 a block's depthwise and pointwise convs; the stem; the
head: pooling, dense, softmax after the last cut). Every prefix carries the same
fixed part (the input quantize, the output dequantize, the interpreter's call), so
it cancels in the differences; what is left of it is in the first segment.

Prints one markdown table per device: per segment, instructions, estimated
latency and their share of the whole model, for each model side by side (e.g. a
build's float model before and its channel-pruned model after).
"""

import sys
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

from pipeline.compress.channels import layer_graph
from pipeline.table import Table

# Layers that stay with the conv before them in one segment.
TRAILING = ("BatchNormalization", "ReLU", "Activation", "HardSwish")

CostFn = Callable[[object], Mapping[str, float]]


def cut_points(model) -> List[Tuple[str, str]]:
    """(segment label: the Conv2D's name, the layer after which the model is cut), in layer order.

    The cut follows the conv's chain of single-consumer BatchNorm/activation layers.
    """
    kinds, _, outbound = layer_graph(model)
    cuts = []
    for layer in model.layers:
        if type(layer).__name__ != "Conv2D":
            continue
        end = layer.name
        while len(outbound[end]) == 1 and kinds[outbound[end][0]] in TRAILING:
            end = outbound[end][0]
        cuts.append((layer.name, end))
    return cuts


def segment_costs(model, cost: CostFn) -> List[Dict[str, float]]:
    """Per segment: ``segment``, ``instructions``, ``latency_ms`` (prefix differences; the
    last segment, ``head``, is the full model minus the last cut); shares of the total."""
    import tf_keras as keras

    rows, prev = [], {"instructions": 0.0, "latency_ms": 0.0}
    cuts = cut_points(model)
    prefixes = [(label, keras.Model(model.input, model.get_layer(end).output)) for label, end in cuts]
    if not cuts or cuts[-1][1] != model.layers[-1].name:
        prefixes.append(("head", model))
    for label, prefix in prefixes:
        c = cost(prefix)
        rows.append({"segment": label, "instructions": float(c["instructions"]) - prev["instructions"],
                     "latency_ms": float(c["latency_ms"]) - prev["latency_ms"]})
        prev = {"instructions": float(c["instructions"]), "latency_ms": float(c["latency_ms"])}
    for r in rows:
        r["instructions_share"] = r["instructions"] / prev["instructions"] if prev["instructions"] else 0.0
        r["latency_share"] = r["latency_ms"] / prev["latency_ms"] if prev["latency_ms"] else 0.0
    return rows


def format_table(names: Sequence[str], tables: Sequence[List[Mapping[str, float]]], device: str) -> str:
    """Segments as rows, each model's instructions / latency / latency share as columns."""
    headers = ["segment"] + [f"{n}: {what}" for n in names for what in ("instructions", "est. ms", "latency share")]
    by_model = [{r["segment"]: r for r in t} for t in tables]
    order = [r["segment"] for r in tables[0]]
    for t in tables[1:]:
        order += [r["segment"] for r in t if r["segment"] not in order]
    rows = []
    for seg in order:
        cells = [seg]
        for by_segment in by_model:
            r = by_segment.get(seg)
            cells += (["-", "-", "-"] if r is None else
                      [f"{r['instructions']:,.0f}", f"{r['latency_ms']:.3f}", f"{r['latency_share'] * 100:.1f}%"])
        rows.append(cells)
    rows.append(["**total**"] + [cell for t in tables for cell in (
        f"{sum(r['instructions'] for r in t):,.0f}", f"{sum(r['latency_ms'] for r in t):.3f}", "100%")])
    return "\n".join([f"Device cost per segment on {device} (int8, one thread; prefix differences)\n",
                      *Table(headers, rows).markdown()])


def main(argv=None) -> int:
    import argparse
    from pathlib import Path

    from pipeline.compress.netadapt import device_cost
    from pipeline.errors import MobileModelError
    from pipeline.train.fit import setup_tensorflow
    from pipeline.train.keras_io import load_keras_file

    ap = argparse.ArgumentParser(prog="python -m benchmarks.layer_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help="float Keras .h5 models (e.g. before and after pruning)")
    ap.add_argument("--device", action="append", help="device profile (repeatable; default pixel4)")
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.models if not p.is_file()]
    if missing:
        print(f"error: no such model file: {', '.join(missing)}", file=sys.stderr)
        return 2
    setup_tensorflow(0)
    names = [p.parent.parent.name if p.parent.name == "keras" else p.stem for p in args.models]
    if len(set(names)) < len(names):
        names = [str(p) for p in args.models]
    try:
        models = [load_keras_file(p) for p in args.models]
        for device in args.device or ["pixel4"]:
            def cost(m, device=device):
                return device_cost(m, device, log=lambda s: print(s, file=sys.stderr))

            tables = [segment_costs(m, cost) for m in models]
            print(format_table(names, tables, device) + "\n")
    except MobileModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

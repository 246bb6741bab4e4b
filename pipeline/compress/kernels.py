"""Per-kernel tables of Keras models: zeros and distinct values of every Conv2D,
DepthwiseConv2D and Dense kernel, seen through tfmot's wrappers.

Every compression technique measures its result with these tables, and the
build's per-layer reports show them.
"""

from typing import Dict, List, Optional

import numpy as np

PRUNABLE_KINDS = ("Conv2D", "Dense")
KERNEL_KINDS = ("Conv2D", "DepthwiseConv2D", "Dense")
DEPTHWISE_NOTE = "tfmot never prunes DepthwiseConv2D (no prunable weights in its registry)"

# tfmot's wrappers that hold the layer they wrap in ``.layer``.
_WRAPPERS = ("PruneLowMagnitude", "QuantizeWrapper", "QuantizeWrapperV2", "QuantizeAnnotate")


def layer_kind(layer) -> str:
    """"Conv2D", "DepthwiseConv2D", "Dense" or "" for any other layer.

    Checked by exact class name: in tf_keras DepthwiseConv2D is not a Conv2D, but a
    subclass of either should not be reported as its parent.
    """
    import tf_keras as keras

    for kind in KERNEL_KINDS:
        if type(layer) is getattr(keras.layers, kind):
            return kind
    return ""


def inner_layer(layer):
    """The layer inside tfmot's wrappers (pruning, QuantizeWrapper); ``layer`` itself otherwise."""
    while hasattr(layer, "layer") and layer.__class__.__name__ in _WRAPPERS:
        layer = layer.layer
    return layer


def layer_kernel(layer, inner, kind: str) -> np.ndarray:
    """The kernel of ``layer`` (maybe wrapped; ``inner`` is :func:`inner_layer` of it).

    Read by variable name from the outermost wrapper: a QuantizeWrapper takes the
    weights away from its inner layer, whose ``kernel`` attribute then holds the
    fake-quantized (symbolic) tensor once the wrapper has been called.

    Raises:
        ValueError: the layer has no kernel variable.
    """
    attr = "depthwise_kernel" if kind == "DepthwiseConv2D" else "kernel"
    for w in layer.weights:
        if w.name.split("/")[-1].split(":")[0] == attr:
            return w.numpy()
    raise ValueError(f"layer {inner.name!r} ({kind}) has no {attr!r} variable")


def kernel_table(model, pruned: bool) -> List[Dict]:
    """One row per Conv2D, DepthwiseConv2D and Dense kernel of ``model`` (unwrapping
    tfmot wrappers), in layer order.

    Args:
        model: a Keras model: float, pruned (stripped or not) or QAT.
        pruned: whether the pruning stage ran on it (sets ``pruned`` for Conv2D/Dense).

    Returns:
        Rows ``{"layer", "kind", "shape", "params", "zeros", "pruned", "note"}``;
        ``zeros`` is the fraction of exactly-zero kernel values.
    """
    rows = []
    for layer in model.layers:
        inner = inner_layer(layer)
        kind = layer_kind(inner)
        if not kind:
            continue
        kernel = layer_kernel(layer, inner, kind)
        rows.append({
            "layer": inner.name,
            "kind": kind,
            "shape": list(kernel.shape),
            "params": int(kernel.size),
            "zeros": float(np.count_nonzero(kernel == 0) / kernel.size),
            "pruned": bool(pruned and kind in PRUNABLE_KINDS),
            "note": DEPTHWISE_NOTE if kind == "DepthwiseConv2D" else "",
        })
    return rows


def unique_table(model, pruned: bool, clustered: Optional[List[str]] = None) -> List[Dict]:
    """:func:`kernel_table` with distinct-value counts.

    Args:
        model: a Keras model (float, clustered, or QAT).
        pruned: whether the pruning stage ran on it.
        clustered: names of the layers whose kernels were clustered (None: none).

    Returns:
        Rows of ``kernel_table`` plus ``clustered`` (bool), ``unique`` (distinct
        values in the kernel) and ``unique_per_channel`` (most distinct values in
        any output channel, the kernel's last axis in Keras).
    """
    kernels = {}
    for layer in model.layers:
        inner = inner_layer(layer)
        kind = layer_kind(inner)
        if kind:
            kernels[inner.name] = layer_kernel(layer, inner, kind)
    rows = kernel_table(model, pruned=pruned)
    names = set(clustered or ())
    for row in rows:
        kernel = kernels[row["layer"]]
        channels = kernel.reshape(-1, kernel.shape[-1]).T
        row["clustered"] = row["layer"] in names
        row["unique"] = int(len(np.unique(kernel)))
        row["unique_per_channel"] = int(max(len(np.unique(ch)) for ch in channels))
    return rows


def zeros_fraction(rows: List[Dict], kinds) -> float:
    """Fraction of zeros over all kernel values of ``kinds`` in a :func:`kernel_table`."""
    selected = [r for r in rows if r["kind"] in kinds]
    total = sum(r["params"] for r in selected)
    return float(sum(r["zeros"] * r["params"] for r in selected) / total) if total else 0.0


def prunable_sparsity(rows: List[Dict]) -> float:
    """Fraction of zeros over all Conv2D/Dense kernel values of a :func:`kernel_table`."""
    return zeros_fraction(rows, PRUNABLE_KINDS)

"""Host evaluation of a TFLite variant with the LiteRT interpreter."""

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from pipeline.store.atomic import gzip_size
from pipeline.summary import labels_path, predictions_path
from pipeline.tflite.reader import PRUNABLE_OPS, WEIGHT_OPS, read_tflite, weight_kernels, zero_fraction
from pipeline.tflite.host import run_tflite


def unique_values_per_kernel(model, ops=WEIGHT_OPS) -> Dict[str, int]:
    """Most distinct values in any output channel of each kernel of ``ops``.

    Per channel because int8 kernels are quantized per output channel: a clustered
    kernel with N centroids has at most N values per channel, not per kernel.
    """
    out = {}
    for op, name, arr in weight_kernels(model):
        if op not in ops:
            continue
        if op == "DEPTHWISE_CONV_2D":  # [1, h, w, out]: channel is the last axis
            chans = arr.reshape(-1, arr.shape[-1]).T
        else:  # CONV_2D [out, h, w, in], FULLY_CONNECTED [out, in]
            chans = arr.reshape(arr.shape[0], -1)
        out[name] = int(max(len(np.unique(c)) for c in chans))
    return out


def layer_name(tensor_name: str) -> str:
    """The Keras layer a TFLite kernel tensor came from, e.g. ``block3_pointwise_conv``.

    The converter names kernels ``<model>/<layer>/<op>[;<fused name>...]``, with a
    ``quant_`` prefix on layers of QAT models; a kernel with a BatchNorm folded into
    it may list the BatchNorm first, so the name of the conv or matmul op wins.
    Other names are returned unchanged.
    """
    names = [part.split("/") for part in tensor_name.split(";")]
    names = [n for n in names if len(n) >= 3]
    if not names:
        return tensor_name
    layer = next((n[1] for n in names if n[-1] in ("Conv2D", "depthwise", "MatMul")), names[0][1])
    return layer[len("quant_"):] if layer.startswith("quant_") else layer


def kernel_report(model) -> list:
    """One row per conv/dense kernel of a TFLite model, in graph order.

    Returns:
        ``{"layer", "op", "params", "zeros", "unique_per_channel"}`` rows: ``zeros``
        is the fraction of exactly-zero values, ``unique_per_channel`` the most
        distinct values in any output channel (as :func:`unique_values_per_kernel`).
    """
    uniq = unique_values_per_kernel(model)
    return [{"layer": layer_name(name), "op": op, "params": int(arr.size),
             "zeros": float(np.count_nonzero(arr == 0) / arr.size), "unique_per_channel": uniq[name]}
            for op, name, arr in weight_kernels(model)]


def evaluate_tflite(path: Path, x: np.ndarray, y: np.ndarray, float_top1_classes: np.ndarray,
                    predictions: Optional[Path] = None, x_val: Optional[np.ndarray] = None,
                    y_val: Optional[np.ndarray] = None) -> Dict:
    """Measures one TFLite model on the host and saves its predicted classes and the labels.

    Args:
        path: the ``.tflite`` file.
        x, y: the test split.
        float_top1_classes: the float Keras model's predicted classes on ``x``.
        predictions: where to save the predicted classes on ``x`` (int64 ``.npy``, in
            the order of ``x``); default :func:`predictions_path` of ``path``. Later
            stages (confusion matrices, per-class figures) read them instead of
            running the model again. The labels ``y`` go to :func:`labels_path` of it.
        x_val, y_val: the validation split; when given, its top-1 is ``val_top1``.

    Returns:
        top1 (percent), agreement with float (percent), size and gzip size (bytes),
        zero fraction of prunable and of all kernels, most distinct values per output
        channel of any conv/dense kernel, the per-kernel table (:func:`kernel_report`),
        input/output dtypes, ops with versions, the number of samples and the path of
        the saved predictions: the fields of
        :class:`pipeline.summary.VariantSummary` that evaluation measures.
    """
    from pipeline.store.atomic import atomic_path

    model = read_tflite(path)
    data = Path(path).read_bytes()
    probs = run_tflite(data, x)
    pred = np.argmax(probs, axis=1).astype(np.int64)
    predictions = Path(predictions) if predictions is not None else predictions_path(path)
    with atomic_path(predictions, suffix=".npy") as tmp:
        np.save(tmp, pred)
    with atomic_path(labels_path(predictions), suffix=".npy") as tmp:  # for confusion matrices
        np.save(tmp, np.asarray(y, dtype=np.int64))
    inp, out = model.tensors[model.inputs[0]], model.tensors[model.outputs[0]]
    uniq = unique_values_per_kernel(model, PRUNABLE_OPS)  # depthwise is never clustered
    figures = {"val_top1": _top1(data, x_val, y_val)} if x_val is not None else {}
    return {
        **figures,
        "top1": float(np.mean(pred == y) * 100.0),
        "agreement_with_float": float(np.mean(pred == float_top1_classes) * 100.0),
        "size_bytes": len(data),
        "gzip_bytes": gzip_size(data),
        "zeros_prunable": zero_fraction(model, PRUNABLE_OPS),
        "zeros_all_kernels": zero_fraction(model, WEIGHT_OPS),
        "max_unique_per_kernel": max(uniq.values()) if uniq else 0,
        "kernels": kernel_report(model),
        "input": {"dtype": inp.dtype, "shape": list(inp.shape),
                  "scale": list(inp.quantization.scale), "zero_point": list(inp.quantization.zero_point)},
        "output": {"dtype": out.dtype, "shape": list(out.shape),
                   "scale": list(out.quantization.scale), "zero_point": list(out.quantization.zero_point)},
        "ops": [f"{name}:v{ver}" for name, ver in model.op_versions()],
        "samples": int(len(x)),
        "predictions": str(predictions),
    }


def _top1(model: bytes, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(run_tflite(model, x), axis=1) == y) * 100.0)

"""Running TFLite models on the host with LiteRT (``ai-edge-litert``).

Handles integer input/output models: float inputs in [0, 1] are quantized with the
input tensor's scale and zero point, integer outputs are dequantized, so callers
always see float probabilities.
"""

from pathlib import Path
from typing import List, Sequence, Union

import numpy as np

from pipeline.native import captured_stderr

ModelSource = Union[bytes, str, Path]


def make_interpreter(model: ModelSource, delegates: bool = True, threads: int = 2):
    """A LiteRT interpreter for a model file or its bytes.

    Args:
        delegates: False lists the model's real ops (XNNPACK would hide them).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"num_threads": threads}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with captured_stderr():  # "Created TensorFlow Lite XNNPACK delegate" on every creation
        if isinstance(model, (bytes, bytearray)):
            return Interpreter(model_content=bytes(model), **kwargs)
        return Interpreter(model_path=str(model), **kwargs)


def allocate(interp) -> None:
    """``allocate_tensors`` with the runtime's "Created TensorFlow Lite XNNPACK delegate"
    line captured: the delegate is applied, and announces itself, at allocation."""
    with captured_stderr():
        interp.allocate_tensors()


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float inputs -> the input tensor's dtype (quantized when integer)."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def run_tflite(model: ModelSource, x: np.ndarray, batch_size: int = 64, raw: bool = False,
               threads: int = 2) -> np.ndarray:
    """Runs ``x`` (float NHWC in [0, 1]) through a TFLite model.

    Args:
        raw: return the output tensor as stored (int8 stays int8) instead of floats.

    Returns:
        Outputs stacked over ``x``'s first axis.
    """
    interp = make_interpreter(model, threads=threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    results = []
    current = None
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        if current != len(chunk):
            interp.resize_tensor_input(inp["index"], [len(chunk), *inp["shape"][1:]])
            allocate(interp)
            current = len(chunk)
        interp.set_tensor(inp["index"], quantize_input(chunk, inp))
        interp.invoke()
        y = interp.get_tensor(out["index"]).copy()
        results.append(y if raw else dequantize_output(y, out))
    return np.concatenate(results, axis=0)


def is_quantized(model) -> bool:
    """Whether the model computes in int8/uint8 (a non-constant integer tensor)."""
    return any(t.dtype in ("int8", "uint8") and not (0 < t.buffer < len(model.buffers)
                                                     and model.buffers[t.buffer])
               for t in model.tensors)


def numeric_format(model) -> str:
    """What a parsed .tflite computes in: "int8" (integer activations), "hybrid"
    (integer weights used by float kernels: dynamic range) or "float32" (float16
    weights are dequantized once and run float32 kernels)."""
    if is_quantized(model):
        return "int8"
    consts = {t.index for t in model.tensors
              if t.dtype in ("int8", "uint8") and 0 < t.buffer < len(model.buffers) and model.buffers[t.buffer]}
    if any(op.opcode != "DEQUANTIZE" and consts.intersection(op.inputs) for op in model.operators):
        return "hybrid"
    return "float32"


def host_outputs_for(model_path: Union[str, Path], x: np.ndarray) -> np.ndarray:
    """Raw outputs of the host's ai-edge-litert (its default XNNPACK delegate), one input
    per invoke as on the device (the model's first input and output)."""
    return host_outputs_all(model_path, [x])[0]


def host_outputs_all(model_path: Union[str, Path], xs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """:func:`host_outputs_for` of any model: one array per input in, one per output out.

    Float arrays for an integer input are quantized with its scale and zero point;
    arrays of the input's own dtype are passed as they are.
    """
    interp = make_interpreter(Path(model_path), delegates=True, threads=1)
    allocate(interp)
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    ys: List[list] = [[] for _ in outputs]
    for i in range(len(xs[0])):
        for d, x in zip(inputs, xs):
            a = x[i:i + 1]
            interp.set_tensor(d["index"], a.astype(d["dtype"]) if a.dtype.kind in "iub"
                              else quantize_input(a, d))
        interp.invoke()
        for k, d in enumerate(outputs):
            ys[k].append(interp.get_tensor(d["index"])[0].copy())
    return [np.stack(y) for y in ys]

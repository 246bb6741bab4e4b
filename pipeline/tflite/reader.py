"""A bounds-checked reader of TFLite flatbuffers (no runtime involved).

Reads what the pipeline needs from a ``.tflite`` file without handing it to a
runtime first: operator codes with versions, tensors with dtypes, shapes and
quantization, operators, and constant buffers. The file is read through the
generated TFLite schema (``ai_edge_litert.schema_py_generated``), whose enums
give the op and tensor type names; since the generated reader trusts every
offset, :func:`pipeline.tflite.verify.check_model` first checks that all it will
read lies inside the file, so a truncated or hostile file raises
:class:`ModelFileError` instead of crashing or reading out of bounds.
"""

import functools
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from pipeline.errors import ModelFileError
from pipeline.tflite.verify import check_model, schema

FLOAT_TYPES = ("float32", "float16", "float64")
# Tensor types (lower-case TensorType names) whose constants numpy holds as they are
# stored; the others (string, int4, bfloat16, float8, resource, ...) have no constant array.
NUMPY_DTYPES = {name: np.dtype(name) for name in (
    "float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "bool", "complex64", "complex128")}


def _enum_names(enum) -> Dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


@functools.lru_cache(maxsize=None)
def _builtin_names() -> Dict[int, str]:
    return _enum_names(schema().BuiltinOperator)


@functools.lru_cache(maxsize=None)
def _type_names() -> Dict[int, str]:
    return {code: name.lower() for code, name in _enum_names(schema().TensorType).items()}


@dataclass(frozen=True)
class Quantization:
    scale: Tuple[float, ...] = ()
    zero_point: Tuple[int, ...] = ()
    quantized_dimension: int = 0


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: Tuple[int, ...]
    dtype: str
    buffer: int
    quantization: Quantization


@dataclass(frozen=True)
class Operator:
    opcode: str
    version: int
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]


@dataclass(frozen=True)
class OpCode:
    """An entry of the model's operator code table."""

    builtin: str  # BuiltinOperator name ("CONV_2D", "CUSTOM"), or BUILTIN_<n> for a code unknown to the schema
    version: int
    custom_code: Optional[str] = None  # the custom op's name (CUSTOM only; "" when the file gives none)

    @property
    def name(self) -> str:
        """The name operators carry: the builtin name, or ``CUSTOM:<custom code>``."""
        return f"CUSTOM:{self.custom_code or ''}" if self.builtin == "CUSTOM" else self.builtin


@dataclass
class TFLiteModel:
    """The parts of a TFLite model the pipeline reads."""

    size: int
    opcodes: List[Tuple[str, int]]
    tensors: List[Tensor]
    operators: List[Operator]
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    buffers: List[bytes] = field(repr=False)
    num_subgraphs: int = 1
    op_codes: List[OpCode] = field(default_factory=list)  # the operator code table in full; opcodes: (name, version)

    def constant(self, tensor_index: int) -> Optional[np.ndarray]:
        """The constant data of a tensor as a numpy array, or None if it has none."""
        t = self.tensors[tensor_index]
        data = self.buffers[t.buffer] if 0 < t.buffer < len(self.buffers) else b""
        np_dtype = NUMPY_DTYPES.get(t.dtype)
        if not data or np_dtype is None:
            return None
        if any(d < 0 for d in t.shape):
            raise ModelFileError(f"tensor {t.name!r}: constant with a negative dimension in shape {list(t.shape)}")
        count = int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1
        if count * np.dtype(np_dtype).itemsize != len(data):
            raise ModelFileError(f"tensor {t.name!r}: buffer holds {len(data)} bytes, "
                                 f"shape {list(t.shape)} of {t.dtype} needs {count * np.dtype(np_dtype).itemsize}")
        return np.frombuffer(data, dtype=np_dtype).reshape(t.shape)

    def op_versions(self) -> List[Tuple[str, int]]:
        """Distinct (op, version) pairs used by the operators, sorted."""
        return sorted({(o.opcode, o.version) for o in self.operators})

    def producer(self, tensor_index: int) -> Optional[Operator]:
        for op in self.operators:
            if tensor_index in op.outputs:
                return op
        return None


def parse_tflite(data: bytes, source: str = "model") -> TFLiteModel:
    """Parses TFLite flatbuffer bytes.

    Raises:
        ModelFileError: not a TFLite file (identifier), any structure lies outside the
            file, or an index (buffer, opcode, tensor) points past its table.
    """
    if len(data) < 8:
        raise ModelFileError(f"{source}: not a TFLite model ({len(data)} bytes; too short for a flatbuffer)")
    if data[4:8] != b"TFL3":
        raise ModelFileError(f"{source}: not a TFLite model (file identifier {data[4:8]!r}, expected b'TFL3')")
    data = bytes(data)
    try:
        check_model(data)
        return _parse(data)
    except ModelFileError as exc:
        raise ModelFileError(f"{source}: {exc}") from None
    except (struct.error, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise ModelFileError(f"{source}: corrupt TFLite model ({exc})") from None


def _text(raw: Optional[bytes]) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


def _ints(array) -> Tuple:
    """A generated ``...AsNumpy()`` vector as a tuple of Python numbers (the generated code gives 0 when absent)."""
    return () if isinstance(array, int) else tuple(array.tolist())


def _op_code(oc) -> OpCode:
    code = max(oc.DeprecatedBuiltinCode(), oc.BuiltinCode())
    custom = _text(oc.CustomCode()) if code == schema().BuiltinOperator.CUSTOM else None
    return OpCode(_builtin_names().get(code, f"BUILTIN_{code}"), oc.Version(), custom)


def _buffer(b, data: bytes) -> bytes:
    inline = b.DataAsNumpy()
    if not isinstance(inline, int) and inline.size:
        return inline.tobytes()
    offset, size = b.Offset(), b.Size()
    return data[offset:offset + size] if offset > 1 else b""  # check_model checked the range


def _tensor(i: int, t, n_buffers: int) -> Tensor:
    q = t.Quantization()
    quant = Quantization(_ints(q.ScaleAsNumpy()), _ints(q.ZeroPointAsNumpy()),
                         q.QuantizedDimension()) if q is not None else Quantization()
    type_code, buf_idx = t.Type(), t.Buffer()
    if buf_idx >= max(n_buffers, 1):
        raise ModelFileError(f"tensor {i} refers to buffer {buf_idx} of {n_buffers}")
    return Tensor(i, _text(t.Name()), _ints(t.ShapeAsNumpy()),
                  _type_names().get(type_code, f"type{type_code}"), buf_idx, quant)


def _operator(o, op_codes: List[OpCode], n_tensors: int) -> Operator:
    idx = o.OpcodeIndex()
    if idx >= len(op_codes):
        raise ModelFileError(f"operator refers to opcode {idx} of {len(op_codes)}")
    ins, outs = _ints(o.InputsAsNumpy()), _ints(o.OutputsAsNumpy())
    for t_idx in ins + outs:
        if t_idx >= n_tensors or t_idx < -1:
            raise ModelFileError(f"operator {op_codes[idx].name} refers to tensor {t_idx} of {n_tensors}")
    return Operator(op_codes[idx].name, op_codes[idx].version, ins, outs)


def _parse(data: bytes) -> TFLiteModel:
    """Reads a model that :func:`check_model` has checked."""
    model = schema().Model.GetRootAs(data, 0)
    op_codes = [_op_code(model.OperatorCodes(k)) for k in range(model.OperatorCodesLength())]
    buffers = [_buffer(model.Buffers(k), data) for k in range(model.BuffersLength())]
    if not model.SubgraphsLength():
        raise ModelFileError("model has no subgraph")
    sg = model.Subgraphs(0)
    tensors = [_tensor(k, sg.Tensors(k), len(buffers)) for k in range(sg.TensorsLength())]
    operators = [_operator(sg.Operators(k), op_codes, len(tensors)) for k in range(sg.OperatorsLength())]
    inputs, outputs = _ints(sg.InputsAsNumpy()), _ints(sg.OutputsAsNumpy())
    for t_idx in inputs + outputs:
        if not 0 <= t_idx < len(tensors):
            raise ModelFileError(f"graph input/output refers to tensor {t_idx} of {len(tensors)}")
    return TFLiteModel(len(data), [(c.name, c.version) for c in op_codes], tensors, operators, inputs, outputs,
                       buffers, model.SubgraphsLength(), op_codes)


def read_tflite(path: "str | Path") -> TFLiteModel:
    """Reads and parses a ``.tflite`` file. Raises ModelFileError with the path."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory, expected a .tflite file")
    return parse_tflite(p.read_bytes(), str(p))


# -- analyses used by evaluation and reports ------------------------------------

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
PRUNABLE_OPS = ("CONV_2D", "FULLY_CONNECTED")  # tfmot never prunes depthwise kernels


def weight_kernels(model: TFLiteModel) -> List[Tuple[str, str, np.ndarray]]:
    """(op, tensor name, kernel array) for every conv/dense kernel, following DEQUANTIZE.

    float16 models store kernels as fp16 constants feeding a DEQUANTIZE op; the
    kernel is then the DEQUANTIZE input.
    """
    out = []
    for op in model.operators:
        if op.opcode not in WEIGHT_OPS or len(op.inputs) < 2:
            continue
        idx = op.inputs[1]
        arr = model.constant(idx)
        if arr is None:
            prod = model.producer(idx)
            if prod is not None and prod.opcode == "DEQUANTIZE":
                idx = prod.inputs[0]
                arr = model.constant(idx)
        if arr is not None:
            out.append((op.opcode, model.tensors[idx].name, arr))
    return out


def zero_fraction(model: TFLiteModel, ops=PRUNABLE_OPS) -> float:
    """Fraction of exactly-zero values in the kernels of ``ops`` (0.0 when none)."""
    kernels = [a for op, _, a in weight_kernels(model) if op in ops]
    total = sum(a.size for a in kernels)
    return float(sum(int(np.count_nonzero(a == 0)) for a in kernels) / total) if total else 0.0


def float_compute_ops(model: TFLiteModel) -> List[str]:
    """Ops that compute in floating point (any float input or output), excluding the
    boundary QUANTIZE/DEQUANTIZE of a float-I/O integer model."""
    bad = []
    for op in model.operators:
        if op.opcode in ("QUANTIZE", "DEQUANTIZE"):
            continue
        dtypes = {model.tensors[i].dtype for i in op.inputs + op.outputs if i >= 0}
        if dtypes & set(FLOAT_TYPES):
            bad.append(op.opcode)
    return bad

"""A bounds-checked reader of TFLite flatbuffers (no runtime involved).

Reads what the pipeline needs from a ``.tflite`` file without handing it to a
runtime first: operator codes with versions, tensors with dtypes, shapes and
quantization, operators, and constant buffers. Every offset is checked against
the file size, so a truncated or hostile file raises :class:`ModelFileError`
instead of crashing or reading out of bounds.

Field numbers follow the public TFLite schema (tensorflow/lite/schema/schema.fbs).
"""

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from pipeline.errors import ModelFileError

# TensorType enum of the schema -> (name, numpy dtype or None)
TENSOR_TYPES = {
    0: ("float32", np.float32), 1: ("float16", np.float16), 2: ("int32", np.int32),
    3: ("uint8", np.uint8), 4: ("int64", np.int64), 5: ("string", None), 6: ("bool", np.bool_),
    7: ("int16", np.int16), 8: ("complex64", np.complex64), 9: ("int8", np.int8),
    10: ("float64", np.float64), 11: ("complex128", np.complex128), 12: ("uint64", np.uint64),
    13: ("resource", None), 14: ("variant", None), 15: ("uint32", np.uint32), 16: ("uint16", np.uint16),
    17: ("int4", None),
}
FLOAT_TYPES = ("float32", "float16", "float64")
MAX_ELEMENTS = 1 << 28  # no real model has a vector this long; guards against absurd lengths


def _builtin_names() -> Dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    ops = schema.BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


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

    def constant(self, tensor_index: int) -> Optional[np.ndarray]:
        """The constant data of a tensor as a numpy array, or None if it has none."""
        t = self.tensors[tensor_index]
        data = self.buffers[t.buffer] if 0 < t.buffer < len(self.buffers) else b""
        np_dtype = TENSOR_TYPES.get(_type_code(t.dtype), (None, None))[1]
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


def _type_code(name: str) -> int:
    for code, (n, _) in TENSOR_TYPES.items():
        if n == name:
            return code
    return -1


class _Reader:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.n = len(buf)

    def _need(self, pos: int, size: int, what: str) -> None:
        if pos < 0 or pos + size > self.n:
            raise ModelFileError(f"truncated or corrupt model: {what} at byte {pos} lies outside the "
                                 f"{self.n}-byte file")

    def _unpack(self, fmt: str, pos: int, what: str):
        self._need(pos, struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def u8(self, pos):
        return self._unpack("<B", pos, "byte")

    def u16(self, pos):
        return self._unpack("<H", pos, "u16")

    def i32(self, pos):
        return self._unpack("<i", pos, "i32")

    def u32(self, pos):
        return self._unpack("<I", pos, "u32")

    def table(self, pos: int) -> "_Table":
        vt = pos - self.i32(pos)
        vt_size = self.u16(vt)
        if vt_size < 4 or vt_size % 2:
            raise ModelFileError(f"corrupt model: bad vtable size {vt_size} at byte {vt}")
        self._need(vt, vt_size, "vtable")
        return _Table(self, pos, vt, vt_size)

    def vector(self, pos: int, elem_size: int) -> Tuple[int, int]:
        length = self.u32(pos)
        if length > MAX_ELEMENTS:
            raise ModelFileError(f"corrupt model: vector of {length} elements at byte {pos}")
        self._need(pos + 4, length * elem_size, "vector")
        return pos + 4, length


class _Table:
    def __init__(self, r: _Reader, pos: int, vt: int, vt_size: int):
        self.r, self.pos, self.vt, self.vt_size = r, pos, vt, vt_size

    def _field(self, i: int) -> int:
        off_pos = 4 + 2 * i
        if off_pos >= self.vt_size:
            return 0
        off = self.r.u16(self.vt + off_pos)
        return self.pos + off if off else 0

    def scalar(self, i: int, fmt: str, default=0):
        p = self._field(i)
        if not p:
            return default
        size = struct.calcsize(fmt)
        self.r._need(p, size, "field")
        return struct.unpack_from("<" + fmt, self.r.buf, p)[0]

    def _ref(self, i: int) -> int:
        p = self._field(i)
        return p + self.r.u32(p) if p else 0

    def table(self, i: int) -> Optional["_Table"]:
        p = self._ref(i)
        return self.r.table(p) if p else None

    def tables(self, i: int) -> List["_Table"]:
        p = self._ref(i)
        if not p:
            return []
        start, n = self.r.vector(p, 4)
        return [self.r.table(start + 4 * k + self.r.u32(start + 4 * k)) for k in range(n)]

    def scalars(self, i: int, fmt: str) -> Tuple:
        p = self._ref(i)
        if not p:
            return ()
        size = struct.calcsize(fmt)
        start, n = self.r.vector(p, size)
        return struct.unpack_from(f"<{n}{fmt}", self.r.buf, start)

    def bytes_(self, i: int) -> bytes:
        p = self._ref(i)
        if not p:
            return b""
        start, n = self.r.vector(p, 1)
        return bytes(self.r.buf[start:start + n])

    def string(self, i: int) -> str:
        return self.bytes_(i).decode("utf-8", errors="replace")


def parse_tflite(data: bytes, source: str = "model") -> TFLiteModel:
    """Parses TFLite flatbuffer bytes.

    Raises:
        ModelFileError: not a TFLite file (identifier), or any structure lies outside the file.
    """
    if len(data) < 8:
        raise ModelFileError(f"{source}: not a TFLite model ({len(data)} bytes; too short for a flatbuffer)")
    if data[4:8] != b"TFL3":
        raise ModelFileError(f"{source}: not a TFLite model (file identifier {data[4:8]!r}, expected b'TFL3')")
    try:
        return _parse(_Reader(data), source)
    except ModelFileError as exc:
        raise ModelFileError(f"{source}: {exc}") from None
    except (struct.error, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise ModelFileError(f"{source}: corrupt TFLite model ({exc})") from None


def _parse(r: _Reader, source: str) -> TFLiteModel:
    names = _builtin_names()
    model = r.table(r.u32(0))
    opcodes = []
    for oc in model.tables(1):
        code = max(oc.scalar(0, "b", 0), oc.scalar(3, "i", 0))
        name = "CUSTOM:" + oc.string(1) if code == 32 else names.get(code, f"BUILTIN_{code}")
        opcodes.append((name, oc.scalar(2, "i", 1)))
    buffers = []
    for b in model.tables(4):
        data = b.bytes_(0)
        offset, size = b.scalar(1, "Q", 0), b.scalar(2, "Q", 0)
        if not data and offset > 1:
            r._need(offset, size, "external buffer")
            data = bytes(r.buf[offset:offset + size])
        buffers.append(data)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise ModelFileError("model has no subgraph")
    sg = subgraphs[0]
    tensors = []
    for i, t in enumerate(sg.tables(0)):
        q = t.table(4)
        quant = Quantization(tuple(q.scalars(2, "f")), tuple(q.scalars(3, "q")), q.scalar(6, "i", 0)) \
            if q else Quantization()
        type_code = t.scalar(1, "b", 0)
        buf_idx = t.scalar(2, "I", 0)
        if buf_idx >= max(len(buffers), 1):
            raise ModelFileError(f"tensor {i} refers to buffer {buf_idx} of {len(buffers)}")
        tensors.append(Tensor(i, t.string(3), tuple(t.scalars(0, "i")),
                              TENSOR_TYPES.get(type_code, (f"type{type_code}", None))[0], buf_idx, quant))
    operators = []
    for o in sg.tables(3):
        idx = o.scalar(0, "I", 0)
        if idx >= len(opcodes):
            raise ModelFileError(f"operator refers to opcode {idx} of {len(opcodes)}")
        ins, outs = tuple(o.scalars(1, "i")), tuple(o.scalars(2, "i"))
        for t_idx in ins + outs:
            if t_idx >= len(tensors) or t_idx < -1:
                raise ModelFileError(f"operator {opcodes[idx][0]} refers to tensor {t_idx} of {len(tensors)}")
        operators.append(Operator(opcodes[idx][0], opcodes[idx][1], ins, outs))
    inputs, outputs = tuple(sg.scalars(1, "i")), tuple(sg.scalars(2, "i"))
    for t_idx in inputs + outputs:
        if not 0 <= t_idx < len(tensors):
            raise ModelFileError(f"graph input/output refers to tensor {t_idx} of {len(tensors)}")
    return TFLiteModel(r.n, opcodes, tensors, operators, inputs, outputs, buffers, len(subgraphs))


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

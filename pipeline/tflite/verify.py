"""Bounds checks of a TFLite flatbuffer, made before the generated reader reads it.

The generated schema module (``ai_edge_litert.schema_py_generated``) trusts the
bytes it is given: an offset past the end raises ``struct.error`` deep inside the
flatbuffers package, a negative one silently reads from the end of the buffer,
and a string or vector that runs past the end comes back cut short. So
:func:`check_model` first walks every table, vtable, field, vector and string
that :mod:`pipeline.tflite.reader` reads, following the same rules as the
generated reader (a uoffset to each table, an soffset back to its vtable, absent
fields past the vtable's end), and raises :class:`ModelFileError` naming the
first structure that lies outside the file.

Fields are named by the generated builder function that writes them (e.g.
``schema.TensorAddShape``): the slot and width of a field, and the element size
of a vector, are taken from that function, so no field number of the schema is
repeated here.
"""

import functools
import re
import struct
from typing import Callable, List, NamedTuple, Optional, Tuple

from pipeline.errors import ModelFileError

MAX_ELEMENTS = 1 << 28  # no real model has a vector this long; guards against absurd lengths

# Scalar kinds of the flatbuffers Builder's Prepend<Kind>Slot methods -> struct format.
_FORMATS = {"Bool": "?", "Int8": "b", "Uint8": "B", "Int16": "h", "Uint16": "H", "Int32": "i",
            "Uint32": "I", "Int64": "q", "Uint64": "Q", "Float32": "f", "Float64": "d"}


@functools.lru_cache(maxsize=None)
def schema():
    """The generated TFLite schema module (imported on first use: it loads LiteRT's library)."""
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


class _BuilderProbe:
    """Stands in for a flatbuffers Builder and records the last method a generated function calls."""

    def __getattr__(self, method: str):
        def record(*args):
            self.call = (method, args)
        return record


def _probe(generated: Callable) -> Tuple[str, tuple]:
    probe = _BuilderProbe()
    generated(probe, 0)
    return probe.call


@functools.lru_cache(maxsize=None)
def _field(add: Callable) -> Tuple[int, Optional[str]]:
    """(vtable offset, struct format, or None for a reference) of the field ``add`` writes."""
    method, args = _probe(add)  # e.g. PrependInt32Slot(slot, value, default)
    kind = re.fullmatch(r"Prepend(\w+)Slot", method).group(1)
    return 4 + 2 * args[0], _FORMATS.get(kind)


@functools.lru_cache(maxsize=None)
def _element_size(start_vector: Callable) -> int:
    method, args = _probe(start_vector)  # StartVector(element size, count, alignment)
    assert method == "StartVector", method
    return args[0]


class _Table(NamedTuple):
    pos: int
    vtable: int
    vtable_size: int


class _Checker:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.n = len(buf)

    def need(self, pos: int, size: int, what: str) -> None:
        if pos < 0 or pos + size > self.n:
            raise ModelFileError(f"truncated or corrupt model: {what} at byte {pos} lies outside the "
                                 f"{self.n}-byte file")

    def get(self, fmt: str, pos: int, what: str):
        self.need(pos, struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def table(self, pos: int) -> _Table:
        vt = pos - self.get("<i", pos, "i32")
        vt_size = self.get("<H", vt, "u16")
        if vt_size < 4 or vt_size % 2:
            raise ModelFileError(f"corrupt model: bad vtable size {vt_size} at byte {vt}")
        self.need(vt, vt_size, "vtable")
        return _Table(pos, vt, vt_size)

    def _at(self, t: _Table, add: Callable) -> Tuple[int, Optional[str]]:
        """Where the field ``add`` writes lies in ``t`` (0 when absent), and its format."""
        off_pos, fmt = _field(add)
        if off_pos >= t.vtable_size:
            return 0, fmt
        off = self.get("<H", t.vtable + off_pos, "u16")
        return (t.pos + off if off else 0), fmt

    def scalar(self, t: _Table, add: Callable, default=0):
        p, fmt = self._at(t, add)
        return self.get("<" + fmt, p, "field") if p else default

    def _ref(self, t: _Table, add: Callable) -> int:
        p, _ = self._at(t, add)
        return p + self.get("<I", p, "u32") if p else 0

    def sub_table(self, t: _Table, add: Callable) -> Optional[_Table]:
        p = self._ref(t, add)
        return self.table(p) if p else None

    def vector(self, t: _Table, add: Callable, element_size: int) -> Tuple[int, int]:
        """Checks the vector (or string) ``add`` writes: (start, length), or (0, 0) when absent."""
        p = self._ref(t, add)
        if not p:
            return 0, 0
        length = self.get("<I", p, "u32")
        if length > MAX_ELEMENTS:
            raise ModelFileError(f"corrupt model: vector of {length} elements at byte {p}")
        self.need(p + 4, length * element_size, "vector")
        return p + 4, length

    def tables(self, t: _Table, add: Callable) -> List[_Table]:
        start, count = self.vector(t, add, 4)
        return [self.table(start + 4 * k + self.get("<I", start + 4 * k, "u32")) for k in range(count)]

    def numbers(self, t: _Table, add: Callable, start_vector: Callable) -> Tuple[int, int]:
        return self.vector(t, add, _element_size(start_vector))


def check_model(buf: bytes) -> None:
    """Checks that everything the reader reads of a TFLite model lies inside ``buf``.

    Covers the operator codes (the custom code only of CUSTOM ops, as the reader
    reads it only there), the buffers (inline data, or the offset and size of data
    stored after the flatbuffer), the table header of every subgraph, and the
    tensors, quantization, operators, inputs and outputs of the first subgraph.

    Raises:
        ModelFileError: "truncated or corrupt model: <what> at byte <n> lies outside
            the <size>-byte file", or a bad vtable size, or an absurd vector length.
    """
    s = schema()
    c = _Checker(buf)
    model = c.table(c.get("<I", 0, "u32"))
    for oc in c.tables(model, s.ModelAddOperatorCodes):
        code = max(c.scalar(oc, s.OperatorCodeAddDeprecatedBuiltinCode), c.scalar(oc, s.OperatorCodeAddBuiltinCode))
        if code == s.BuiltinOperator.CUSTOM:
            c.vector(oc, s.OperatorCodeAddCustomCode, 1)
        c.scalar(oc, s.OperatorCodeAddVersion)
    for b in c.tables(model, s.ModelAddBuffers):
        _, inline = c.numbers(b, s.BufferAddData, s.BufferStartDataVector)
        offset, size = c.scalar(b, s.BufferAddOffset), c.scalar(b, s.BufferAddSize)
        if not inline and offset > 1:  # schema.fbs: offset > 1 places the data after the flatbuffer
            c.need(offset, size, "external buffer")
    subgraphs = c.tables(model, s.ModelAddSubgraphs)
    if subgraphs:
        _check_subgraph(c, subgraphs[0])


def _check_subgraph(c: _Checker, sg: _Table) -> None:
    s = schema()
    for t in c.tables(sg, s.SubGraphAddTensors):
        q = c.sub_table(t, s.TensorAddQuantization)
        if q is not None:
            c.numbers(q, s.QuantizationParametersAddScale, s.QuantizationParametersStartScaleVector)
            c.numbers(q, s.QuantizationParametersAddZeroPoint, s.QuantizationParametersStartZeroPointVector)
            c.scalar(q, s.QuantizationParametersAddQuantizedDimension)
        c.scalar(t, s.TensorAddType)
        c.scalar(t, s.TensorAddBuffer)
        c.vector(t, s.TensorAddName, 1)
        c.numbers(t, s.TensorAddShape, s.TensorStartShapeVector)
    for o in c.tables(sg, s.SubGraphAddOperators):
        c.scalar(o, s.OperatorAddOpcodeIndex)
        c.numbers(o, s.OperatorAddInputs, s.OperatorStartInputsVector)
        c.numbers(o, s.OperatorAddOutputs, s.OperatorStartOutputsVector)
    c.numbers(sg, s.SubGraphAddInputs, s.SubGraphStartInputsVector)
    c.numbers(sg, s.SubGraphAddOutputs, s.SubGraphStartOutputsVector)

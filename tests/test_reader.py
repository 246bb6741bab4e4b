"""The TFLite reader: names from the schema's enums, the operator code table, and
the bounds checks made before the generated reader reads a file."""

import struct

import numpy as np
import pytest

from pipeline.errors import ModelFileError
from pipeline.tflite.reader import OpCode, parse_tflite
from pipeline.tflite.verify import schema

from tests.test_fuzz import SEEDS


def _model_bytes(opcodes, tensor_types, operators) -> bytes:
    """A one-subgraph model built with the generated object API.

    ``opcodes``: (builtin code, version, custom code or None); ``tensor_types``: a
    TensorType per tensor (shape [2], no data); ``operators``: (opcode index, inputs, outputs).
    """
    import flatbuffers

    s = schema()
    codes = []
    for code, version, custom in opcodes:
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
        oc.customCode = custom
        codes.append(oc)
    tensors = []
    for i, ttype in enumerate(tensor_types):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = f"t{i}".encode(), np.array([2], np.int32), ttype, 0
        tensors.append(t)
    ops = []
    for index, ins, outs in operators:
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, np.array(ins, np.int32), np.array(outs, np.int32)
        ops.append(o)
    sg = s.SubGraphT()
    sg.tensors, sg.operators = tensors, ops
    sg.inputs, sg.outputs = np.array([0], np.int32), np.array([len(tensors) - 1], np.int32)
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, codes, [sg], [s.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_every_tensor_type_of_the_schema_has_its_name():
    types = {k: v for k, v in vars(schema().TensorType).items() if not k.startswith("_")}
    m = parse_tflite(_model_bytes([], list(types.values()), []))
    assert [t.dtype for t in m.tensors] == [k.lower() for k in types]
    assert {"int4", "bfloat16", "float8_e4m3fn"} <= {t.dtype for t in m.tensors}


def test_op_codes_give_builtin_name_version_and_custom_code():
    ops = schema().BuiltinOperator
    data = _model_bytes([(ops.CONV_2D, 3, None), (ops.CUSTOM, 2, b"MyOp"), (ops.CUSTOM, 1, None), (9999, 1, None)],
                        [schema().TensorType.FLOAT32] * 5, [(0, [0], [1]), (1, [1], [2]), (2, [2], [3]), (3, [3], [4])])
    m = parse_tflite(data)
    assert m.op_codes == [OpCode("CONV_2D", 3), OpCode("CUSTOM", 2, "MyOp"), OpCode("CUSTOM", 1, ""),
                          OpCode("BUILTIN_9999", 1)]
    assert m.opcodes == [("CONV_2D", 3), ("CUSTOM:MyOp", 2), ("CUSTOM:", 1), ("BUILTIN_9999", 1)]
    assert [(o.opcode, o.version) for o in m.operators] == m.opcodes


def test_seed_models_read_through_the_schema():
    m = parse_tflite(SEEDS["seed_int8"])
    assert [o.opcode for o in m.operators][:2] == ["CONV_2D", "DEPTHWISE_CONV_2D"]
    assert all(c.custom_code is None for c in m.op_codes)
    assert m.tensors[m.inputs[0]].dtype == "int8" and m.tensors[m.inputs[0]].quantization.zero_point == (-128,)


def _root_table(data: bytes) -> int:
    return struct.unpack_from("<I", data, 0)[0]


@pytest.mark.parametrize("edit, message", [
    # the root offset points past the end
    (lambda b: struct.pack_into("<I", b, 0, len(b) + 100), "truncated or corrupt model: i32 at byte"),
    # the root table's vtable lies before the start of the file (the generated reader would wrap around)
    (lambda b: struct.pack_into("<i", b, _root_table(b), _root_table(b) + 8),
     "truncated or corrupt model: u16 at byte -8"),
    # a vtable size that is odd
    (lambda b: struct.pack_into("<H", b, _root_table(b) - struct.unpack_from("<i", b, _root_table(b))[0], 5),
     "corrupt model: bad vtable size 5"),
])
def test_bad_offsets_are_model_file_errors(edit, message):
    b = bytearray(SEEDS["seed_float32"])
    edit(b)
    with pytest.raises(ModelFileError, match="^m.tflite: " + message):
        parse_tflite(bytes(b), "m.tflite")


def test_every_truncation_is_a_model_file_error():
    data = SEEDS["seed_int8"]
    for n in range(8, len(data), 7):
        with pytest.raises(ModelFileError, match="^m.tflite: "):
            parse_tflite(data[:n], "m.tflite")

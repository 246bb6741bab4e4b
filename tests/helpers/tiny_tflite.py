"""One-op TFLite models written straight from the schema (no TensorFlow): fast fixtures.

:func:`int8_add_model` doubles a quantized int8 vector (ADD of the input with itself),
which every runtime loads and computes exactly alike; :func:`unknown_custom_op_model`
has a custom op that no runtime registers, so every runtime refuses to load it.
"""

from pathlib import Path

#: The custom op of :func:`unknown_custom_op_model`.
UNKNOWN_OP = "MobileModelTestOnlyOp"


def _write(path: Path, tensors, code, op, inputs, outputs) -> Path:
    import flatbuffers

    from pipeline.tflite.verify import schema

    s = schema()
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, inputs, outputs, [op]
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sg]
    model.buffers, model.description = [s.BufferT()], "tiny test model"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def _tensor(s, name, shape, dtype, scale=None):
    t = s.TensorT()
    t.name, t.shape, t.type, t.buffer = name, list(shape), dtype, 0
    if scale is not None:
        q = s.QuantizationParametersT()
        q.scale, q.zeroPoint = [scale], [0]
        t.quantization = q
    return t


def int8_add_model(path: Path, width: int = 16) -> Path:
    """``y = x + x`` on int8 [1, width] (input scale 1/64, output scale 1/32): y's codes equal x's."""
    from pipeline.tflite.verify import schema

    s = schema()
    tensors = [_tensor(s, "x", (1, width), s.TensorType.INT8, 1 / 64),
               _tensor(s, "y", (1, width), s.TensorType.INT8, 1 / 32)]
    code = s.OperatorCodeT()
    code.deprecatedBuiltinCode = code.builtinCode = s.BuiltinOperator.ADD
    code.version = 2
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType = s.BuiltinOptions.AddOptions
    op.builtinOptions = s.AddOptionsT()
    return _write(path, tensors, code, op, [0], [1])


def unknown_custom_op_model(path: Path, width: int = 4) -> Path:
    """A float32 [1, width] -> [1, width] model whose one op is the custom op :data:`UNKNOWN_OP`."""
    from pipeline.tflite.verify import schema

    s = schema()
    tensors = [_tensor(s, "x", (1, width), s.TensorType.FLOAT32),
               _tensor(s, "y", (1, width), s.TensorType.FLOAT32)]
    code = s.OperatorCodeT()
    code.deprecatedBuiltinCode = code.builtinCode = s.BuiltinOperator.CUSTOM
    code.customCode, code.version = UNKNOWN_OP, 1
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    return _write(path, tensors, code, op, [0], [1])

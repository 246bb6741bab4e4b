"""A tiny hand-made .tflite and a synthetic build directory around it (no training, no devices)."""

from pathlib import Path

import numpy as np

from pipeline.export.evaluate import labels_path, predictions_path
from pipeline.recipe.schema import Recipe
from pipeline.summary import (BudgetResult, BuildSummary, DeviceSummary, TensorIO, Validation, VariantSummary,
                              write_summary)

TEST_SAMPLES = 50
LABELS = ["disc", "ring", "square", "frame", "triangle", "plus", "cross", "h-stripes", "v-stripes", "dot-grid"]


def tiny_tflite(path: Path, size: int = 32, classes: int = 10, seed: int = 0) -> np.ndarray:
    """Writes a float32 model input [1, size, size, 1] -> RESHAPE -> FULLY_CONNECTED -> SOFTMAX.

    Built with the flatbuffer object API LiteRT ships, so no TensorFlow is needed.
    Returns the dense weights ([classes, size*size]).
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    rng = np.random.default_rng(seed)
    n = size * size
    w = rng.normal(0, 0.05, (classes, n)).astype(np.float32)
    bias = np.zeros(classes, np.float32)
    new_shape = np.array([-1, n], np.int32)

    def buf(data):
        b = s.BufferT()
        b.data = np.frombuffer(data, np.uint8) if data else None
        return b

    def tensor(name, shape, ttype, buffer):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), np.array(shape, np.int32), ttype, buffer
        return t

    def opcode(code):
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, code, 1
        return oc

    def op(index, ins, outs, opt_type, opt):
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, np.array(ins, np.int32), np.array(outs, np.int32)
        o.builtinOptionsType, o.builtinOptions = opt_type, opt
        return o

    f32, i32 = s.TensorType.FLOAT32, s.TensorType.INT32
    sg = s.SubGraphT()
    sg.tensors = [tensor("input", [1, size, size, 1], f32, 0), tensor("shape", [2], i32, 1),
                  tensor("flat", [1, n], f32, 0), tensor("dense/MatMul", [classes, n], f32, 2),
                  tensor("dense/bias", [classes], f32, 3), tensor("logits", [1, classes], f32, 0),
                  tensor("probs", [1, classes], f32, 0)]
    reshape = s.ReshapeOptionsT()
    reshape.newShape = new_shape
    softmax = s.SoftmaxOptionsT()
    softmax.beta = 1.0
    sg.operators = [op(0, [0, 1], [2], s.BuiltinOptions.ReshapeOptions, reshape),
                    op(1, [2, 3, 4], [5], s.BuiltinOptions.FullyConnectedOptions, s.FullyConnectedOptionsT()),
                    op(2, [5], [6], s.BuiltinOptions.SoftmaxOptions, softmax)]
    sg.inputs, sg.outputs = np.array([0], np.int32), np.array([6], np.int32)
    m = s.ModelT()
    m.version = 3
    m.description = b"tiny test model"
    m.operatorCodes = [opcode(s.BuiltinOperator.RESHAPE), opcode(s.BuiltinOperator.FULLY_CONNECTED),
                       opcode(s.BuiltinOperator.SOFTMAX)]
    m.subgraphs = [sg]
    m.buffers = [buf(b""), buf(new_shape.tobytes()), buf(w.tobytes()), buf(bias.tobytes())]
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(bytes(builder.Output()))
    return w


LATENCY_MODEL = "llvm-mca cortex-a76 + memory"


def device_rec(loaded=True, runtime="litert 2.3.0", instr=1_000_000, latency=None, op=None,
               validated=True) -> DeviceSummary:
    estimated = latency is not None
    return DeviceSummary(
        latency_validated=validated if estimated else None, latency_model=LATENCY_MODEL if estimated else None,
        latency_cycles=latency * 2.42e6 if estimated else None, latency_ipc=1.5 if estimated else None,
        loaded=loaded,
        load_error=None if loaded else f"Didn't find op for builtin opcode '{op}' version '12'.\nsecond line",
        load_error_op=None if loaded else op, load_error_op_version=None if loaded else 12,
        top1=50.0 if loaded else None, instructions_per_inference=instr if loaded else None,
        instructions_by_class={}, exact_fraction=1.0 if loaded else None, max_abs_diff=0.0, top1_agreement=1.0,
        peak_memory_bytes=200_000 if loaded else None, fits_ram=True, latency_ms=latency, wall_s_per_image=0.4,
        samples=16, runtime=runtime)


def variant_rec(root: Path, v: str, size: int, dtype="float32", scale=(), zero=()) -> VariantSummary:
    tflite = root / "tflite" / f"{v}.tflite"
    return VariantSummary(
        top1=50.0, agreement_with_float=99.0, size_bytes=size, gzip_bytes=size // 2, zeros_prunable=0.5,
        zeros_all_kernels=0.45, max_unique_per_kernel=200, kernels=(),
        input=TensorIO(dtype, (1, 32, 32, 1), tuple(scale), tuple(zero)),
        output=TensorIO(dtype, (1, 10), tuple(scale), tuple(zero)),
        ops=("FULLY_CONNECTED:v1", "RESHAPE:v1", "SOFTMAX:v1"), samples=TEST_SAMPLES,
        validation=Validation(0.0, 100.0, 20, size), macs=10240, path=str(tflite), chain=v,
        predictions=str(predictions_path(tflite)))


def save_predictions(root: Path, variants) -> np.ndarray:
    """What evaluation saves: per variant its predicted classes on the test split, and the
    test labels once; returns the labels. Each variant predicts differently (seeded)."""
    truth = np.random.default_rng(0).integers(0, len(LABELS), TEST_SAMPLES)
    for v in variants:
        tflite = root / "tflite" / f"{v}.tflite"
        pred = np.where(np.random.default_rng(len(v)).random(TEST_SAMPLES) < 0.6, truth,
                        np.random.default_rng(len(v) + 1).integers(0, len(LABELS), TEST_SAMPLES))
        np.save(predictions_path(tflite), pred.astype(np.int64))
        np.save(labels_path(predictions_path(tflite)), truth.astype(np.int64))
    return truth


def fake_build(root: Path, devices=True, deploy="int8-qat", validated=True):
    """A build directory: two tiny .tflite variants with their saved predictions, the summary,
    the recipe; returns (recipe, summary). The one latency estimate (int8-qat on pixel4) is
    ``validated`` or not."""
    for v in ("float32", "int8-qat"):
        tiny_tflite(root / "tflite" / f"{v}.tflite", seed=len(v))
    save_predictions(root, ("float32", "int8-qat"))
    size = (root / "tflite" / "int8-qat.tflite").stat().st_size
    recipe = Recipe.from_dict({
        "name": "tiny", "data": {"dataset": "shapes", "train_samples": 40, "val_samples": 20,
                                 "test_samples": TEST_SAMPLES},
        "convert": {"variants": ["float32", "int8-qat"]}, "deploy_variant": deploy,
        "devices": {"targets": ["pixel4", "camera-a53"] if devices else []}})
    summary = BuildSummary(
        recipe="tiny", float_top1=52.0, params=10250, macs=10240, deploy_variant=deploy, labels=tuple(LABELS),
        variants={"float32": variant_rec(root, "float32", size),
                  "int8-qat": variant_rec(root, "int8-qat", size, "int8", [0.00392157], [-128])},
        devices={"pixel4": {"float32": device_rec(instr=3_000_000),
                            "int8-qat": device_rec(latency=0.42, validated=validated)},
                 "camera-a53": {"float32": device_rec(runtime="tflite-runtime 2.14.0"),
                                "int8-qat": device_rec(False, "tflite-runtime 2.14.0", op="FULLY_CONNECTED")}}
        if devices else {},
        budgets=(BudgetResult(budget="max_top1_drop", subject="int8-qat", limit=2.0, measured=2.0, unit="points",
                              ok=True),),
        stages_run=("train",))
    write_summary(summary, root)
    return recipe, summary

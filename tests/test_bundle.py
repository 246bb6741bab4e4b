"""The deployable bundle over a tiny hand-made .tflite and a synthetic build summary."""

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelFileError
from pipeline.export.evaluate import labels_path, predictions_path
from pipeline.publish.bundle import (FILES, MODEL_FILE, PLAIN_MODEL_FILE, runtime_sort_key, runtime_support,
                                     write_bundle)
from pipeline.publish.tflite_metadata import read_metadata
from pipeline.tflite.reader import read_tflite
from pipeline.recipe.schema import Recipe
from pipeline.summary import (UNVALIDATED_NOTE, BudgetResult, BuildSummary, DeviceSummary, TensorIO, Validation,
                              VariantSummary, write_summary)

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


def test_bundle_contents_and_checksums(tmp_path):
    recipe, summary = fake_build(tmp_path)
    info = write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    bundle = tmp_path / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(FILES)
    assert (bundle / PLAIN_MODEL_FILE).read_bytes() == (tmp_path / "tflite" / "int8-qat.tflite").read_bytes()
    # The embedded-metadata model: a grey float model behind an RGB front, labels packed inside.
    with_md = read_tflite(bundle / MODEL_FILE)
    assert list(with_md.tensors[with_md.inputs[0]].shape) == [1, 32, 32, 3]
    assert read_metadata((bundle / MODEL_FILE).read_bytes())["associated_files"]["labels.txt"].split() == LABELS
    assert (bundle / "labels.txt").read_text().splitlines() == LABELS
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(line.split(": ")[0] for line in r.stdout.splitlines()) == sorted(set(FILES) - {"SHA256SUMS"})
    assert set(info.files) == set(FILES) and info.path == bundle
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no staging left behind
    assert {oct(p.stat().st_mode & 0o777) for p in bundle.iterdir()} == {"0o644"}


def test_metadata_describes_input_ops_runtimes_and_devices(tmp_path):
    recipe, summary = fake_build(tmp_path)
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    meta = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    assert meta["variant"] == "int8-qat" and meta["model_file"] == MODEL_FILE
    assert meta["input"]["shape"] == [1, 32, 32, 1] and meta["input"]["dtype"] == "int8"
    assert meta["input"]["normalization"] == {"range": [0.0, 1.0], "formula": "x = pixel / 255",
                                              "mean": [0.0], "std": [255.0]}
    assert meta["input"]["quantization"] == {"scale": [0.00392157], "zero_point": [-128]}
    assert meta["ops"] == [{"op": "FULLY_CONNECTED", "version": 1}, {"op": "RESHAPE", "version": 1},
                           {"op": "SOFTMAX", "version": 1}]
    rt = meta["runtimes"]
    assert rt["minimum"] == "litert 2.3.0"
    assert rt["note"] == ("oldest tested runtime that loads it: litert 2.3.0; fails on tflite-runtime 2.14.0 "
                          "(FULLY_CONNECTED v12)")
    [failing] = [t for t in rt["tested"] if not t["loads"]]
    assert failing["devices"] == ["camera-a53"] and failing["error"].endswith("version '12'.")
    pixel4 = meta["devices"]["pixel4"]
    assert (pixel4["estimated_latency_ms"], pixel4["latency_validated"], pixel4["latency_model"],
            pixel4["latency_cycles"], pixel4["latency_ipc"]) == (0.42, True, LATENCY_MODEL, 0.42 * 2.42e6, 1.5)
    assert [k for k in pixel4 if "latency" in k] == ["estimated_latency_ms", "latency_validated", "latency_model",
                                                     "latency_cycles", "latency_ipc"]
    assert meta["devices"]["pixel4"]["emulated_cpu"] == "cortex-a76"
    assert meta["devices"]["camera-a53"]["loads"] is False
    assert meta["embedded_tflite_metadata"] is True and meta["model_without_metadata_file"] == PLAIN_MODEL_FILE
    md = meta["tflite_metadata"]
    assert (md["name"], md["input_shape"], md["color_space"], md["normalization"], md["labels_file"], md["output"],
            md["rgb_front"], md["mediapipe_tasks"]) == ("tiny (int8-qat)", [1, 32, 32, 3], "RGB",
                                                        {"mean": [0.0] * 3, "std": [255.0] * 3}, "labels.txt",
                                                        "FeatureProperties", True, True)
    assert md["writer"].startswith("MediaPipe metadata_writers (mediapipe 0.10.21")
    assert md["sha256"] == hashlib.sha256((tmp_path / "bundle" / MODEL_FILE).read_bytes()).hexdigest()
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    for text in ("# Model card: tiny (int8-qat)", "x = pixel / 255", "takes RGB [1, 32, 32, 3]",
                 f'Interpreter(model_path="{PLAIN_MODEL_FILE}")', "zero point [-128]", "sha256sum -c SHA256SUMS",
                 "| pixel4: ", "no (FULLY_CONNECTED v12)", "labels.txt"):
        assert text in card


@pytest.mark.parametrize("validated", [True, False])
def test_model_card_shows_latency_provenance_and_marks_unvalidated(tmp_path, validated):
    recipe, summary = fake_build(tmp_path, validated=validated)
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert json.loads((tmp_path / "bundle" / "metadata.json").read_text())[
        "devices"]["pixel4"]["latency_validated"] is validated
    assert "| est. latency ms | M cycles (1 thread) | IPC | latency model | memory MiB |" in card
    mark = "" if validated else "*"
    assert f"| 50.0 | 1.000 | 0.42{mark} | 1.016 | 1.50 | {LATENCY_MODEL} | 0.19 |" in card
    assert ("0.42*" in card) == (not validated) and (UNVALIDATED_NOTE in card) == (not validated)


def test_float_model_without_devices(tmp_path):
    recipe, summary = fake_build(tmp_path, devices=False, deploy="float32")
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    meta = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    assert meta["input"]["quantization"] is None and meta["output"]["quantization"] is None
    assert meta["runtimes"] == {"tested": [], "minimum": None,
                                "note": "not run on any emulated device runtime (build without devices)"}
    assert "No emulated-device results" in (tmp_path / "bundle" / "MODEL_CARD.md").read_text()


def test_rewriting_replaces_the_whole_bundle(tmp_path):
    recipe, summary = fake_build(tmp_path)
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    (tmp_path / "bundle" / "stale.txt").write_text("old")
    write_bundle(recipe, tmp_path, dataclasses.replace(summary, deploy_variant="float32"), log=lambda m: None)
    assert not (tmp_path / "bundle" / "stale.txt").exists()
    plain = (tmp_path / "bundle" / PLAIN_MODEL_FILE).read_bytes()
    assert plain == (tmp_path / "tflite" / "float32.tflite").read_bytes()


def test_missing_or_corrupt_model_is_a_model_file_error(tmp_path):
    recipe, summary = fake_build(tmp_path)
    (tmp_path / "tflite" / "int8-qat.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="not a TFLite model"):
        write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    (tmp_path / "tflite" / "int8-qat.tflite").unlink()
    with pytest.raises(ModelFileError, match="model file not found"):
        write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("loads, minimum, note", [
    ({"tflite-runtime 2.14.0": True, "litert 2.3.0": True}, "tflite-runtime 2.14.0",
     "oldest tested runtime that loads it: tflite-runtime 2.14.0 (every tested runtime loads it)"),
    ({"tflite-runtime 2.14.0": False, "litert 2.3.0": False}, None, "no tested device runtime loads it"),
    ({"litert 2.3.0": False, "litert 1.4.0": True}, "litert 1.4.0",
     "oldest tested runtime that loads it: litert 1.4.0; also fails on newer litert 2.3.0 (X v12)"),
])
def test_runtime_support(loads, minimum, note):
    devices = {f"d{i}": {"m": device_rec(ok, rt, op=None if ok else "X")} for i, (rt, ok) in enumerate(loads.items())}
    sup = runtime_support(devices, "m")
    assert sup["minimum"] == minimum and sup["note"] == note


def test_runtime_order_follows_the_lineage():
    names = ["litert 2.3.0", "tflite-runtime 2.14.0", "litert 1.10.0", "tflite-runtime 2.5.0"]
    assert sorted(names, key=runtime_sort_key) == ["tflite-runtime 2.5.0", "tflite-runtime 2.14.0",
                                                   "litert 1.10.0", "litert 2.3.0"]


def test_a_genotype_build_names_its_architecture_in_the_card(tmp_path):
    from models.genotype import named

    recipe, summary = fake_build(tmp_path, devices=False, deploy="float32")
    g = named("mobilenet_v3_small", 0.5)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, family="mbconv", alpha=1.0,
                                                                   genotype=g.to_dict()))
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert f"block-level genotype `{g.key()}`, {len(g.stages)} stages, 11 blocks" in card
    assert f"    {g.text()}" in card
    meta = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    assert meta["architecture"]["genotype"] == g.to_dict()

"""``mobile-model inspect`` reads the file only, and says which device runtimes can load it.

On the 14 real models of the MediaPipe wheel (the project's MediaPipe environment,
which ``make test`` builds first: a missing one fails here, nothing is skipped), on
models converted by us, and on a copy of one whose CONV_2D version was raised past
what tflite-runtime 2.14 registers. The runtimes' answers come from their host builds
(:mod:`pipeline.devices.op_support`).
"""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.devices import op_support
from pipeline.devices.targets import RUNTIMES
from pipeline.tflite.reader import read_tflite
from pipeline.tflite.verify import schema
from tests.helpers.mediapipe import mediapipe_models

FIX = Path(__file__).resolve().parent / "fuzz_regressions"
SEEDS = [FIX / "seed_float32.tflite", FIX / "seed_int8.tflite"]


def _mediapipe_models():
    return mediapipe_models()


def _inspect(path, *args):
    res = CliRunner(mix_stderr=False).invoke(main, ["inspect", str(path), "--json", *args])
    assert res.exit_code == 0, res.output + res.stderr
    return json.loads(res.stdout)


def _verdicts(desc):
    return {r["runtime"]: r for r in desc["runtimes"]}


def test_every_mediapipe_model_is_described_without_loading_it():
    for path in _mediapipe_models():
        d = _inspect(path)
        assert d["inputs"] and d["outputs"] and d["size_bytes"] == path.stat().st_size
        assert set(_verdicts(d)) == set(RUNTIMES)
        for r in d["runtimes"]:
            assert r["loads"] == (not r["lacks"]), (path.name, r)


def test_custom_ops_are_named_and_the_runtimes_lacking_them_say_so():
    [selfie] = [p for p in _mediapipe_models() if p.name == "selfie_segmentation.tflite"]
    d = _inspect(selfie)
    assert d["custom_ops"] == ["Convolution2DTransposeBias"]
    assert "CUSTOM:Convolution2DTransposeBias:v1" in d["ops"]
    for r in d["runtimes"]:
        assert r["loads"] is False and r["lacks"] == ["custom op Convolution2DTransposeBias"]
    text = CliRunner().invoke(main, ["inspect", str(selfie)]).output
    assert "custom ops: Convolution2DTransposeBias" in text
    assert "tflite-runtime 2.14.0   cannot load: lacks custom op Convolution2DTransposeBias" in text


def test_a_custom_op_tflite_registers_itself_is_found():
    ops = op_support.runtime_ops(RUNTIMES["tflite-runtime"], ["TFLite_Detection_PostProcess", "NoSuchOp"])
    assert ops.custom["TFLite_Detection_PostProcess"] is True and ops.custom["NoSuchOp"] is False


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.name)
def test_models_we_convert_load_on_every_runtime(path):
    d = _inspect(path)
    assert {name: (r["loads"], r["lacks"]) for name, r in _verdicts(d).items()} == {
        name: (True, []) for name in RUNTIMES}
    assert d["custom_ops"] == [] and d["host_runtime"] is None


def test_quantization_is_listed_per_input_and_output():
    d = _inspect(FIX / "seed_int8.tflite")
    [x] = d["inputs"]
    assert x["dtype"] == "int8" and x["per_channel"] is False and x["scale"][0] > 0


def _with_op_version(src: Path, op: str, version: int, dst: Path) -> Path:
    """A copy of ``src`` with the version of ``op``'s operator code set to ``version``."""
    s = schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)
    code = getattr(s.BuiltinOperator, op)
    [entry] = [c for c in model.operatorCodes if max(c.builtinCode, c.deprecatedBuiltinCode) == code]
    entry.version = version
    dst.write_bytes(op_support._pack(model))
    return dst


def test_an_op_version_newer_than_a_runtime_registers_is_named(tmp_path):
    # tflite-runtime 2.14 registers CONV_2D v1-v7; ai-edge-litert 2.3 adds v8.
    path = _with_op_version(FIX / "seed_float32.tflite", "CONV_2D", 8, tmp_path / "conv_v8.tflite")
    assert ("CONV_2D", 8) in read_tflite(path).op_versions()
    v = _verdicts(_inspect(path))
    assert (v["litert"]["loads"], v["litert"]["lacks"]) == (True, [])
    assert (v["tflite-runtime"]["loads"], v["tflite-runtime"]["lacks"]) == (False, ["CONV_2D v8"])
    assert v["tflite-runtime"]["devices"] == ["camera-a53"]
    text = CliRunner().invoke(main, ["inspect", str(path)]).output
    assert "tflite-runtime 2.14.0   cannot load: lacks CONV_2D v8  [camera-a53]" in text


def test_a_version_no_runtime_has_is_named_for_all(tmp_path):
    path = _with_op_version(FIX / "seed_int8.tflite", "FULLY_CONNECTED", 99, tmp_path / "fc_v99.tflite")
    for r in _inspect(path)["runtimes"]:
        assert r["lacks"] == ["FULLY_CONNECTED v99"]


def test_a_runtime_without_a_host_build_is_unknown_not_an_error(monkeypatch):
    monkeypatch.setattr(op_support, "_twin_env", lambda runtime: None)
    v = _verdicts(_inspect(SEEDS[0]))
    assert v["tflite-runtime"]["loads"] is None
    assert v["tflite-runtime"]["reason"] == "unknown: runtime not built (make arm-runtime)"
    assert v["litert"]["loads"] is True  # the pipeline's own interpreter needs no twin


def test_the_answers_are_cached_per_runtime_key():
    for runtime in RUNTIMES.values():
        op_support.runtime_ops(runtime)
        cached = json.loads(op_support.cache_path(runtime).read_text())
        assert cached["builtin"]["CONV_2D"][0] == 1 and "ADD" in cached["builtin"]
    keys = {op_support.cache_path(r).name for r in RUNTIMES.values()}
    assert len(keys) == len(RUNTIMES)


def test_inspect_never_hands_the_file_to_a_runtime(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("inspect loaded the model")

    monkeypatch.setattr("pipeline.tflite.inspect.load_check", refuse)
    d = _inspect(FIX / "im2col_overflow_hang.tflite")  # a file LiteRT refuses to prepare
    assert d["host_runtime"] is None and d["operators"] > 0


@pytest.mark.integration
def test_the_smoke_builds_models_load_on_every_runtime(smoke_tflite):
    # The float and full-integer variants; dynamic range uses FULLY_CONNECTED v12, which
    # tflite-runtime 2.14 lacks (the camera-a53 profile's note).
    for variant in ("float32", "int8-ptq"):
        v = _verdicts(_inspect(smoke_tflite[variant]))
        assert all(r["loads"] for r in v.values()), (variant, v)

"""The device check without qemu: output comparison, input validation, memory estimate,
latency provenance, the ``devices`` / ``device run`` CLI, a runtime that crashes."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.devices.check import DeviceResult, compare_outputs, estimate_memory
from pipeline.devices.guest_result import TensorInfo
from pipeline.devices.insn_counts import CLASSES
from pipeline.devices.profiles import DEVICES, get_device
from pipeline.errors import ConfigError, DeviceOutputError, RuntimeIncompatibleError


# -- check: pure helpers --------------------------------------------------------

def test_compare_outputs_int8():
    host = np.array([[1, 2, 3], [4, 5, 6]], np.int8)
    dev = np.array([[1, 2, 3], [4, 7, 6]], np.int8)
    a = compare_outputs(dev, host)
    assert (a.exact_count, a.exact_fraction, a.max_abs_diff) == (1, 0.5, 2.0)
    assert a.top1_agreement == 0.5 and a.dtype == "int8"


def _model(dtypes_buffers):
    from pipeline.tflite.reader import Quantization, Tensor, TFLiteModel

    tensors = [Tensor(i, f"t{i}", (1, 2), dt, buf, Quantization())
               for i, (dt, buf) in enumerate(dtypes_buffers)]
    return TFLiteModel(size=1, opcodes=[], tensors=tensors, operators=[], inputs=(0,),
                       outputs=(len(tensors) - 1,), buffers=[b"", b"\0\0"])


def test_host_reference_is_the_device_runtime_and_version():
    import platform

    from pipeline.devices.check import host_reference
    from pipeline.devices.host_twin import needs_twin, twin_specs
    from pipeline.devices.targets import RUNTIMES

    # The pipeline runs ai-edge-litert 2.3.0 itself (the phones' runtime); the camera's
    # tflite-runtime 2.14.0 gets its own x86_64 build.
    assert not needs_twin(RUNTIMES["litert"]) and needs_twin(RUNTIMES["tflite-runtime"])
    assert host_reference(get_device("pixel4")) == "xnnpack"
    assert host_reference(get_device("camera-a53")) == f"tflite-runtime 2.14.0 {platform.machine()}"
    (spec,) = twin_specs()
    assert spec.requirements == RUNTIMES["tflite-runtime"].requirements  # the guest's own pins


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((2, 3), np.float32), None, "inputs have shape [3] per sample; m.tflite expects [2]"),
    (np.zeros((0, 2), np.float32), None, "device check needs at least one input sample"),
    (np.zeros((2, 2), np.int8), None, "inputs must be float images in [0, 1], got dtype int8"),
    (np.zeros((2, 2), np.float32), np.zeros(3), "labels y has 3 entries for 2 inputs"),
])
def test_device_check_validates_inputs(x, y, message):
    from pipeline.devices.check import validate_inputs

    with pytest.raises(ConfigError) as e:
        validate_inputs(_model([("float32", 0), ("float32", 1), ("float32", 0)]), x, y, "m.tflite")
    assert str(e.value) == message


def test_cli_device_run_rejects_non_tflite(tmp_path):
    from pipeline.cli.devices import device

    model = tmp_path / "m.tflite"
    model.write_bytes(b"not a model at all")
    res = CliRunner().invoke(device, ["run", "--device", "pixel4", str(model), "--random", "1",
                                      "-q"])
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and "not a TFLite model" in res.output


def test_compare_outputs_shape_mismatch():
    with pytest.raises(ConfigError, match=r"host outputs have shape \[2, 3\], device outputs "
                                          r"\[1, 3\]"):
        compare_outputs(np.zeros((1, 3)), np.zeros((2, 3)))


def test_estimate_memory():
    from pipeline.tflite.reader import Quantization, Tensor, TFLiteModel

    tensors = [Tensor(0, "in", (1, 4), "float32", 0, Quantization()),
               Tensor(1, "w", (4, 2), "float32", 1, Quantization()),
               Tensor(2, "out", (1, 2), "float32", 2, Quantization())]
    model = TFLiteModel(size=100, opcodes=[], tensors=tensors, operators=[], inputs=(0,),
                        outputs=(2,), buffers=[b"", b"\0" * 32, b""])
    guest = [TensorInfo(0, "in", (1, 4), "float32", 16), TensorInfo(1, "w", (4, 2), "float32", 32),
             TensorInfo(2, "out", (1, 2), "float32", 8)]
    m = estimate_memory(model, guest, ram_mb=1)
    assert (m.weights_bytes, m.activation_bytes, m.total_bytes) == (32, 24, 56)
    assert m.fits and m.fraction_of_ram == 56 / 2**20


def test_device_result_json_and_require_loaded():
    r = DeviceResult(device="camera-a53", qemu_cpu="cortex-a53", runtime="tflite-runtime",
                     runtime_version="2.14.0", model="/m/dyn.tflite", model_sha256="0", threads=1,
                     samples=2, loaded=False, load_error="Didn't find op ...\nRegistration failed.",
                     load_error_op="FULLY_CONNECTED", load_error_op_version=12)
    assert json.loads(json.dumps(r.to_dict()))["load_error_op_version"] == 12
    with pytest.raises(RuntimeIncompatibleError) as e:
        r.require_loaded()
    assert str(e.value) == ("dyn.tflite does not load on camera-a53 (tflite-runtime 2.14.0): op "
                            "FULLY_CONNECTED version 12 is not supported (Didn't find op ...)")


# -- CLI ------------------------------------------------------------------------

def test_cli_devices_table_and_json():
    from pipeline.cli.devices import devices

    out = CliRunner().invoke(devices, []).output.splitlines()
    assert out[0].split() == ["device", "qemu", "cpu", "part", "cores", "GHz", "RAM", "MB",
                              "runtime", "threads"]
    assert [line.split()[0] for line in out[1:]] == DEVICES.names()
    data = json.loads(CliRunner().invoke(devices, ["--json"]).output)
    assert [d["name"] for d in data] == DEVICES.names()


def test_cli_device_run_needs_one_input_source(tmp_path):
    from pipeline.cli.devices import device

    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    for extra in ([], ["--random", "2", "--data", str(tmp_path / "d.npz")]):
        res = CliRunner().invoke(device, ["run", "--device", "pixel4", str(model), *extra])
        assert res.exit_code == 2
        assert res.output.strip() == ("error: give exactly one of --recipe RECIPE, --data NPZ, --inputs NPZ "
                                      "or --random N")


def test_cli_device_run_unknown_device(tmp_path):
    from pipeline.cli.devices import device

    res = CliRunner().invoke(device, ["run", "--device", "pixel9", "m.tflite", "--random", "1"])
    assert res.exit_code == 2 and "'pixel9' is not one of 'camera-a53'" in res.output


def test_cli_npz_missing_arrays(tmp_path):
    from pipeline.cli.devices import load_npz_inputs
    from pipeline.errors import DataError

    np.savez(tmp_path / "d.npz", images=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"d.npz: missing array\(s\) x, y; found images"):
        load_npz_inputs(tmp_path / "d.npz", None)


# -- latency and its provenance in the matrix and `device run` ------------------

MODEL = "llvm-mca neoverse-n1 + memory"


def provenance(validated, ms=6.65):
    """What :func:`pipeline.latency.estimate.attach_latency` sets on a result dict."""
    return {"latency_ms": ms, "latency_validated": validated, "latency_model": MODEL,
            "latency_cycles": 16_100_000.0, "latency_ipc": 1.85}


def loaded_result() -> DeviceResult:
    from pipeline.devices.check import Agreement, MemoryEstimate

    return DeviceResult(device="pixel4", qemu_cpu="cortex-a76", runtime="litert", runtime_version="2.3.0",
                        model="/m/int8.tflite", model_sha256="0", threads=1, samples=2, loaded=True, top1=50.0,
                        agreement=Agreement("xnnpack", "int8", 2, 2, 1.0, 0.0, 1.0), instructions_median=30_000_000,
                        instructions_by_class={c: 6_000_000 for c in CLASSES}, counts_exact=True,
                        wall_s_per_image=0.5, memory=MemoryEstimate(2**20, 2**20, 2**21, 2**30, 2**-9, True))


def test_the_matrix_estimates_from_the_full_result_and_records_no_latency(monkeypatch):
    from pipeline.build.matrix import device_metrics, stage_record, with_latency
    from pipeline.latency import estimate
    from pipeline.summary import LATENCY_FIELDS, DeviceSummary

    seen = []

    def attach(result, device, threads):
        seen.append((dict(result), device, threads))
        result.update(provenance(False))

    monkeypatch.setattr(estimate, "attach_latency", attach)  # replaced whole: the real one is not needed
    result = loaded_result().to_dict()
    record = stage_record(device_metrics(result))  # what the manifest holds: no latency
    assert not set(record) & set(LATENCY_FIELDS + ("threads",))
    m = with_latency(DeviceSummary.from_dict(record), result, "pixel4", 4)
    [(given, device, threads)] = seen
    assert given == loaded_result().to_dict() and (device, threads) == ("pixel4", 4)  # the whole result
    assert (m.latency_ms, m.latency_validated, m.latency_model, m.latency_cycles, m.latency_ipc, m.threads) == \
        (6.65, False, MODEL, 16_100_000.0, 1.85, 4)
    assert stage_record(m) == record


@pytest.mark.parametrize("validated", [True, False])
def test_device_table_shows_latency_provenance_and_marks_unvalidated(validated):
    import dataclasses

    from pipeline.build.matrix import device_metrics, device_table
    from pipeline.summary import UNVALIDATED_NOTE, BuildSummary

    m = dataclasses.replace(device_metrics(loaded_result().to_dict()), **provenance(validated))
    summary = BuildSummary(recipe="t", float_top1=0.0, params=0, macs=0, deploy_variant="int8", labels=(),
                           variants={}, devices={"pixel4": {"int8": m, "float32": device_metrics({"loaded": False})}})
    table = device_table(summary)
    assert "| est. latency ms | M cycles (1 thread) | IPC | latency model |" in table
    mark = "" if validated else "*"
    assert f"| pixel4 | int8 | yes | 50.0 | 30.000 | 6.65{mark} | 16.100 | 1.85 | {MODEL} | 100% |" in table
    assert ("*" in table) == (not validated) and (UNVALIDATED_NOTE in table) == (not validated)
    header, rule = table.splitlines()[:2]
    assert header.count("|") == rule.count("|") == table.splitlines()[-1 if validated else -3].count("|")


def test_device_table_shows_bit_exactness_of_full_integer_variants_with_float_output():
    """An int8 model with float input and output is compared bit for bit like any integer
    model; a float model's column says n/a (other kernels round differently)."""
    import dataclasses

    from pipeline.build.matrix import device_metrics, device_table
    from pipeline.summary import BuildSummary

    m = dataclasses.replace(device_metrics(loaded_result().to_dict()), output_dtype="float32", exact_fraction=0.99)
    summary = BuildSummary(recipe="t", float_top1=0.0, params=0, macs=0, deploy_variant="int8-qat", labels=(),
                           variants={}, devices={"pixel4": {"int8-qat": m, "float32": m}})
    rows = {line.split(" | ")[1]: line for line in device_table(summary).splitlines()[2:4]}
    assert "| 99% |" in rows["int8-qat"] and "| n/a (float) |" in rows["float32"]


@pytest.mark.parametrize("latency, text", [
    (provenance(False), f"estimated latency   6.65 ms ({MODEL}: 16,100,000 cycles on 1 thread, IPC 1.85; "
                        "UNVALIDATED: no published measurement of this core and numeric format was in the "
                        "latency model's fit or its check (docs/latency.md))"),
    (provenance(True), f"estimated latency   6.65 ms ({MODEL}: 16,100,000 cycles on 1 thread, IPC 1.85; "
                       "validated)"),
    (dict.fromkeys(provenance(True)), "estimated latency   n/a (no latency model for this device)"),
])
def test_cli_device_run_prints_latency_provenance(latency, text):
    from pipeline.cli.devices import format_result
    from pipeline.summary import LatencyEstimate

    out = format_result(loaded_result(), LatencyEstimate.from_result(latency))
    assert text in out.splitlines()[5]


def _fake_run(returncode, stderr):
    from pipeline.devices.runner import DeviceRun

    return DeviceRun(command=("qemu-aarch64", "guest_runner.py"), env=(("HOME", "/"),), returncode=returncode,
                     stdout="", stderr=stderr, result_text=None, counts_text=None, outputs=None, wall_s=0.5)


SEED_MODEL = Path(__file__).parent / "fuzz_regressions" / "seed_int8.tflite"


def test_a_runtime_that_crashes_on_the_model_is_a_result_not_an_outage(monkeypatch):
    """A guest that dies on SIGSEGV is the model's problem on that runtime: the build
    records it like an unloadable model, ``device run`` names it; exit 3 is kept for
    a runtime that is not there or output that makes no sense."""
    from pipeline.build.matrix import device_metrics, device_table
    from pipeline.devices import check

    crash = "qemu: uncaught target signal 11 (Segmentation fault) - core dumped\n"
    monkeypatch.setattr(check, "run_on_device", lambda *a, **k: _fake_run(-11, crash))
    x = np.zeros((2, 8, 8, 1), np.float32)
    r = check.run_device_check(SEED_MODEL, "camera-a53", x, runtime=object())
    assert not r.loaded and r.runtime == "tflite-runtime" and r.samples == 2
    assert r.load_error == ("the runtime crashed on this model (SIGSEGV): "
                            "qemu: uncaught target signal 11 (Segmentation fault) - core dumped")
    with pytest.raises(RuntimeIncompatibleError, match=r"seed_int8.tflite does not load on camera-a53 "
                                                      r"\(tflite-runtime 2.14.0\) \(the runtime crashed"):
        r.require_loaded()
    from pipeline.summary import BuildSummary

    summary = BuildSummary(recipe="t", float_top1=0.0, params=0, macs=0, deploy_variant="int8-qat", labels=(),
                           variants={}, devices={"camera-a53": {"int8-qat": device_metrics(r.to_dict())}})
    table = device_table(summary)
    assert "| camera-a53 | int8-qat | no (the runtime crashed on this model (SIGSEGV)) |" in table

    monkeypatch.setattr(check, "run_on_device", lambda *a, **k: _fake_run(1, "Traceback ...\nOSError: boom\n"))
    with pytest.raises(DeviceOutputError, match=r"camera-a53: the emulated run of seed_int8.tflite exited 1"):
        check.run_device_check(SEED_MODEL, "camera-a53", x, runtime=object())


def test_a_delegate_that_cannot_prepare_the_model_is_the_host_references_verdict():
    """LiteRT 2.3's XNNPACK fails to prepare this int8 block (a stride-2 squeeze-excite part
    of the block search space) on the host and, the same message, on the emulated pixel4:
    pixel4's host reference (that runtime and version) says so, and nothing is emulated."""
    from pipeline.devices.check import run_device_check

    path = Path(__file__).parent / "data" / "xnnpack_unprepared_part.tflite"
    r = run_device_check(path, "pixel4", np.zeros((1, 8, 8, 24), np.float32))
    assert not r.loaded and "(TfLiteXNNPackDelegate) failed to prepare" in r.load_error, r
    assert r.verdict.startswith("not loadable on litert 2.3.0") and r.verdict_source.startswith("host reference")

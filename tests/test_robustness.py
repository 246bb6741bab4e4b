"""Robustness: untrusted model files, interrupted and concurrent builds, reproducibility.

The build tests run the real CLI in subprocesses on one build directory, in order
(about 2 minutes on 2 cores), which starts with the train and prune stages of the
session smoke build (``conftest.smoke_build``) already completed:

1. a build is started; a second build of the same directory is refused (lock);
   the first is killed with SIGKILL inside its QAT stage, the moment QAT logs
   that it starts training (the line before its fit);
2. a rerun resumes after the completed stages (train and prune not re-run),
   re-runs QAT, and is stopped with SIGINT during conversion: exit code 130, one
   clear line, no traceback (the process exits at once, as safe as SIGKILL);
3. a second rerun completes; its ``.tflite`` files are byte-identical to those of
   the uninterrupted session smoke build (``conftest.smoke_build``).
"""

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.tflite import sandbox
from pipeline.cli import main
from pipeline.errors import ModelFileError
from pipeline.tflite.sandbox import load_check, run_untrusted

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIX = HERE / "fuzz_regressions"
SEED_INT8 = FIX / "seed_int8.tflite"
SLOW = FIX / "slow_invoke_10s.tflite"          # loads, then one 8x8 inference takes ~10 s
IM2COL = FIX / "im2col_overflow_hang.tflite"   # parses; LiteRT rejects it (and can hang with XNNPACK)


# -- untrusted model files ----------------------------------------------------------------


def test_isolated_load_reports_the_runtime_view():
    info = load_check(SEED_INT8)
    assert info["inputs"] == [{"name": "serving_default_input_1:0", "shape": [1, 8, 8, 1], "dtype": "int8"}]
    assert info["ops"] == ["CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"]


def test_isolated_run_matches_in_process_run():
    from pipeline.tflite.host import run_tflite

    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(run_untrusted(SEED_INT8, x), run_tflite(SEED_INT8, x))


def test_runtime_rejection_is_a_clear_error_naming_the_file():
    with pytest.raises(ModelFileError) as e:
        load_check(IM2COL)
    assert str(e.value) == (f"{IM2COL}: the TFLite runtime rejected this model: RuntimeError: Conv im2col "
                            "elements (2415919248) exceed the 32-bit integer limit.Node number 0 (CONV_2D) "
                            "failed to prepare.")


def test_a_tensor_name_that_is_not_utf8_is_a_clear_error():
    # In process, LiteRT's Python wrapper raises UnicodeDecodeError from get_input_details.
    bad = FIX / "bad_utf8_tensor_name.tflite"
    res = CliRunner().invoke(main, ["inspect", "--load", str(bad)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output == (f"error: {bad}: the TFLite runtime rejected this model: UnicodeDecodeError: 'utf-8' "
                          "codec can't decode byte 0xff in position 21: invalid start byte\n")


def test_a_model_that_runs_too_long_is_stopped_at_the_timeout():
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError) as e:
        run_untrusted(SLOW, np.zeros((1, 8, 8, 1), np.float32), timeout_s=2)
    assert time.perf_counter() - t0 < 8
    assert str(e.value) == (f"{SLOW}: the TFLite runtime did not finish with this model within 2 s "
                            "(stopped); the file may be malformed or hostile")


def test_a_crash_of_the_runtime_is_a_clear_error(monkeypatch):
    # The child is replaced by one that dies the way a memory-safety bug kills it.
    monkeypatch.setattr(sandbox, "_child_command", lambda task, model, work: [
        sys.executable, "-c", "import os, signal, sys; sys.stderr.write('reading tensor 3\\n'); "
                              "os.kill(os.getpid(), signal.SIGSEGV)"])
    with pytest.raises(ModelFileError) as e:
        load_check(SEED_INT8)
    assert str(e.value) == (f"{SEED_INT8}: the TFLite runtime crashed on this model (SIGSEGV) in an isolated "
                            "process; the file is malformed or hostile: reading tensor 3")


def test_inspect_load_loads_in_isolation_and_rejects_what_the_runtime_rejects():
    ok = CliRunner().invoke(main, ["inspect", "--load", str(SEED_INT8)])
    assert ok.exit_code == 0, ok.output
    assert "host LiteRT: loads and allocates (5 ops, isolated process)" in ok.output
    bad = CliRunner().invoke(main, ["inspect", "--load", str(IM2COL)])
    assert bad.exit_code == 2
    assert bad.output.startswith(f"error: {IM2COL}: the TFLite runtime rejected this model: RuntimeError: "
                                 "Conv im2col elements")
    assert "Traceback" not in bad.output


def test_evaluate_runs_untrusted_models_in_isolation(tmp_path):
    from PIL import Image

    for k, name in enumerate(("a", "b", "c")):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * k + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    ok = CliRunner().invoke(main, ["evaluate", str(SEED_INT8), "--data", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert "on 9 images (all images of" in ok.output
    bad = CliRunner().invoke(main, ["evaluate", str(IM2COL), "--data", str(tmp_path)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert f"error: {IM2COL}: the TFLite runtime rejected this model" in bad.output


@pytest.mark.parametrize("model, message", [
    (FIX / "seed_int8.tflite", None),
    (IM2COL, "the TFLite runtime rejected this model: RuntimeError: Conv im2col"),
])
def test_device_run_checks_the_model_before_any_runtime(tmp_path, monkeypatch, model, message):
    if message is None:  # a truncated copy: the reader rejects it
        data = model.read_bytes()
        model = tmp_path / "truncated.tflite"
        model.write_bytes(data[:1000])
        message = "truncated or corrupt model"
    import pipeline.devices.runtime as runtime

    def no_runtime(*a, **k):
        raise AssertionError("the ARM runtime must not be touched for a bad model")

    monkeypatch.setattr(runtime, "ensure_runtime", no_runtime)
    res = CliRunner().invoke(main, ["device", "run", "--device", "pixel4", str(model), "--random", "2"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: {model}: ") and message in res.output
    assert "Traceback" not in res.output


# -- interrupted and concurrent builds --------------------------------------------------


def _env():
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}


def _start(out: Path, log: Path) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "build", "default", "--smoke",
                             "--no-devices", "--out", str(out)], cwd=REPO, env=_env(),
                            stdout=f, stderr=subprocess.STDOUT, preexec_fn=_interactive_signals)


def _interactive_signals() -> None:
    """The child gets SIGINT as at a terminal (a background job starts with it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.time()
    while text not in log.read_text():
        if proc.poll() is not None:
            raise AssertionError(f"build exited ({proc.returncode}) before {text!r}:\n{log.read_text()[-3000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"no {text!r} within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _seed_completed_stages(src: Path, out: Path, stages=("train", "prune")) -> None:
    """``out`` as a build of the same recipe leaves it after completing ``stages`` only:
    their manifest entries and files, copied from the build in ``src``."""
    import shutil

    manifest = json.loads((src / "manifest.json").read_text())
    kept = {name: manifest["stages"][name] for name in stages}
    for stage in kept.values():
        for output in stage["outputs"].values():
            (out / output["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / output["path"], out / output["path"])
    manifest = {k: v for k, v in manifest.items() if k != "summary"}
    (out / "manifest.json").write_text(json.dumps({**manifest, "stages": kept}, indent=2))


@pytest.fixture(scope="module")
def interrupted_build(tmp_path_factory, smoke_build):
    """Runs steps 1-3 of the module docstring; returns what each step showed.

    The build directory starts with the session smoke build's train and prune stages
    (manifest entries and files), as a build that completed them leaves it: the first
    process trains QAT within seconds instead of re-training both (the suite's time),
    and what the steps check (the lock, a kill inside QAT, resuming after the kept
    stages, SIGINT, byte-identical files) is the same."""
    work = tmp_path_factory.mktemp("interrupted")
    out = work / "default-smoke"
    _seed_completed_stages(smoke_build.root, out)
    steps = {}
    log1 = work / "1.log"
    p1 = _start(out, log1)
    try:
        _wait_for(log1, "[data] train", p1)
        second = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", "default", "--smoke",
                                 "--no-devices", "--out", str(out)], cwd=REPO, env=_env(),
                                capture_output=True, text=True, timeout=300)
        steps["second"] = second
        # QAT logs its scheme once the model is wrapped, right before fitting it: from here
        # until it saves qat.h5 the stage is mid-way. Killing at once costs no training.
        _wait_for(log1, "[qat] scheme", p1)
        p1.send_signal(signal.SIGKILL)
        p1.wait(60)
    finally:
        if p1.poll() is None:
            p1.kill()
    steps["after_kill"] = json.loads((out / "manifest.json").read_text())
    steps["files_after_kill"] = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())

    log3 = work / "3.log"
    p3 = _start(out, log3)
    try:
        _wait_for(log3, "[convert/float16]", p3)
        p3.send_signal(signal.SIGINT)
        p3.wait(300)
    finally:
        if p3.poll() is None:
            p3.kill()
    steps["sigint_rc"], steps["sigint_log"] = p3.returncode, log3.read_text()

    log4 = work / "4.log"
    p4 = _start(out, log4)
    p4.wait(900)
    steps["final_rc"], steps["final_log"] = p4.returncode, log4.read_text()
    steps["out"] = out
    return steps


@pytest.mark.integration
def test_second_build_of_the_same_directory_is_refused(interrupted_build):
    second = interrupted_build["second"]
    assert second.returncode == 2
    assert "error: another build is running in" in second.stderr
    assert "wait for it to finish or build into another directory" in second.stderr
    assert "Traceback" not in second.stderr


@pytest.mark.integration
def test_sigkill_during_qat_leaves_only_complete_artifacts(interrupted_build):
    stages = interrupted_build["after_kill"]["stages"]
    assert {"train", "prune"} <= set(stages) and "qat" not in stages
    files = interrupted_build["files_after_kill"]
    assert "keras/qat.h5" not in files  # the model QAT was writing never appears half-written
    assert {"keras/float.h5", "keras/pruned.h5"} <= set(files)


@pytest.mark.integration
def test_rerun_resumes_and_sigint_stops_it_cleanly(interrupted_build):
    log = interrupted_build["sigint_log"]
    assert "[train] up to date (cached)" in log and "[prune] up to date (cached)" in log
    assert "[qat] epoch 1/1" in log and "[convert/float32]" in log
    assert interrupted_build["sigint_rc"] == 130
    assert "error: build interrupted (SIGINT);" in log
    assert "run the same command again to resume" in log
    assert "Traceback" not in log


@pytest.mark.integration
def test_completed_resume_equals_an_uninterrupted_build(interrupted_build, smoke_build):
    assert interrupted_build["final_rc"] == 0, interrupted_build["final_log"][-3000:]
    out = interrupted_build["out"]
    ran = json.loads((out / "summary.json").read_text())["stages_run"]
    assert not {"train", "prune", "qat", "convert/float32"} & set(ran)
    assert "convert/int8-qat" in ran
    ours = {p.name: _sha(p) for p in sorted((out / "tflite").glob("*.tflite"))}
    reference = {p.name: _sha(p) for p in sorted((smoke_build.root / "tflite").glob("*.tflite"))}
    assert len(ours) == 5 and ours == reference


@pytest.mark.integration
def test_manifest_records_what_reproduces_the_build(interrupted_build):
    m = json.loads((interrupted_build["out"] / "manifest.json").read_text())
    rep = m["reproduce"]
    assert rep["seed"] == m["recipe"]["seed"] == 0
    assert rep["determinism"]["tf_op_determinism"] is True
    assert rep["env"]["PYTHONHASHSEED"] == "0" and rep["env"]["TF_USE_LEGACY_KERAS"] == "1"
    assert rep["versions"]["tensorflow"] == "2.21.0" and rep["versions"]["ai-edge-litert"] == "2.3.0"
    assert len(rep["arm_runtime_key"]) == 16 and len(rep["code_sha256"]) == 64
    # The interpreter that ran the build (this one, in a subprocess): any supported version.
    assert rep["platform"]["machine"] and rep["python"] == platform.python_version()
    assert len(m["data"]["fingerprint"]) == 64


@pytest.mark.integration
def test_report_refuses_a_model_changed_after_the_build(interrupted_build, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(interrupted_build["out"], root)
    model = root / "tflite" / "float16.tflite"
    model.write_bytes(model.read_bytes() + b"\0")
    res = CliRunner().invoke(main, ["report", str(root), "-q"])
    assert res.exit_code == 2
    assert res.output == (f"error: {model}: sha256 differs from the one recorded in {root / 'manifest.json'} "
                          "(changed after the build); rebuild, or check it with `mobile-model inspect`\n")


@pytest.mark.parametrize("kind, error, message", [
    ("MemoryError", "MemoryError", "m.tflite: the TFLite runtime ran out of memory on this model (cap 16 GiB); "
                                   "the file may be malformed or hostile"),
    ("ValueError", "ValueError: bad tensor",
     "m.tflite: the TFLite runtime rejected this model: ValueError: bad tensor"),
])
def test_a_child_error_names_what_went_wrong(tmp_path, kind, error, message):
    """How the parent reads the child's error record (the child writes it on any Python error)."""
    from pipeline.errors import ModelFileError
    from pipeline.tflite.sandbox import child_result

    (tmp_path / "error.json").write_text(json.dumps({"error": error, "kind": kind}))
    with pytest.raises(ModelFileError) as err:
        child_result("load", Path("m.tflite"), 1, "", tmp_path)
    assert str(err.value) == message

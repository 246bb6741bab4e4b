"""The command line: instant help, one-line errors with exit codes, no tracebacks."""

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.cli.common import echo_json, fail, logger
from pipeline.errors import BudgetExceededError, ConfigError, DeviceUnavailableError

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_help_is_instant_and_lists_commands():
    t0 = time.perf_counter()
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("build", "models", "datasets", "inspect", "evaluate", "devices", "device", "calibrate",
                "estimate", "compare", "baseline", "report", "search"):
        assert cmd in r.stdout
    # The CLI must not import TensorFlow for --help (that alone takes seconds).
    r2 = subprocess.run([sys.executable, "-c", "import sys, pipeline.cli; "
                         "print('tensorflow' in sys.modules)"], cwd=REPO, capture_output=True, text=True)
    assert r2.stdout.strip() == "False"
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("content, message", [
    (b"", "not a TFLite model (0 bytes; too short for a flatbuffer)"),
    (b"hello, this is a text file\n", "not a TFLite model (file identifier b'o, t', expected b'TFL3')"),
    (b"\x10\x00\x00\x00TFL3" + b"\x00" * 4, "truncated or corrupt model"),
])
def test_inspect_rejects_non_models(tmp_path, content, message):
    p = tmp_path / "m.tflite"
    p.write_bytes(content)
    res = CliRunner().invoke(main, ["inspect", str(p)])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def test_inspect_missing_file(tmp_path):
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope.tflite")])
    assert res.exit_code == 2 and "error: model file not found:" in res.output


def test_unknown_recipe_key_is_one_line_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nmodle: {}\n")
    r = run_cli("build", str(p))
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: recipe: unknown key 'modle'; valid keys: name, seed, data, model, train, "
                                "transfer, prune, qat, cluster, convert, devices, search, budgets, deploy_variant, "
                                "smoke_form")


def test_missing_data_directory_is_one_line_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(f"name: x\ndata: {{dataset: folder, path: {tmp_path / 'nothing'}}}\n")
    r = run_cli("build", str(p), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: data directory not found: {tmp_path / 'nothing'}"


def test_models_command_lists_families():
    res = CliRunner().invoke(main, ["models", "--alpha", "0.35", "--input-size", "32", "--classes", "10"])
    assert res.exit_code == 0, res.output
    for fam in ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"):
        assert fam in res.output


def test_ordinary_commands_start_quietly():
    """No TensorFlow/absl start-up lines (cudart_stub, "before absl::InitializeLog") on stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "models", "--alpha", "0.35"], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "mobilenet_v2" in r.stdout
    assert r.stderr == ""


def test_the_quiet_import_replays_what_a_failing_import_printed(tmp_path, monkeypatch, capfd):
    from pipeline import native

    (tmp_path / "noisy_mod.py").write_text("import os\nos.write(2, b'start-up line\\n')\nraise ImportError('broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = native._QuietImportFinder("noisy_mod")
    sys.meta_path.insert(0, finder)
    try:
        with pytest.raises(ImportError, match="broken"):
            importlib.import_module("noisy_mod")  # a module of the test, not a dependency
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        sys.modules.pop("noisy_mod", None)
    assert "start-up line" in capfd.readouterr().err


def test_datasets_command_lists_registry():
    from pipeline.data import DATASETS

    res = CliRunner().invoke(main, ["datasets"])
    assert res.exit_code == 0
    for name in DATASETS.names():
        assert name in res.output


@pytest.mark.parametrize("error, code", [(ConfigError("bad recipe"), 2), (BudgetExceededError("bad recipe"), 1),
                                         (DeviceUnavailableError("bad recipe"), 3)])
def test_fail_prints_one_line_and_exits_with_the_error_code(error, code):
    @click.command()
    def cmd():
        fail(error)

    res = CliRunner(mix_stderr=False).invoke(cmd, [])
    assert (res.exit_code, res.stderr, res.stdout) == (code, "error: bad recipe\n", "")


def test_group_maps_errors_like_fail(tmp_path):
    # A command that does not catch our errors itself (inspect) gets the group's mapping.
    res = CliRunner(mix_stderr=False).invoke(main, ["inspect", str(tmp_path / "nope.tflite")])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.startswith("error: model file not found:") and res.stderr.count("\n") == 1


def test_logger_and_echo_json():
    @click.command()
    @click.option("-q", "quiet", is_flag=True)
    def cmd(quiet):
        logger(quiet)("progress")
        echo_json({"b": [1, 2], "a": Path("x")}, default=str)

    loud = CliRunner(mix_stderr=False).invoke(cmd, [])
    quiet = CliRunner(mix_stderr=False).invoke(cmd, ["-q"])
    assert loud.stderr == "progress\n" and quiet.stderr == ""
    assert loud.stdout == quiet.stdout == '{\n  "b": [\n    1,\n    2\n  ],\n  "a": "x"\n}\n'


def test_cli_modules_share_one_error_mapper_and_logger():
    for path in sorted((REPO / "pipeline" / "cli").glob("*.py")):
        if path.name == "common.py":
            continue
        text = path.read_text()
        assert "exit_code" not in text, f"{path.name}: map errors with pipeline.cli.common.fail"
        assert "lambda m: None" not in text and "lambda msg: None" not in text, (
            f"{path.name}: use pipeline.cli.common.logger")


def test_tensorflow_environment_is_set_once_by_the_cli_and_the_user_wins():
    code = ("import os, pipeline.cli; from pipeline.native import tf_environment; "
            "os.environ['TF_USE_LEGACY_KERAS'] = 'changed'; tf_environment(); "
            "print(os.environ['TF_USE_LEGACY_KERAS'], os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.stdout.split() == ["changed", "3"], r.stderr
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"},
                       capture_output=True, text=True)
    assert r.stdout.split() == ["changed", "0"], r.stderr


@pytest.mark.parametrize("args", [[], ["--recipe", "default", "--data", "imgs"]])
def test_evaluate_needs_exactly_one_source(tmp_path, args):
    """The CLI names its flags; the library speaks of the domain."""
    from pipeline.tflite.inspect import evaluate_file

    res = CliRunner().invoke(main, ["evaluate", str(tmp_path / "m.tflite"), *args])
    assert res.exit_code == 2
    assert res.output == "error: evaluate: give exactly one of --recipe RECIPE or --data FOLDER\n"
    with pytest.raises(ConfigError, match="^evaluation needs exactly one source of test images: a recipe or a folder$"):
        evaluate_file(tmp_path / "m.tflite")


@pytest.mark.parametrize("validated, latency_line", [
    (False, "  latency_ms     6.65*  (UNVALIDATED: no published measurement of this core and numeric format was in "
            "the latency model's fit or its check (docs/latency.md))"),
    (True, "  latency_ms     6.65  (validated)"),
])
def test_estimate_text_shows_the_latency_provenance(monkeypatch, validated, latency_line):
    from pipeline.latency import estimate

    r = {"latency_ms": 6.65, "validated": validated, "pipeline_model": "llvm-mca neoverse-n1 + memory",
         "cycles_single_thread": 16_100_000.0, "ipc": 1.85, "instructions": 29_785_000, "device": "pixel4",
         "qemu_cpu": "cortex-a76", "clock_ghz": 2.42, "runtime": "litert 2.3.0", "threads": 1,
         "params_file": "params.yaml", "params_source": "package", "cached": True, "wall_s": 0.1}
    monkeypatch.setattr(estimate, "estimate_model", lambda spec, device, threads, log: r)
    res = CliRunner().invoke(main, ["estimate", "--model", "mobilenet_v2", "--device", "pixel4", "-q"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1:4] == [latency_line, "  pipeline model llvm-mca neoverse-n1 + memory",
                          "  cycles         16,100,000 per inference on 1 thread, IPC 1.85"]
    assert ("UNVALIDATED" in res.output) == (not validated)

"""The exit-code contract of every command (README, "Exit codes"), table-driven.

0 success; 1 a gate failed; 2 bad input; 3 device runtime unavailable; 4 an
internal error (one line, traceback in a log file). Every command of the CLI is
in the tables below, and the tables fail when a command is added without a row.
"""

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import (EXIT_BAD_INPUT, EXIT_DEVICE_UNAVAILABLE, EXIT_GATE_FAILED, EXIT_INTERNAL_ERROR,
                             EXIT_OK)

REPO = Path(__file__).resolve().parents[1]
SEED_INT8 = REPO / "tests" / "fuzz_regressions" / "seed_int8.tflite"
BASELINE = REPO / "baselines" / "default.json"


def command_paths(group: click.Group = main, prefix=()):
    """Every leaf command as a tuple of names (``("device", "run")``)."""
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from command_paths(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


def _leaf(path):
    cmd = main
    for name in path:
        cmd = cmd.commands[name]
    return cmd


# Bad input (exit 2) per command: a missing file, an unknown name or a bad option value.
BAD_INPUT = {
    ("build",): lambda t: ["build", "no-such-recipe"],
    ("search",): lambda t: ["search", "default", "--device", "no-such-device", "--latency-ms", "1"],
    ("models",): lambda t: ["models", "--alpha", "wide"],
    ("datasets",): lambda t: ["datasets", "--no-such-option"],
    ("inspect",): lambda t: ["inspect", str(t / "missing.tflite")],
    ("evaluate",): lambda t: ["evaluate", str(SEED_INT8)],
    ("devices",): lambda t: ["devices", "--no-such-option"],
    ("device", "run"): lambda t: ["device", "run", "--device", "pixel4", str(t / "missing.tflite"), "--random", "1"],
    ("device", "measured"): lambda t: ["device", "measured", "--no-such-option"],
    ("estimate",): lambda t: ["estimate", "--model", "mobilenet_v2", "--device", "no-such-device"],
    ("calibrate",): lambda t: ["calibrate", "--published", str(t / "missing.csv"), "--out", str(t / "cal")],
    ("compare",): lambda t: ["compare", str(t / "missing.json"), str(BASELINE)],
    ("baseline",): lambda t: ["baseline", str(t / "no-build"), str(t / "b.json")],
    ("report",): lambda t: ["report", str(t / "no-build")],
    ("transfer-table",): lambda t: ["transfer-table", "no-such-recipe"],
}

# An injected fault (exit 4): the pipeline function each command calls raises a bug.
# "module:object" patches an attribute of an object of the module.
FAULT = {
    ("build",): ("pipeline.recipe.load", "load_recipe", ["build", "default", "--smoke", "--no-devices"]),
    ("search",): ("pipeline.recipe.load", "load_recipe",
                  ["search", "default", "--device", "pixel4", "--latency-ms", "5"]),
    ("models",): ("pipeline.train.zoo", "model_summary", ["models"]),
    ("datasets",): ("pipeline.data", "describe_datasets", ["datasets"]),
    ("inspect",): ("pipeline.tflite.inspect", "describe_model", ["inspect", str(SEED_INT8)]),
    ("evaluate",): ("pipeline.tflite.inspect", "evaluate_file", ["evaluate", str(SEED_INT8), "--recipe", "default"]),
    ("devices",): ("pipeline.devices.profiles:DEVICES", "get", ["devices"]),
    ("device", "run"): ("pipeline.tflite.reader", "read_tflite",
                        ["device", "run", "--device", "pixel4", str(SEED_INT8), "--random", "1"]),
    ("device", "measured"): ("pipeline.devices.remote.store", "read_rows", ["device", "measured"]),
    ("estimate",): ("pipeline.latency.estimate", "estimate_model",
                    ["estimate", "--model", "mobilenet_v2", "--device", "pixel4"]),
    ("calibrate",): ("pipeline.latency.published", "load_published", ["calibrate"]),
    ("compare",): ("pipeline.gate.compare", "compare_paths", ["compare", str(BASELINE), str(BASELINE)]),
    ("baseline",): ("pipeline.gate.baseline", "write_baseline", ["baseline", "build/x", "b.json"]),
    ("report",): ("pipeline.publish.report", "rewrite_report", ["report", "build/x"]),
    ("transfer-table",): ("pipeline.recipe.load", "load_recipe", ["transfer-table", "default"]),
}


def invoke(args):
    return CliRunner(mix_stderr=False).invoke(main, [str(a) for a in args])


def test_every_command_has_a_row_in_each_table():
    commands = set(command_paths())
    assert commands == set(BAD_INPUT) == set(FAULT)


@pytest.mark.parametrize("path", sorted(command_paths()), ids=" ".join)
def test_every_command_has_json_output(path):
    opts = {o for p in _leaf(path).params for o in getattr(p, "opts", [])}
    assert "--json" in opts


@pytest.mark.parametrize("path", sorted(BAD_INPUT), ids=" ".join)
def test_bad_input_exits_2_with_one_error_line(tmp_path, path):
    res = invoke(BAD_INPUT[path](tmp_path))
    assert res.exit_code == EXIT_BAD_INPUT, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert res.stderr.rstrip().splitlines()[-1].startswith(("error:", "Error:")), res.stderr


@pytest.mark.parametrize("path", sorted(FAULT), ids=" ".join)
def test_internal_error_exits_4_with_one_line_and_the_traceback_in_a_log(tmp_path, monkeypatch, path):
    import importlib

    target, attr, args = FAULT[path]
    module, _, obj = target.partition(":")
    owner = importlib.import_module(module)
    if obj:
        owner = getattr(owner, obj)

    def injected_fault(*a, **k):
        raise ZeroDivisionError("injected fault\nsecond line")

    monkeypatch.setattr(owner, attr, injected_fault)
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    res = invoke(args)
    assert res.exit_code == EXIT_INTERNAL_ERROR, (res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("internal error: ZeroDivisionError: injected fault (a bug in mobile-model; "
                                 "traceback in ")
    log = Path(res.stderr.split("traceback in ", 1)[1].rstrip().rstrip(")"))
    assert log.parent == tmp_path / "cache" / "logs" and log.is_file()
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "injected_fault" in text
    assert "ZeroDivisionError: injected fault" in text


def test_the_log_falls_back_to_the_temporary_directory(tmp_path, monkeypatch):
    import pipeline.data

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(blocked))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(pipeline.data, "describe_datasets", lambda: 1 / 0)
    res = invoke(["datasets"])
    assert res.exit_code == EXIT_INTERNAL_ERROR
    log = Path(res.stderr.split("traceback in ", 1)[1].rstrip().rstrip(")"))
    assert log.parent == tmp_path and "ZeroDivisionError" in log.read_text()


@pytest.mark.parametrize("args", [["datasets", "--json"], ["models", "--json"], ["devices", "--json"],
                                  ["inspect", SEED_INT8, "--json"], ["compare", BASELINE, BASELINE, "--json"]],
                         ids=lambda a: a[0] if isinstance(a, list) else None)
def test_success_exits_0_with_json_on_stdout(args):
    res = invoke(args)
    assert res.exit_code == EXIT_OK, res.stderr
    json.loads(res.stdout)  # the whole of stdout is one JSON document
    assert res.stderr == ""


def test_datasets_json_names_every_registered_data_set():
    from pipeline.data import DATASETS

    rows = json.loads(invoke(["datasets", "--json"]).stdout)
    assert [r["name"] for r in rows] == list(DATASETS.names())
    assert all(r["description"] for r in rows)


def test_a_regression_exits_1(tmp_path):
    worse = json.loads(BASELINE.read_text())
    for figures in worse["variants"].values():
        figures["top1"] -= 10.0
    current = tmp_path / "worse.json"
    current.write_text(json.dumps(worse))
    res = invoke(["compare", BASELINE, current, "--json"])
    assert res.exit_code == EXIT_GATE_FAILED
    assert json.loads(res.stdout)["ok"] is False
    assert res.stderr.startswith("error: ") and "regression(s) against" in res.stderr


def test_baseline_json_describes_the_written_file(tmp_path):
    from tests.helpers.summaries import make_summary, write_build

    build = write_build(tmp_path / "b", make_summary())
    out = tmp_path / "base.json"
    res = invoke(["baseline", build, out, "--json"])
    assert res.exit_code == EXIT_OK, res.stderr
    info = json.loads(res.stdout)
    assert info["path"] == str(out) and out.is_file()
    assert info["variants"] == list(json.loads(out.read_text())["variants"])


def test_device_runtime_unavailable_exits_3(tmp_path, monkeypatch):
    """No ARM runtime in the cache and no root to build one: exit 3, one line saying what to do."""
    import os

    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    res = invoke(["device", "run", "--device", "pixel4", SEED_INT8, "--random", "1", "-q"])
    assert res.exit_code == EXIT_DEVICE_UNAVAILABLE, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: building the ARM runtime needs root") and res.stderr.count("\n") == 1


def test_a_model_the_device_runtime_does_not_load_is_a_result_exit_0(monkeypatch):
    """The guest runtime dies on the model: `device run` reports it (loaded false) and exits 0."""
    from pipeline.devices import check, runtime
    from pipeline.devices.runner import DeviceRun

    crash = DeviceRun(command=("qemu-aarch64", "guest_runner.py"), env=(("HOME", "/"),), returncode=-11,
                      stdout="", stderr="qemu: uncaught target signal 11 (Segmentation fault) - core dumped\n",
                      result_text=None, counts_text=None, outputs=None, wall_s=0.5)
    monkeypatch.setattr(runtime, "ensure_runtime", lambda **k: object())
    monkeypatch.setattr(check, "run_on_device", lambda *a, **k: crash)
    res = invoke(["device", "run", "--device", "camera-a53", SEED_INT8, "--random", "2", "--json"])
    assert res.exit_code == EXIT_OK, (res.stdout, res.stderr)
    data = json.loads(res.stdout)
    assert data["loaded"] is False and "SIGSEGV" in data["load_error"]
    text = invoke(["device", "run", "--device", "camera-a53", SEED_INT8, "--random", "2", "-q"])
    assert text.exit_code == EXIT_OK and "NOT LOADABLE" in text.stdout


@pytest.mark.integration
def test_report_json_lists_what_it_wrote(smoke_build):
    res = invoke(["report", smoke_build.root, "--json"])
    assert res.exit_code == EXIT_OK, res.stderr
    paths = [Path(p) for p in json.loads(res.stdout)]
    assert res.stderr == ""
    assert {p.name for p in paths} >= {"report.md", "report.html"} and all(p.exists() for p in paths)


def test_the_readme_table_lists_every_command_and_the_codes():
    text = (REPO / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = [ln.split("|")[1].strip().strip("`") for ln in section.splitlines() if ln.startswith("| `")]
    assert sorted(rows) == sorted(" ".join(p) for p in command_paths())
    codes = {ln.split("|")[1].strip() for ln in section.splitlines() if ln.startswith("| ") and "|" in ln[2:]}
    assert {str(c) for c in (EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_DEVICE_UNAVAILABLE,
                             EXIT_INTERNAL_ERROR)} <= codes

"""Builds whose ``devices.targets`` name a real device beside a profile (``rpi4@ssh://...``).

The "board" is this machine behind a real sshd on 127.0.0.1 (tests/test_remote_ssh.py's),
its python the pipeline's own. One tiny build (a one-epoch block-level model, float32
only, 8 test images) runs the emulated profile and the real measurement; the gate, the
report and the errors are checked on it, the later builds reusing its cached stages.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import EXIT_DEVICE_UNAVAILABLE, EXIT_GATE_FAILED, ConfigError
from pipeline.recipe.schema import Recipe
from pipeline.recipe.stages import DevicesConfig, RemoteConfig
from pipeline.recipe.targets import AdbTarget, SshTarget, parse_entry
from tests.helpers.stages import make_recipe, quiet
from tests.test_remote_ssh import BOARD_PYTHON, start_board

PROFILE = "rpi4"


# -- the entries, parsed ---------------------------------------------------------------

@pytest.mark.parametrize("text, profile, target", [
    ("rpi4", "rpi4", None),
    ("rpi4@ssh://pi@camera-7", "rpi4", SshTarget("camera-7", 22, "pi")),
    ("rpi4@ssh://root@127.0.0.1:2222", "rpi4", SshTarget("127.0.0.1", 2222, "root")),
    ("pixel4@adb://R58M123", "pixel4", AdbTarget("R58M123")),
])
def test_an_entry_names_a_profile_and_perhaps_a_real_device(text, profile, target):
    e = parse_entry(text)
    assert (e.text, e.profile, e.target) == (text, profile, target)


@pytest.mark.parametrize("text, words", [
    ("ssh://pi@camera-7", "named after the emulated profile"),
    ("@ssh://pi@camera-7", "PROFILE@ssh://[USER@]HOST[:PORT]"),
    ("rpi4@http://camera-7", "expected ssh://[USER@]HOST[:PORT] or adb://SERIAL"),
    ("rpi4@ssh://pi@camera-7:70000", "port 70000 is outside 1-65535"),
])
def test_a_malformed_entry_is_one_clear_error(text, words):
    with pytest.raises(ConfigError, match="recipe.devices.targets") as e:
        DevicesConfig(targets=(text,)).validate("recipe.devices")
    assert words in str(e.value)


def test_remote_settings_are_strict_and_need_a_real_device():
    with pytest.raises(ConfigError, match=r"recipe.devices.remote: unknown key 'python'; valid keys: identity, "
                                          r"remote_python, benchmark_model, runs, warmup"):
        Recipe.from_dict({"devices": {"targets": ["rpi4@ssh://pi@b"], "remote": {"python": "python3"}}})
    with pytest.raises(ConfigError, match="recipe.devices.remote.runs: expected a positive integer, got 0"):
        DevicesConfig(targets=("rpi4@ssh://pi@b",), remote=RemoteConfig(runs=0)).validate("recipe.devices")
    with pytest.raises(ConfigError, match="applies to real devices, and no targets entry names one"):
        DevicesConfig(targets=("rpi4",), remote=RemoteConfig(runs=3)).validate("recipe.devices")
    with pytest.raises(ConfigError, match="recipe.devices.remote.warmup: an adb target's benchmark_model"):
        DevicesConfig(targets=("pixel4@adb://R58",), remote=RemoteConfig(warmup=0)).validate("recipe.devices")
    with pytest.raises(ConfigError, match="duplicate entries"):
        DevicesConfig(targets=("rpi4", "rpi4")).validate("recipe.devices")


# -- a build measured on the board --------------------------------------------------------

def tiny_recipe(entry: str, key: Path, python: str = BOARD_PYTHON, budget_ms=None) -> Recipe:
    r = make_recipe("mbconv", prune=False)
    return dataclasses.replace(
        r, name="realbuild", deploy_variant="float32",
        qat=dataclasses.replace(r.qat, enabled=False),
        convert=dataclasses.replace(r.convert, variants=("float32",), validation_samples=8),
        devices=DevicesConfig(targets=(entry,), samples=8, workers=1,
                              remote=RemoteConfig(identity=str(key), remote_python=python, runs=5, warmup=1)),
        budgets={} if budget_ms is None else {"max_latency_ms": {entry: budget_ms}}).validate()


@pytest.fixture(scope="module")
def measured_build(tmp_path_factory):
    """The board, and a build measured on it with a latency budget far above the measurement."""
    from pipeline.build import build

    root = tmp_path_factory.mktemp("realbuild")
    sshd, key = start_board(root)
    entry = f"{PROFILE}@ssh://{os.environ.get('USER', 'root')}@127.0.0.1:{sshd.port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MOBILE_MODEL_REMOTE_CACHE", str(root / "cache"))
            result = build(tiny_recipe(entry, key, budget_ms=1e4), out=root / "build", log=quiet)
            yield {"root": root, "key": key, "entry": entry, "result": result}
    finally:
        sshd.stop()


def cli_build(recipe: Recipe, path: Path, out: Path):
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return CliRunner(mix_stderr=False).invoke(main, ["build", str(path), "--out", str(out), "-q"])


@pytest.mark.device
@pytest.mark.integration
def test_the_build_records_the_measured_latency_beside_the_estimate(measured_build):
    s = measured_build["result"].summary
    entry = measured_build["entry"]
    assert list(s.devices) == [entry]
    r = s.devices[entry]["float32"]
    m = r.measured
    assert r.loaded and r.latency_ms is not None  # the emulated profile's estimate
    assert m is not None and m.loaded and m.target == entry.split("@", 1)[1]
    assert m.mean_ms > 0 and m.std_ms >= 0 and m.min_ms <= m.mean_ms <= m.max_ms and m.runs == 5
    assert m.outputs_agree is True and m.top1 is not None
    (b,) = s.budgets
    assert b.ok and b.measured == m.mean_ms and b.basis == f"measured on {m.target}"
    root = measured_build["result"].root
    # Measured and estimated side by side in the report, and in the summary on disk.
    report = (root / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| device | variant | loads"))
    assert "| est. latency ms | measured ms |" in header
    assert f"{m.mean_ms:.2f} ± {m.std_ms:.2f}" in report and f"(measured on {m.target})" in report
    on_disk = json.loads((root / "summary.json").read_text())
    assert on_disk["devices"][entry]["float32"]["measured"]["mean_ms"] == m.mean_ms
    card = (root / "bundle" / "MODEL_CARD.md").read_text()
    assert "| est. latency ms | measured ms |" in card and f"{m.target}: 5 runs" in card
    stages = json.loads((root / "manifest.json").read_text())["stages"]
    assert f"measure/{entry}/float32" in stages and f"device/{PROFILE}/float32" in stages
    # The manifest alone (an unfinished build) gives the same measured figures to compare.
    from pipeline.gate.snapshot import load_snapshot

    (from_manifest,), (from_summary,) = (load_snapshot(p).devices[entry].values()
                                         for p in (root / "manifest.json", root))
    assert from_manifest.measured_ms == from_summary.measured_ms == m.mean_ms
    assert from_manifest.measured_target == from_summary.measured_target == m.target


@pytest.mark.device
@pytest.mark.integration
def test_a_budget_below_the_measurement_fails_the_gate_naming_it(measured_build, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_MODEL_REMOTE_CACHE", str(measured_build["root"] / "cache"))
    out = tmp_path / "build"
    shutil.copytree(measured_build["result"].root, out)
    entry = measured_build["entry"]
    res = cli_build(tiny_recipe(entry, measured_build["key"], budget_ms=1e-6), tmp_path / "r.yaml", out)
    assert res.exit_code == EXIT_GATE_FAILED, res.stderr
    assert f"max_latency_ms[{entry}]" in res.stderr
    assert "MISSED" in res.stdout and "(measured on ssh://" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages_run"] == []  # the measurement was cached with the rest


@pytest.mark.device
@pytest.mark.integration
def test_a_board_that_drops_the_connection_fails_the_build_and_keeps_its_stages(measured_build, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("MOBILE_MODEL_REMOTE_CACHE", str(measured_build["root"] / "cache"))
    out = tmp_path / "build"
    shutil.copytree(measured_build["result"].root, out)
    os.replace(out / "summary.json", out / "summary.old.json")
    # A board python that, when asked to run the guest script, kills its sshd session.
    dying = tmp_path / "dying-python"
    dying.write_text(f"#!/bin/sh\ncase \"$1\" in guest_runner.py) kill -9 $(ps -o ppid= -p $PPID);"
                     f" sleep 5;; esac\nexec {BOARD_PYTHON} \"$@\"\n")
    dying.chmod(0o755)
    before = json.loads((out / "manifest.json").read_text())["stages"]
    entry = measured_build["entry"]
    res = cli_build(tiny_recipe(entry, measured_build["key"], python=str(dying)), tmp_path / "r.yaml", out)
    assert res.exit_code == EXIT_DEVICE_UNAVAILABLE
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "lost during the run" in lines[0], res.stderr
    after = json.loads((out / "manifest.json").read_text())["stages"]
    assert {k: v["key"] for k, v in after.items()} == {k: v["key"] for k, v in before.items()}
    assert not (out / "summary.json").exists()  # no figures of a build that did not finish
    assert not [p for p in (out / "devices").rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


# -- compare: measured against measured where both sides have it ------------------------------

def snapshot(latency_ms, measured_ms=None, std_ms=None, target="ssh://pi@camera-7"):
    from pipeline.gate.snapshot import DeviceFigures, HostFigures, Snapshot

    dev = DeviceFigures(loaded=True, latency_ms=latency_ms, measured_ms=measured_ms, measured_std_ms=std_ms,
                        measured_runs=None if measured_ms is None else 50,
                        measured_target=None if measured_ms is None else target)
    return Snapshot("s", "build", "realbuild", {"float32": HostFigures(top1=50.0)},
                    {f"rpi4@{target}": {"float32": dev}})


def latency_check(base, cur):
    from pipeline.gate.compare import compare_snapshots

    (c,) = [c for c in compare_snapshots(base, cur).checks if c.metric == "latency_ms"]
    return c


@pytest.mark.parametrize("cur_ms, cur_std, status", [
    (10.9, 0.1, "ok"),           # within 10% of 10 ms
    (11.5, 0.1, "regression"),   # beyond 10% and 2 x std (0.14 ms)
    (11.5, 0.8, "ok"),           # noisy runs: 2 x hypot(0.1, 0.8) = 1.6 ms allowed
    (8.5, 0.1, "improved"),
])
def test_compare_uses_the_measured_latency_with_a_noise_allowance(cur_ms, cur_std, status):
    # The estimates are equal: only the measured figure decides.
    c = latency_check(snapshot(1.0, 10.0, 0.1), snapshot(1.0, cur_ms, cur_std))
    assert c.status == status and c.label == "measured latency ms"
    assert c.message.startswith("measured on ssh://pi@camera-7: ") and "x std" in c.message


def test_the_markdown_marks_a_measured_latency():
    from pipeline.gate.compare import compare_snapshots
    from pipeline.gate.junit import format_markdown

    text = format_markdown(compare_snapshots(snapshot(1.0, 10.0, 0.1), snapshot(1.0, 11.5, 0.1)))
    assert "| latency ms |" in text and "10.000 -> 11.500 (+15.00%) **REGRESSED** (measured) |" in text


def test_compare_falls_back_to_the_estimates_and_says_so():
    c = latency_check(snapshot(1.0, 10.0, 0.1), snapshot(1.5))  # measured in the baseline only
    assert c.status == "regression" and c.label == "est. latency ms"
    assert c.message.startswith("estimated: ") and c.message.endswith("(measured only in the baseline)")


def test_a_baseline_keeps_the_measured_figures(tmp_path):
    from pipeline.gate.baseline import baseline_dict
    from pipeline.gate.snapshot import load_snapshot

    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline_dict(snapshot(1.0, 10.0, 0.1))))
    (dev,) = load_snapshot(path).devices.values()
    assert dev["float32"].measured_ms == 10.0 and dev["float32"].measured_std_ms == 0.1

"""Regression gates: ``compare`` over tiny synthetic builds (no training, no devices)."""

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.errors import ConfigError, UnusableInputError
from pipeline.gate.baseline import write_baseline
from pipeline.gate.compare import compare_paths
from pipeline.gate.junit import format_junit
from pipeline.gate.snapshot import BASELINE_FORMAT, load_snapshot
from pipeline.gate.thresholds import DEFAULT_THRESHOLDS, METRICS, THRESHOLDS, validate_thresholds
from pipeline.summary import UNVALIDATED_REASON, LatencyEstimate, load_summary
from pipeline.cli.gate import baseline as baseline_cmd, compare as compare_cmd
from tests.helpers.summaries import (DEVICES, LATENCY_MODEL, PROVENANCE, VARIANTS, device_rec, make_summary,
                                   summary_with_top1, write_build)

REPO = Path(__file__).resolve().parent.parent
def run(*args):
    return CliRunner().invoke(compare_cmd, [str(a) for a in args])


def test_two_identical_builds_compare_equal(tmp_path):
    a = write_build(tmp_path / "a", make_summary())
    b = write_build(tmp_path / "b", make_summary())
    res = run(a, b, "--junit", tmp_path / "j.xml")
    assert res.exit_code == 0, res.output
    assert "PASS: no regression" in res.output
    comp = compare_paths(a, b)
    instr = [c for c in comp.checks if c.metric == "instructions_per_inference"]
    assert len(instr) == len(DEVICES) * len(VARIANTS)
    assert all(c.delta == 0 and c.status == "ok" for c in instr)
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(comp.checks)


def test_wider_model_regresses_instructions_on_every_device(tmp_path):
    a = write_build(tmp_path / "a", make_summary())
    b = write_build(tmp_path / "b", make_summary(width=1.4),
                    recipe={"name": "default", "model": {"family": "mobilenet_v2", "alpha": 0.5}})
    junit = tmp_path / "out" / "junit.xml"
    res = run(a, b, "--junit", junit, "--markdown", tmp_path / "table.md")
    assert res.exit_code == 1
    assert "FAIL:" in res.output and "**REGRESSED**" in res.output
    assert "error: " in res.output and "regression(s) against" in res.output
    assert "model.alpha 0.35 -> 0.5" in res.output
    comp = compare_paths(a, b)
    instr = [c for c in comp.checks if c.metric == "instructions_per_inference"]
    assert {(c.where, c.variant) for c in instr if c.status == "regression"} == \
        {(d, v) for d in DEVICES for v in VARIANTS}
    root = ET.parse(junit).getroot()
    failed = [tc for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert {tc.get("classname") for tc in failed if tc.get("name") == "instructions_per_inference"} == \
        {f"mobile-model.compare.{d}.{v}" for d in DEVICES for v in VARIANTS}
    assert root.find("testsuite").get("failures") == str(len(comp.regressions))
    assert (tmp_path / "table.md").read_text() in res.output


@pytest.mark.parametrize("factor, options, status", [
    (1.0005, [], "ok"),                                      # 0.05% < default 0.1%
    (1.002, [], "regression"),                               # 0.2% > 0.1%
    (1.002, ["--max-instr-increase", "0.01"], "ok"),         # relative option
    (1.002, ["--max-instr-increase-abs", "10000"], "ok"),    # absolute option (+8000 on 4M)
    (0.99, [], "improved"),
])
def test_instruction_thresholds(tmp_path, factor, options, status):
    cur = make_summary()
    cur["devices"]["pixel4"]["float32"]["instructions_per_inference"] = int(4_000_000 * factor)
    a = write_build(tmp_path / "a", make_summary())
    b = write_build(tmp_path / "b", cur)
    res = run(a, b, *options)
    assert res.exit_code == (1 if status == "regression" else 0), res.output
    opts = {THRESHOLDS_BY_OPTION[options[0]]: float(options[1])} if options else {}
    check = next(c for c in compare_paths(a, b, opts).checks
                 if (c.where, c.variant, c.metric) == ("pixel4", "float32", "instructions_per_inference"))
    assert check.status == status


THRESHOLDS_BY_OPTION = {t.option: name for name, t in THRESHOLDS.items()}


@pytest.mark.parametrize("top1, status", [(90.6, "ok"), (89.9, "ok"), (89.4, "regression"), (92.0, "improved")])
def test_top1_drop_is_in_points(tmp_path, top1, status):
    cur = make_summary()
    cur["variants"]["int8-qat"]["top1"] = top1  # baseline 90.5, default allowance 1.0 point
    comp = compare_paths(write_build(tmp_path / "a", make_summary()), write_build(tmp_path / "b", cur))
    check = next(c for c in comp.checks if (c.where, c.variant, c.metric) == ("host", "int8-qat", "top1"))
    assert check.status == status


@pytest.mark.parametrize("top1, options, status", [
    (88.0, [], "ok"),                                   # baseline 90.0, default allowance 2 points
    (87.0, [], "regression"),
    (87.0, ["--max-device-top1-drop", "5"], "ok"),
])
def test_device_top1_has_its_own_allowance(tmp_path, top1, options, status):
    cur = make_summary()
    cur["devices"]["pixel4"]["int8-qat"]["top1"] = top1
    a, b = write_build(tmp_path / "a", make_summary()), write_build(tmp_path / "b", cur)
    res = run(a, b, *options)
    assert res.exit_code == (1 if status == "regression" else 0), res.output
    if status == "regression":
        assert "- pixel4 / int8-qat: top-1 %: 90.00 -> 87.00 % (-3.00 points; allowed drop <= 2 points)" in res.output


def test_size_uses_the_larger_of_relative_and_absolute(tmp_path):
    cur = make_summary()
    cur["variants"]["int8-qat"]["size_bytes"] += 1024  # +0.85%
    a, b = write_build(tmp_path / "a", make_summary()), write_build(tmp_path / "b", cur)
    assert run(a, b).exit_code == 1
    assert run(a, b, "--max-size-increase-bytes", "1024").exit_code == 0
    assert run(a, b, "--max-size-increase", "0.01").exit_code == 0


def test_a_variant_that_no_longer_loads_is_a_regression(tmp_path):
    cur = make_summary()
    cur["devices"]["camera-a53"]["int8-qat"] = device_rec(0, loaded=False, op="FULLY_CONNECTED",
                                                          runtime="tflite-runtime 2.14.0")
    comp = compare_paths(write_build(tmp_path / "a", make_summary()), write_build(tmp_path / "b", cur))
    [reg] = comp.regressions
    assert (reg.where, reg.variant, reg.metric) == ("camera-a53", "int8-qat", "loads")
    assert reg.message == "no longer loads on tflite-runtime 2.14.0: FULLY_CONNECTED v12"


def test_missing_results_fail_and_new_ones_do_not(tmp_path):
    cur = make_summary()
    del cur["devices"]["camera-a53"]
    cur["variants"]["float16"] = copy.deepcopy(cur["variants"]["float32"])
    comp = compare_paths(write_build(tmp_path / "a", make_summary()), write_build(tmp_path / "b", cur))
    assert [(c.where, c.status) for c in comp.regressions] == [("camera-a53", "missing")]
    assert any(c.variant == "float16" and c.status == "new" for c in comp.checks)
    no_dev = make_summary()
    no_dev["devices"] = {}
    comp = compare_paths(write_build(tmp_path / "c", make_summary()), write_build(tmp_path / "d", no_dev))
    assert len(comp.regressions) == len(DEVICES)
    assert "--no-devices" in comp.regressions[0].message


def test_latency_is_compared_only_when_both_have_it(tmp_path):
    cur = make_summary()
    cur["devices"]["pixel4"]["int8-qat"]["latency_ms"] = None
    comp = compare_paths(write_build(tmp_path / "a", make_summary()), write_build(tmp_path / "b", cur))
    lat = {(c.where, c.variant): c.status for c in comp.checks if c.metric == "latency_ms"}
    assert lat[("pixel4", "int8-qat")] == "skipped"
    assert lat[("pixel4", "float32")] == "ok"
    assert lat[("camera-a53", "float32")] == "skipped"  # neither side estimates it
    assert comp.ok


def test_a_changed_latency_model_is_noted(tmp_path):
    cur = make_summary()
    for rec in cur["devices"]["pixel4"].values():
        rec["latency_model"] = "llvm-mca neoverse-n1 + memory"
    a, b = write_build(tmp_path / "a", make_summary()), write_build(tmp_path / "b", cur)
    note = f"pixel4: latency model changed: {LATENCY_MODEL} -> llvm-mca neoverse-n1 + memory"
    assert note in compare_paths(a, b).notes
    assert f"- {note}" in run(a, b).output
    assert not [n for n in compare_paths(a, a).notes if "latency" in n]


@pytest.mark.parametrize("baseline, current, note", [
    (True, True, None),
    (False, False, "pixel4/int8-qat"),
    (True, False, "pixel4/int8-qat (current only)"),
    (False, True, "pixel4/int8-qat (baseline only)"),
])
def test_unvalidated_latencies_are_noted(tmp_path, baseline, current, note):
    sides = []
    for name, validated in (("a", baseline), ("b", current)):
        summary = make_summary()
        summary["devices"]["pixel4"]["int8-qat"]["latency_validated"] = validated
        sides.append(write_build(tmp_path / name, summary))
    notes = [n for n in compare_paths(*sides).notes if "unvalidated" in n]
    expected = [f"unvalidated latency estimate(s) ({UNVALIDATED_REASON}): {note}"] if note else []
    assert notes == expected


def test_every_metric_is_checked(tmp_path):
    comp = compare_paths(write_build(tmp_path / "a", make_summary()), write_build(tmp_path / "b", make_summary()))
    seen = {(c.where == "host", c.metric) for c in comp.checks}
    for m in METRICS:
        assert (m.scope == "host", m.key) in seen, m


def test_every_threshold_has_an_option():
    res = CliRunner().invoke(compare_cmd, ["--help"])
    assert res.exit_code == 0
    for t in THRESHOLDS.values():
        assert t.option in res.output
    from pipeline.gate.thresholds import MEASURED_LATENCY

    metrics = (*METRICS, MEASURED_LATENCY)
    used = {m.rel for m in metrics} | {m.abs_ for m in metrics} | {"measured_noise_sigmas"}
    assert set(THRESHOLDS) == used - {None}


# -- inputs ---------------------------------------------------------------------


def write_manifest(root: Path, summary) -> Path:
    """A manifest holding the same figures as ``summary`` in stage records."""
    stages = {"train": {"metrics": {"test_top1": summary["float_top1"]}}}
    for v, m in summary["variants"].items():
        stages[f"convert/{v}"] = {"outputs": {"tflite": {"path": f"tflite/{v}.tflite", "sha256": v * 4}},
                                  "versions": {"ai-edge-litert": "2.3.0"}}
        stages[f"evaluate/{v}"] = {"metrics": m}
    for d, per in summary["devices"].items():
        for v, m in per.items():
            stages[f"device/{d}/{v}"] = {"metrics": m}
    recipe = {"name": "default", "deploy_variant": "int8-qat", "convert": {"variants": list(summary["variants"])},
              "devices": {"targets": list(summary["devices"])}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"recipe": recipe, "stages": stages}))
    return root / "manifest.json"


def test_manifest_summary_and_directory_read_the_same(tmp_path):
    summary = make_summary()
    build = write_build(tmp_path / "b", summary)
    man = write_manifest(tmp_path / "m", summary)
    for a, b in ((build, man), (build / "summary.json", man), (man, build)):
        comp = compare_paths(a, b)
        assert comp.ok and not comp.improvements
        assert sum(c.status == "ok" for c in comp.checks) == len([c for c in comp.checks if c.status != "skipped"])
    snap = load_snapshot(man)
    assert snap.kind == "manifest" and snap.float_top1 == 91.2
    assert snap.variants["int8-qat"].sha256 == "int8-qat" * 4
    # a build directory with only a manifest (e.g. interrupted before summary.json) is read too
    assert load_snapshot(tmp_path / "m").kind == "manifest"


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "BASELINE {p}/nope: no such file or directory"),
    (lambda p: (p / "empty").mkdir() or p / "empty",
     "BASELINE {p}/empty: not a build directory (no summary.json or manifest.json in it)"),
    (lambda p: (p / "x.json").write_text("{oops") and p / "x.json",
     "BASELINE {p}/x.json: not valid JSON (Expecting property name enclosed in double quotes at line 1)"),
    (lambda p: (p / "x.json").write_text("[1, 2]") and p / "x.json",
     "BASELINE {p}/x.json: expected a JSON object, got list"),
    (lambda p: (p / "x.json").write_text('{"a": 1}') and p / "x.json",
     "BASELINE {p}/x.json: not a mobile-model summary, manifest or baseline (expected a 'variants', 'stages' "
     "or 'format' key; found a)"),
    (lambda p: (p / "x.json").write_text(json.dumps({"format": BASELINE_FORMAT, "version": 99})) and p / "x.json",
     "BASELINE {p}/x.json: baseline version 99 is not supported (this mobile-model reads version 1); "
     "write it again with `mobile-model baseline`"),
    (lambda p: (p / "x.json").write_text(json.dumps(summary_with_top1("high"))) and p / "x.json",
     "BASELINE {p}/x.json: summary.variants.int8-qat.top1: expected a number, got 'high'"),
    (lambda p: (p / "x.json").write_text(json.dumps({"variants": {"int8": {"top1": 90.0}}})) and p / "x.json",
     "BASELINE {p}/x.json: summary: missing key 'recipe'"),
    (lambda p: (p / "x.json").write_text(json.dumps({"variants": {}, "schema_version": 2})) and p / "x.json",
     "BASELINE {p}/x.json: summary: schema_version 2 is not the supported 1 (rebuild to refresh it)"),
    (lambda p: (p / "x.json").write_text(json.dumps({"format": BASELINE_FORMAT, "version": 1, "variants": {
        "int8": {"top1": "high"}}})) and p / "x.json",
     "BASELINE {p}/x.json: variants.int8.top1: expected a number, got 'high'"),
    (lambda p: (p / "x.json").write_text(json.dumps({"stages": {}})) and p / "x.json",
     "BASELINE {p}/x.json: the manifest records no evaluated variant (an unfinished build, or not a "
     "mobile-model manifest)"),
])
def test_unusable_input_exits_2_with_one_line(tmp_path, make, message):
    bad = make(tmp_path)
    good = write_build(tmp_path / "good", make_summary())
    res = run(bad, good)
    assert res.exit_code == 2
    assert res.output == f"error: {message.format(p=tmp_path)}\n"
    assert "Traceback" not in res.output


def test_unknown_threshold_lists_valid_ones():
    with pytest.raises(UnusableInputError) as exc:
        validate_thresholds({"max_instr": 0.1}, "baseline thresholds")
    assert str(exc.value) == f"baseline thresholds: unknown threshold 'max_instr'; valid: {', '.join(THRESHOLDS)}"
    with pytest.raises(UnusableInputError, match=r"max_top1_drop: expected a number >= 0 \(points\), got -1"):
        validate_thresholds({"max_top1_drop": -1}, "x")
    with pytest.raises(ConfigError, match="baseline thresholds: expected a mapping"):
        validate_thresholds([1], "baseline thresholds", error=ConfigError)


def test_negative_option_is_exit_2(tmp_path):
    a = write_build(tmp_path / "a", make_summary())
    res = run(a, a, "--max-top1-drop", "-1")
    assert res.exit_code == 2 and res.output.startswith("error: options.max_top1_drop: expected a number >= 0")


# -- baselines and threshold precedence -------------------------------------------


def test_baseline_round_trip_is_reproducible(tmp_path):
    build = write_build(tmp_path / "b", make_summary())
    out = tmp_path / "baselines" / "default.json"
    res = CliRunner().invoke(baseline_cmd, [str(build), str(out)])
    assert res.exit_code == 0, res.output
    assert "2 variant(s), 2 device(s), 4 device x variant result(s)" in res.output
    first = out.read_text()
    data = json.loads(first)
    assert data["format"] == BASELINE_FORMAT and data["version"] == 1
    assert data["recipe"]["model"]["alpha"] == 0.35
    assert set(data["variants"]["int8-qat"]) == {"top1", "size_bytes", "gzip_bytes", "sha256"}
    pixel4 = data["devices"]["pixel4"]["int8-qat"]
    assert [pixel4[k] for k in ("latency_ms",) + PROVENANCE] == [0.6, True, LATENCY_MODEL, 0.6 * 2.42e6, 1.5]
    comp = compare_paths(out, build)
    assert comp.ok and all(c.delta in (0, None) for c in comp.checks)
    write_baseline(build, out)
    assert out.read_text() == first


def test_baseline_keeps_its_thresholds_and_they_apply(tmp_path):
    build = write_build(tmp_path / "b", make_summary())
    out = tmp_path / "default.json"
    write_baseline(build, out)
    data = json.loads(out.read_text())
    data["thresholds"] = {"max_instr_increase": 0.05}
    out.write_text(json.dumps(data))
    write_baseline(build, out)  # accepting new figures keeps the reviewed thresholds
    assert json.loads(out.read_text())["thresholds"] == {"max_instr_increase": 0.05}
    cur = make_summary(width=1.03)
    comp = compare_paths(out, write_build(tmp_path / "c", cur))
    assert comp.thresholds["max_instr_increase"] == 0.05
    assert not [c for c in comp.regressions if c.metric == "instructions_per_inference"]


def baseline_with_thresholds(build: Path, out: Path, thresholds) -> Path:
    """A baseline of ``build`` whose file sets ``thresholds``."""
    write_baseline(build, out)
    data = json.loads(out.read_text())
    data["thresholds"] = thresholds
    out.write_text(json.dumps(data))
    return out


def test_threshold_precedence(tmp_path):
    cur = write_build(tmp_path / "b", make_summary())
    base = baseline_with_thresholds(cur, tmp_path / "baseline.json", {"max_instr_increase": 0.02,
                                                                      "max_top1_drop": 3.0})
    th = compare_paths(base, cur).thresholds
    assert th["max_instr_increase"] == 0.02 and th["max_top1_drop"] == 3.0
    assert th["max_gzip_increase"] == DEFAULT_THRESHOLDS["max_gzip_increase"]
    th = compare_paths(base, cur, {"max_instr_increase": 0.0, "max_top1_drop": None}).thresholds
    assert th["max_instr_increase"] == 0.0 and th["max_top1_drop"] == 3.0


def test_bad_baseline_thresholds_are_unusable(tmp_path):
    cur = write_build(tmp_path / "b", make_summary())
    base = baseline_with_thresholds(cur, tmp_path / "baseline.json", {"max_speed": 1})
    res = run(base, cur)
    assert res.exit_code == 2 and "unknown threshold 'max_speed'" in res.output


def test_junit_is_well_formed_with_odd_characters(tmp_path):
    cur = make_summary()
    cur["devices"]["pixel4"]["int8-qat"] = device_rec(0, loaded=False, op="A<&>B")
    comp = compare_paths(write_build(tmp_path / "a", make_summary()), write_build(tmp_path / "b", cur))
    root = ET.fromstring(format_junit(comp))
    msgs = [f.get("message") for f in root.iter("failure")]
    assert any("A<&>B" in m for m in msgs)
    assert len(list(root.iter("testcase"))) == len(comp.checks)


def test_the_committed_baseline_loads_and_gates(tmp_path):
    """``mobile-model compare baselines/default.json BUILD`` reads the committed file."""
    committed = REPO / "baselines" / "default.json"
    snap = load_snapshot(committed, "BASELINE")
    assert snap.kind == "baseline" and snap.variants and snap.devices
    assert all(isinstance(r.loaded, bool) for per in snap.devices.values() for r in per.values())
    res = run(committed, committed)
    assert res.exit_code == 0, res.output
    assert "PASS: no regression" in res.output


def strip_provenance(data):
    """A summary or baseline as written before the latency's provenance was recorded."""
    for per in data["devices"].values():
        for rec in per.values():
            for key in PROVENANCE:
                del rec[key]


def test_a_baseline_from_before_latency_provenance_still_compares(tmp_path):
    build = write_build(tmp_path / "b", make_summary())
    out = tmp_path / "old.json"
    write_baseline(build, out)
    data = json.loads(out.read_text())
    strip_provenance(data)
    out.write_text(json.dumps(data))
    assert load_snapshot(out).devices["pixel4"]["int8-qat"].latency_model is None
    comp = compare_paths(out, build)
    assert comp.ok and all(c.delta in (0, None) for c in comp.checks)
    assert f"pixel4: latency model changed: (not recorded) -> {LATENCY_MODEL}" in comp.notes
    res = run(out, build)
    assert res.exit_code == 0 and "PASS: no regression" in res.output


def test_a_summary_from_before_schema_versions_still_compares(tmp_path):
    """summary.json written before it had a schema version: same figures, no saved predictions and
    no latency provenance."""
    build = write_build(tmp_path / "new", make_summary())
    old = tmp_path / "old"
    old.mkdir()
    data = json.loads((build / "summary.json").read_text())
    del data["schema_version"]
    for v in data["variants"].values():
        del v["predictions"]
    strip_provenance(data)  # nor the latency's provenance
    (old / "summary.json").write_text(json.dumps(data))
    assert load_summary(old).devices["pixel4"]["int8-qat"].latency == LatencyEstimate(0.6)
    comp = compare_paths(old, build)
    assert comp.ok and all(c.delta in (0, None) for c in comp.checks)
    assert load_summary(old).variants["int8-qat"].predictions == ""

"""Tests of the latency model: the formula, fitting and cross-validation, parameter data, CLI.

Unit tests run anywhere (no TensorFlow, no qemu, no LLVM). The ``device`` test builds a
tiny MobileNetV2, runs it on two emulated cores and prices it with llvm-mca; the full
calibration is never run here (``mobile-model calibrate``).
"""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import yaml

from pipeline.devices.profiles import PROFILE_DIR, get_device
from pipeline.errors import ConfigError
from pipeline.latency import calibration_report as report
from pipeline.latency import calibration as cal
from pipeline.latency import mca
from pipeline.latency import params as lp
from pipeline.latency import published as pub
from pipeline.latency import reference as ref
from pipeline.latency.calibrate import write_calibration
from pipeline.latency.estimate import attach_latency, estimate_model, numeric_format
from pipeline.latency.model import MODEL_VERSION, PARAM_KEYS, Device, LatencyParams, predict
from pipeline.latency.traffic import GraphTraffic, OpBytes, spill

DEFAULT = lp.load_params(lp.DEFAULT_PARAMS)
NUMBERS = {"compute_scale": 1.3, "op_overhead_cycles": 20_000.0, "memory_scale": 2.0}
PHONE = Device(cores=4, clock_1t_ghz=2.8, clock_ghz=2.4, cache_kb=2048, dram_gbps=30.0)


@pytest.fixture(autouse=True)
def _packaged_params(monkeypatch, tmp_path_factory):
    """Every test reads the packaged parameters, whatever the user's cache holds."""
    monkeypatch.delenv(lp.PARAMS_ENV, raising=False)
    monkeypatch.setattr(lp, "user_params_path", lambda: tmp_path_factory.mktemp("cache") / "params.yaml")


def _params(**over) -> dict:
    d = {"model_version": MODEL_VERSION, **NUMBERS, "validated": {"cortex-a73": ["float32", "int8"]},
         "info": {"points": 26}}
    d.update(over)
    return d


# -- the formula ---------------------------------------------------------------------

def test_one_thread_runs_at_the_one_thread_clock():
    b = predict(2.8e6, 0, 0.0, PHONE, NUMBERS)
    assert b.clock_ghz == 2.8 and b.threads == 1
    assert b.ms == pytest.approx(1.3)  # 1.3 x 2.8e6 cycles at 2.8 GHz
    assert (b.overhead_ms, b.memory_ms) == (0.0, 0.0)


def test_parts_add_up_and_each_has_its_unit():
    b = predict(2.8e6, 140, 30e6, PHONE, NUMBERS)
    assert b.overhead_ms == pytest.approx(20_000 * 140 / 2.8e6)
    assert b.memory_ms == pytest.approx(2.0 * 30e6 / 30e9 * 1e3)  # 2 x 1 ms at 30 GB/s
    # Compute and memory overlap: the longer of the two counts, here the memory (2 ms > 1.3 ms).
    assert b.memory_bound and b.ms == pytest.approx(b.overhead_ms + b.memory_ms)
    small = predict(2.8e6, 140, 3e6, PHONE, NUMBERS)
    assert not small.memory_bound and small.ms == pytest.approx(small.overhead_ms + small.compute_ms)


def test_threads_divide_the_compute_and_multiply_the_per_operator_join_up_to_the_cores():
    one = predict(2.4e7, 100, 60e6, PHONE, NUMBERS, threads=1)
    four = predict(2.4e7, 100, 60e6, PHONE, NUMBERS, threads=4)
    eight = predict(2.4e7, 100, 60e6, PHONE, NUMBERS, threads=8)
    assert four.clock_ghz == 2.4 and four.threads == 4 and eight == four
    assert four.compute_ms == pytest.approx(1.3 * 2.4e7 / 4 / 2.4e6)
    assert four.memory_ms == one.memory_ms  # the memory bus is shared
    # Each operator forks and joins the pool: every thread adds its wake-up and barrier.
    assert four.overhead_ms == pytest.approx(4 * one.overhead_ms * 2.8 / 2.4)


def test_a_weak_memory_system_scales_worse_with_threads():
    board = Device(cores=4, clock_1t_ghz=1.5, clock_ghz=1.5, cache_kb=1024, dram_gbps=4.0)
    phone = Device(cores=4, clock_1t_ghz=1.5, clock_ghz=1.5, cache_kb=1024, dram_gbps=30.0)

    def speedup(dev):
        return predict(3e8, 60, 200e6, dev, NUMBERS).ms / predict(3e8, 60, 200e6, dev, NUMBERS, threads=4).ms
    assert speedup(board) < speedup(phone) < 4


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_threads_are_rejected(threads):
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        predict(1e6, 1, 0, PHONE, NUMBERS, threads=threads)


def test_spill_is_the_share_a_cache_cannot_hold():
    assert spill(1000, 2000) == 0.0 and spill(2000, 2000) == 0.0
    assert spill(4000, 1000) == pytest.approx(0.75)


def test_operators_of_constants_only_do_not_count_per_inference():
    # A float16 model dequantizes its weights once, when the graph is prepared.
    g = GraphTraffic((OpBytes("DEQUANTIZE", 0, 4000, 2000), OpBytes("CONV_2D", 3000, 1000, 0),
                      OpBytes("ADD", 200, 100, 0)), weight_bytes=2000)
    assert g.op_count == 2
    assert GraphTraffic.from_dict(g.to_dict()).op_count == 2


def test_dram_bytes_count_spilled_weights_and_activations():
    g = GraphTraffic((OpBytes("CONV_2D", 3000, 1000, 500), OpBytes("ADD", 200, 100, 0)), weight_bytes=500)
    assert g.dram_bytes(10_000) == 0.0  # everything fits
    # cache 1000: weights 500 fit; op 1 working set 4500 spills 1 - 1000/4500 of its 4000 activation bytes.
    assert g.dram_bytes(1000) == pytest.approx(4000 * (1 - 1000 / 4500))
    assert GraphTraffic.from_dict(g.to_dict()) == g
    with pytest.raises(ValueError):
        g.dram_bytes(0)


# -- parameters ------------------------------------------------------------------------

def test_params_round_trip_and_validation_per_core_and_format():
    p = LatencyParams.from_mapping(_params())
    assert LatencyParams.from_mapping(p.to_mapping()) == p
    assert p.is_validated("cortex-a73", "int8") and not p.is_validated("cortex-a76", "float32")
    assert not p.is_validated("cortex-a73", "hybrid")


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown key 'bogus'; valid keys: model_version, " + ", ".join(PARAM_KEYS)),
    ({"memory_scale": None}, "missing key(s) memory_scale"),
    ({"memory_scale": -0.1}, "memory_scale must be a finite number >= 0, got -0.1"),
    ({"compute_scale": 0}, "compute_scale must be > 0, got 0"),
    ({"compute_scale": True}, "compute_scale must be a finite number >= 0, got True"),
    ({"model_version": 1}, f"fitted for latency model version 1, this code reads version {MODEL_VERSION}"),
    ({"memory_scale": 0.5}, "memory_scale must be >= 1 (no bus beats its datasheet peak), got 0.5"),
    ({"validated": {"kryo": ["float64"]}}, "validated.kryo must be a list of float32, int8"),
    ({"validated": ["kryo"]}, "validated must map core names to numeric formats"),
])
def test_params_validation_messages(change, message):
    d = _params()
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    with pytest.raises(ConfigError) as e:
        LatencyParams.from_mapping(d, "params.yaml")
    assert message in str(e.value) and str(e.value).startswith("params.yaml: ")


def test_packaged_parameters_are_plausible_and_validate_only_published_cores():
    assert 0.5 < DEFAULT.compute_scale < 3  # llvm-mca is a steady-state model, not off by 3x
    published = {get_device(p.device).core for p in pub.load_published()}
    assert set(DEFAULT.validated) == published
    int8 = {get_device(p.device).core for p in pub.load_published() if p.variant.startswith("int8")}
    assert {c for c, v in DEFAULT.validated.items() if "int8" in v} == int8
    assert not DEFAULT.is_validated(get_device("camera-a53").core, "float32")


def test_attach_latency_gives_nothing_without_a_run():
    for r in ({"loaded": False}, {"loaded": True, "block_profile": None}):
        attach_latency(r, "pixel4", 1)
        assert all(r[k] is None for k in ("latency_ms", "latency_validated", "latency_model",
                                          "latency_cycles", "latency_ipc"))


def test_numeric_format_of_parsed_models():
    from types import SimpleNamespace as NS

    def model(tensors, ops, buffers):
        return NS(tensors=[NS(index=i, dtype=d, buffer=b) for i, (d, b) in enumerate(tensors)],
                  operators=[NS(opcode=o, inputs=ins) for o, ins in ops], buffers=buffers)
    float_ = model([("float32", 0), ("float32", 1)], [("CONV_2D", (0, 1))], [b"", b"w"])
    int8 = model([("int8", 0), ("int8", 1)], [("CONV_2D", (0, 1))], [b"", b"w"])
    hybrid = model([("float32", 0), ("int8", 1)], [("CONV_2D", (0, 1))], [b"", b"w"])
    fp16 = model([("float32", 0), ("float16", 1), ("float32", 0)], [("DEQUANTIZE", (1,)), ("CONV_2D", (0, 2))],
                 [b"", b"w"])
    assert [numeric_format(m) for m in (float_, int8, hybrid, fp16)] == ["float32", "int8", "hybrid", "float32"]


# -- fitting and cross-validation -------------------------------------------------------

def _point(i, device, core, truth, threads=1, cycles=None, ops=60, dram=20e6, variant="float32"):
    dev = Device(cores=4, clock_1t_ghz=2.0 + 0.1 * i, clock_ghz=1.8 + 0.1 * i, cache_kb=1024,
                 dram_gbps=10.0 + 5 * i)
    cycles = cycles or 1e8 * (1 + i % 4)
    ms = predict(cycles, ops + 20 * i, dram * (1 + i % 3), dev, truth, threads).ms
    return cal.Point(f"p{i} {device} {threads}t", f"m{i % 4}", device, core, "kryo", variant, threads, ms, cycles,
                     int(cycles * 1.5), ops + 20 * i, dram * (1 + i % 3), dev,
                     {"simd_mac": int(cycles * 0.5), "simd_other": int(cycles * 0.2), "ldst": int(cycles * 0.5),
                      "branch": int(cycles * 0.1), "scalar": int(cycles * 0.2)})


def _points(truth=NUMBERS):
    return [_point(i, f"dev{i % 3}", f"core{i % 3}", truth, threads=1 + 3 * (i >= 9)) for i in range(12)]


def _memory_bound_points(truth=NUMBERS):
    # Points whose DRAM bytes (0.5-1.5 GB at 10-30 GB/s) may outlast 4 threads' compute.
    return _points(truth) + [_point(i, f"dev{i % 3}", f"core{i % 3}", truth, threads=4, dram=5e8)
                             for i in (0, 1, 3, 4)]


def test_fit_recovers_known_parameters_and_holds_out_exactly():
    pts = _memory_bound_points()
    bound = cal.memory_bound_points(pts, NUMBERS)
    assert {name.split()[1] for name in bound} == {"dev0", "dev1"}  # b stays visible with either left out
    fitted = cal.fit_params(pts)
    assert fitted == pytest.approx(NUMBERS, rel=1e-6)
    for name, key in cal.SPLITS.items():
        held = cal.held_out(pts, key)
        assert [h.point for h in held] == pts, name
        assert max(abs(h.error) for h in held) < 1e-6, name


def test_fit_needs_more_points_than_parameters():
    with pytest.raises(ConfigError, match="2 point\\(s\\) cannot determine 3 parameters"):
        cal.fit_params(_points()[:2])


def test_held_out_device_is_predicted_by_the_other_devices_only():
    pts = _points()
    # Double dev0's measurements: held out, it is predicted from the others' true figures alone.
    bad = [p if p.device != "dev0" else cal.Point(**{**p.__dict__, "measured_ms": 2 * p.measured_ms}) for p in pts]
    held = [h for h in cal.held_out(bad, cal.SPLITS["leave-one-device-out"]) if h.point.device == "dev0"]
    assert held and all(h.error == pytest.approx(-0.5, abs=1e-6) for h in held)


def test_error_summaries_by_format_core_and_threads():
    pts = _points()
    preds = cal.predict_points(pts, dict(NUMBERS, compute_scale=1.3 * 1.1))
    b = cal.breakdown(preds)
    assert set(b["threads"]) == {"1 thread", "multi-thread"}
    assert set(b["core"]) == {"core0", "core1", "core2"}
    assert all(0 < s["median_abs_error"] < 0.1 for s in b["core"].values())


def test_validated_cores_list_formats_with_points():
    pts = _points()[:3] + [_point(20, "dev9", "core0", NUMBERS, variant="int8")]
    assert cal.validated_cores(pts) == {"core0": ("float32", "int8"), "core1": ("float32",),
                                        "core2": ("float32",)}


def test_the_first_model_is_held_out_as_a_comparison():
    pts = [_point(i, f"dev{i % 2}", "core0", NUMBERS) for i in range(6)]
    preds = cal.classcost_held_out(pts, cal.SPLITS["leave-one-device-out"])
    assert {p.point.name for p in preds} <= {p.name for p in pts} and preds


def _synthetic_calibration():
    pts = _points()
    numbers = cal.fit_params(pts)
    params = LatencyParams(validated=cal.validated_cores(pts), info={"points": len(pts), "single_thread_points": 9},
                           **numbers)
    return cal.Calibration(pts, params, cal.predict_points(pts, numbers),
                           {n: cal.held_out(pts, k) for n, k in cal.SPLITS.items()},
                           {n: cal.classcost_held_out(pts, k) for n, k in cal.SPLITS.items()}, [],
                           pub.load_published())


def test_report_of_a_synthetic_calibration(tmp_path):
    md, js = report.write_report(_synthetic_calibration(), tmp_path)
    data = json.loads(js.read_text())
    assert data["acceptance"]["met"] and len(data["points"]) == 12
    assert set(data["held_out"]) == set(cal.SPLITS)
    text = md.read_text()
    for title in ("leave-one-device-out", "leave-one-architecture-out", "leave-one-point-out",
                  "Comparison: the first model"):
        assert title in text
    assert "| float32 |" in text and "| multi-thread |" in text


def test_calibration_writes_where_told_and_never_into_the_package(tmp_path):
    package = {p: p.read_bytes() for p in (lp.DEFAULT_PARAMS, *PROFILE_DIR.glob("*.yaml"))}
    c = _synthetic_calibration()
    files = write_calibration(c, tmp_path / "out")
    assert files.params == tmp_path / "out" / "params.yaml"
    assert files.report.is_file() and files.json.is_file()
    assert lp.load_params(files.params) == c.params
    assert {p: p.read_bytes() for p in package} == package
    no_params = write_calibration(c, tmp_path / "report-only", params=False)
    assert no_params.params is None and not (tmp_path / "report-only" / "params.yaml").exists()


def test_calibration_goes_to_the_user_cache_by_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path))
    files = write_calibration(_synthetic_calibration())
    assert files.params == tmp_path.resolve() / "latency" / "params.yaml"


def test_order_check():
    rows = [{"device": "pixel2", "family": f, "variant": "float32", "loaded": True, "latency_ms": ms}
            for f, ms in zip(pub.PUBLISHED_ORDER, (80, 50, 40, 12))]
    assert report.order_check(rows) == [{"device": "pixel2", "variant": "float32",
                                         "order": list(pub.PUBLISHED_ORDER), "as_published": True}]
    rows[1]["latency_ms"] = 90
    assert report.order_check(rows)[0]["as_published"] is False


# -- where the parameters live -------------------------------------------------------

def test_profiles_carry_no_fitted_parameters():
    from pipeline.devices.profiles import FIELDS

    assert not set(PARAM_KEYS) & set(FIELDS)
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        assert not set(PARAM_KEYS) & set(yaml.safe_load(path.read_text())), path.name


def test_params_file_order_environment_then_user_cache_then_package(monkeypatch, tmp_path):
    assert lp.params_file() == (lp.DEFAULT_PARAMS, "package")
    user = tmp_path / "cache" / "params.yaml"
    monkeypatch.setattr(lp, "user_params_path", lambda: user)
    lp.write_params(user, DEFAULT)
    assert lp.params_file() == (user, "user cache")
    mine = tmp_path / "mine.yaml"
    lp.write_params(mine, DEFAULT)
    monkeypatch.setenv(lp.PARAMS_ENV, str(mine))
    assert lp.params_file() == (mine.resolve(), "environment")
    monkeypatch.setenv(lp.PARAMS_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=f"missing.yaml \\(from \\${lp.PARAMS_ENV}\\): no such file"):
        lp.params_file()


def test_user_params_path_is_in_the_latency_cache(monkeypatch, tmp_path):
    monkeypatch.undo()  # the autouse fixture's stand-in
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path))
    assert lp.user_params_path() == tmp_path.resolve() / "latency" / "params.yaml"


def test_written_params_read_back_and_are_reread_when_rewritten(tmp_path):
    path = lp.write_params(tmp_path / "p.yaml", DEFAULT, "a note\non two lines")
    assert lp.load_params(path) == DEFAULT
    assert "# a note\n# on two lines\n" in path.read_text()
    changed = LatencyParams(**{**DEFAULT.__dict__, "memory_scale": DEFAULT.memory_scale + 1})
    lp.write_params(path, changed)
    assert lp.load_params(path) == changed


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "expected a mapping, got list"),
    ("model_version: 3\nbogus: 1", "unknown key 'bogus'"),
    ("{", "cannot read"),
])
def test_load_params_rejects_bad_files(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        lp.load_params(path)
    assert message in str(e.value) and str(e.value).startswith(f"latency parameters {path}")


@pytest.mark.parametrize("kwargs, message", [
    (dict(family="resnet"), "unknown model family 'resnet'"),
    (dict(family="mobilenet_v2", alpha=0), "alpha must be a number in (0, 4], got 0"),
    (dict(family="mobilenet_v2", input_size=23), "input size must be an integer in [24, 1024], got 23"),
    (dict(family="mobilenet_v2", classes=1), "classes must be an integer >= 2, got 1"),
    (dict(family="mobilenet_v2", variant="float16"), "variant 'float16' is unknown; valid: float32, int8"),
])
def test_model_spec_validation(kwargs, message):
    with pytest.raises(ConfigError) as e:
        ref.ModelSpec(**kwargs)
    assert message in str(e.value)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path))
    assert ref.cache_root() == tmp_path.resolve() / "latency"
    monkeypatch.delenv("MOBILE_MODEL_CACHE")
    assert ref.cache_root() == Path.home().resolve() / ".cache" / "mobile-model" / "latency"


# -- CLI -------------------------------------------------------------------------

def test_cli_calibrate_help_offers_an_output_directory():
    from pipeline.cli.latency import calibrate

    out = CliRunner().invoke(calibrate, ["--help"]).output
    assert "--out" in out and "--write-params" in out and "--write-profiles" in out
    assert "--published" in out and "--matrix" in out


def test_cli_estimate_help_lists_families_and_devices():
    from pipeline.cli.latency import estimate

    out = CliRunner().invoke(estimate, ["--help"]).output
    assert "mobilenet_v3_small" in out and "camera-a53" in out


def test_cli_estimate_rejects_unknown_device():
    from pipeline.cli.latency import estimate

    res = CliRunner().invoke(estimate, ["--model", "mobilenet_v2", "--device", "iphone"])
    assert res.exit_code == 2 and "'iphone' is not one of" in res.output


def test_cli_estimate_rejects_bad_alpha():
    from pipeline.cli.latency import estimate

    res = CliRunner().invoke(estimate, ["--model", "mobilenet_v2", "--device", "pixel4",
                                        "--alpha", "-1"])
    assert res.exit_code == 2 and "alpha must be a number in (0, 4], got -1.0" in res.output


# -- on emulated devices ----------------------------------------------------------------

@pytest.mark.device
def test_estimate_tiny_model_on_two_cores_repeats_exactly_and_is_cached(tmp_path, monkeypatch):
    """MobileNetV2-0.35 at 32x32, int8: a real build, conversion, emulated runs and llvm-mca."""
    from pipeline.cli.latency import estimate

    # A fresh latency cache (the ARM runtime cache stays where it is).
    monkeypatch.setattr(ref, "cache_root", lambda: tmp_path / "latency")
    monkeypatch.setattr(mca, "_cache_dir", lambda: tmp_path / "latency" / "mca")
    spec = ref.ModelSpec("mobilenet_v2", 0.35, 32, 10, "int8")
    a76 = estimate_model(spec, "pixel4", threads=1)
    a53 = estimate_model(spec, "camera-a53", threads=1)
    assert not a76["cached"] and not a53["cached"]
    assert a76["llvm_mca"]["analysed"] > 0 and a76["pipeline_model"] == "llvm-mca neoverse-n1 + memory"
    assert a53["pipeline_model"] == "llvm-mca cortex-a55 + memory"
    # The wide A76-class core needs fewer cycles than the in-order A53 for the same model.
    assert a76["cycles_single_thread"] < a53["cycles_single_thread"]
    assert a76["ipc"] > a53["ipc"] > 0 and a76["hot_fraction"] >= 0.99
    assert (a76["params_source"], a76["params_file"]) == ("package", str(lp.DEFAULT_PARAMS))
    assert a76["validated"] is False  # no published Cortex-A76 point
    assert 0.001 < a76["latency_ms"] < a53["latency_ms"] < 100

    # A second emulated run (cache dropped) repeats the cycles exactly.
    for kind in ("runs",):
        for f in (tmp_path / "latency" / kind).glob("*.json"):
            f.unlink()
    again = estimate_model(spec, "pixel4", threads=1)
    assert not again["cached"] and again["cycles_single_thread"] == a76["cycles_single_thread"]
    assert again["llvm_mca"]["analysed"] == 0  # every block priced before

    res = CliRunner().invoke(estimate, ["--model", "mobilenet_v2", "--alpha", "0.35", "--input-size",
                                        "32", "--classes", "10", "--variant", "int8", "--device",
                                        "pixel4", "--threads", "4", "--json", "-q"])
    assert res.exit_code == 0, res.output
    warm = json.loads(res.output)
    assert warm["cached"] and warm["cycles_single_thread"] == a76["cycles_single_thread"]
    pixel4 = get_device("pixel4")
    assert warm["threads_effective"] == 4
    # Four threads share the compute and each joins every operator (model.predict).
    assert warm["compute_ms"] == pytest.approx(a76["compute_ms"] / 4 * pixel4.clock_1t_ghz / pixel4.clock_ghz,
                                               rel=1e-3)
    assert warm["overhead_ms"] == pytest.approx(a76["overhead_ms"] * 4 * pixel4.clock_1t_ghz / pixel4.clock_ghz,
                                                rel=1e-3)

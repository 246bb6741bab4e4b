"""Tests of the latency model: cost model, fitting, thread scaling, profile data, CLI.

Unit tests run anywhere (no TensorFlow, no qemu). The one ``device`` test builds a
tiny MobileNetV2 and estimates it on an emulated core (~1 minute the first time);
the full calibration is never run here (``mobile-model calibrate``, ~30 minutes).
"""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.latency import calibrate as cal
from pipeline.devices.profiles import DEVICES, PROFILE_DIR, get_device
from pipeline.errors import ConfigError
from pipeline.latency.model import (CLASSES, DEFAULT_TIES, PARAM_KEYS, LatencyParams, Point,
                              attach_latency, error_summary, estimate_ms, features, fit_costs,
                              fit_parallel_fraction, leave_one_out, predict, predict_cycles,
                              speedup)

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "reference" / "published_latency.csv"


def _counts(rng, scale=1e8):
    """Random per-class counts with MobileNet-like proportions."""
    mix = rng.dirichlet([6, 1, 3, 0.5, 1])
    return {c: int(v) for c, v in zip(CLASSES, mix * scale * rng.uniform(0.2, 2.0))}


def _synthetic(costs, n=6, clock=2.0, seed=0, core="core-x"):
    rng = np.random.default_rng(seed)
    pts = []
    for i in range(n):
        c = _counts(rng)
        ms = predict_cycles(c, costs) / (clock * 1e6)
        pts.append(Point(f"p{i} {core}", core, c, clock, ms))
    return pts


def _tied(values):
    return {c: v for group, v in zip(DEFAULT_TIES, values) for c in group}


def _params(costs=None, p=0.9, validated=1, **extra):
    costs = costs or _tied([1.2, 0.5])
    d = {"model_version": 1, **{f"cost_{c}": costs[c] for c in CLASSES},
         "thread_parallel_fraction": p, "validated": validated}
    d.update(extra)
    return d


# -- cost model ------------------------------------------------------------------

def test_predict_cycles_is_the_weighted_sum():
    counts = dict(zip(CLASSES, (100, 20, 50, 5, 25)))
    costs = dict(zip(CLASSES, (1.0, 0.5, 2.0, 4.0, 0.2)))
    assert predict_cycles(counts, costs) == 100 + 10 + 100 + 20 + 5


def test_predict_cycles_names_missing_classes():
    with pytest.raises(ConfigError, match="lack class\\(es\\) branch, scalar"):
        predict_cycles({"simd_mac": 1, "simd_other": 1, "ldst": 1}, _tied([1, 1]))


def test_estimate_ms_converts_cycles_at_the_clock():
    counts = dict(zip(CLASSES, (2_000_000, 0, 0, 0, 0)))
    params = _params(_tied([1.5, 0.5]))
    # 3e6 cycles at 1.5 GHz = 2 ms.
    assert estimate_ms(counts, params, 1.5) == pytest.approx(2.0)


def test_estimate_ms_none_without_parameters():
    assert estimate_ms(dict(zip(CLASSES, (1, 1, 1, 1, 1))), {}, 2.0) is None
    assert estimate_ms({}, _params(), 2.0) is None


def test_estimate_ms_scales_with_threads_up_to_cores():
    counts = dict(zip(CLASSES, (1_000_000, 0, 0, 0, 0)))
    one = estimate_ms(counts, _params(p=0.8), 1.0)
    four = estimate_ms(counts, _params(p=0.8), 1.0, threads=4, cores=4)
    assert one / four == pytest.approx(1 / (0.2 + 0.8 / 4))
    # Threads beyond the big cores add nothing.
    assert estimate_ms(counts, _params(p=0.8), 1.0, threads=8, cores=4) == pytest.approx(four)


# -- thread scaling --------------------------------------------------------------

@pytest.mark.parametrize("threads, p, cores, expected", [
    (1, 0.9, None, 1.0),
    (4, 1.0, None, 4.0),
    (4, 0.0, None, 1.0),
    (2, 0.5, None, 1 / 0.75),
    (8, 1.0, 2, 2.0),
    (3, 1.0, 4, 3.0),
])
def test_speedup_is_amdahl_capped_at_cores(threads, p, cores, expected):
    assert speedup(threads, p, cores) == pytest.approx(expected)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_speedup_rejects_bad_threads(threads):
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        speedup(threads, 0.5)


def test_fit_parallel_fraction_recovers_a_known_fraction():
    p = 0.83
    pairs = [(t, ms, ms / speedup(t, p)) for t in (2, 4) for ms in (10.0, 50.0, 80.0)]
    assert fit_parallel_fraction(pairs) == pytest.approx(p, abs=1e-6)


def test_fit_parallel_fraction_is_bounded():
    # Super-linear "speed-ups" cannot push p past 1.
    assert fit_parallel_fraction([(2, 10.0, 4.0)]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ConfigError, match="no multi-thread measurements"):
        fit_parallel_fraction([])


# -- fitting ---------------------------------------------------------------------

def test_fit_recovers_known_tied_costs_exactly():
    true = _tied([1.3, 0.45])
    costs = fit_costs(_synthetic(true, n=5))
    assert costs["core-x"] == pytest.approx(true, rel=1e-6)


def test_fit_recovers_five_free_costs_per_core_independently():
    ties = tuple((c,) for c in CLASSES)
    a = dict(zip(CLASSES, (1.1, 0.7, 0.9, 2.0, 0.4)))
    b = dict(zip(CLASSES, (0.6, 0.3, 1.4, 1.0, 0.8)))
    pts = _synthetic(a, n=8, core="a", seed=1) + _synthetic(b, n=8, core="b", clock=2.5, seed=2)
    costs = fit_costs(pts, ties)
    assert costs["a"] == pytest.approx(a, rel=1e-6)
    assert costs["b"] == pytest.approx(b, rel=1e-6)
    assert all(abs(p.error) < 1e-9 for p in predict(pts, costs))


def test_fit_costs_are_never_negative():
    ties = tuple((c,) for c in CLASSES)
    true = dict(zip(CLASSES, (1.0, -0.5, 1.0, 1.0, 1.0)))  # not physical
    pts = _synthetic(true, n=10)
    pts = [p for p in pts if p.measured_ms > 0]
    costs = fit_costs(pts, ties)["core-x"]
    assert all(v >= 0 for v in costs.values())


def test_fit_minimises_relative_not_absolute_error():
    # Two points, one cost: the relative fit is the mean of y_i / x_i in the least
    # squares sense: minimise sum((k x_i - y_i) / y_i)^2  ->  k = sum(r) / sum(r^2), r = x/y.
    ties = (tuple(CLASSES),)
    small = Point("small", "c", dict(zip(CLASSES, (1_000_000, 0, 0, 0, 0))), 1.0, 2.0)
    big = Point("big", "c", dict(zip(CLASSES, (100_000_000, 0, 0, 0, 0))), 1.0, 100.0)
    k = fit_costs([small, big], ties)["c"]["simd_mac"]
    r = np.array([1e6 / 2e6, 1e8 / 1e8])
    assert k == pytest.approx(r.sum() / (r ** 2).sum(), rel=1e-9)


def test_fit_costs_rejects_underdetermined_core():
    pts = _synthetic(_tied([1, 1]), n=1)
    with pytest.raises(ConfigError, match="core core-x: 1 point\\(s\\) cannot determine 2 costs"):
        fit_costs(pts)


def test_fit_costs_rejects_bad_ties():
    with pytest.raises(ConfigError, match="cover each of"):
        fit_costs(_synthetic(_tied([1, 1])), (("simd_mac",), ("ldst",)))


def test_features_sum_within_tie_groups():
    counts = dict(zip(CLASSES, (10, 1, 2, 3, 4)))
    assert features(counts) == [10, 10]


def test_leave_one_out_predicts_each_point_from_the_others():
    true = _tied([1.2, 0.5])
    pts = _synthetic(true, n=6)
    # Exact data: every held-out point is predicted exactly.
    assert all(abs(p.error) < 1e-9 for p in leave_one_out(pts))
    # Perturb one point: its LOO prediction is the fit of the other five (= the truth),
    # so its LOO error is exactly the perturbation, while fit-on-all absorbs some of it.
    bad = Point(pts[2].name, pts[2].core, pts[2].by_class, pts[2].clock_ghz, pts[2].measured_ms * 1.5)
    pts2 = pts[:2] + [bad] + pts[3:]
    loo = leave_one_out(pts2)
    assert loo[2].predicted_ms == pytest.approx(pts[2].measured_ms, rel=1e-9)
    assert loo[2].error == pytest.approx(1 / 1.5 - 1, rel=1e-9)
    fit_all = predict(pts2, fit_costs(pts2))
    assert abs(fit_all[2].error) < abs(loo[2].error)
    assert [p.point.name for p in loo] == [p.name for p in pts2]


def test_leave_one_out_refuses_to_underdetermine_a_core():
    pts = _synthetic(_tied([1, 1]), n=2)
    with pytest.raises(ConfigError, match="cannot determine"):
        leave_one_out(pts)


def test_error_summary_names_the_worst_point():
    pts = _synthetic(_tied([1, 1]), n=3)
    preds = predict(pts, {"core-x": _tied([1, 1])})
    preds[1] = type(preds[1])(preds[1].point, preds[1].predicted_ms * 1.3)
    s = error_summary(preds)
    assert s["worst_point"] == pts[1].name
    assert s["worst_abs_error"] == pytest.approx(0.3)
    assert s["median_abs_error"] == pytest.approx(0.0, abs=1e-12)


# -- parameters in profiles -------------------------------------------------------

def test_params_round_trip():
    p = LatencyParams.from_mapping(_params(device_points=4, core_points=8))
    assert LatencyParams.from_mapping(p.to_mapping()) == p
    assert p.validated and p.info["core_points"] == 8


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown key 'bogus'; valid keys: " + ", ".join(PARAM_KEYS)),
    ({"cost_ldst": None}, "missing key(s) cost_ldst"),
    ({"cost_ldst": -0.1}, "cost_ldst must be >= 0 cycles per instruction, got -0.1"),
    ({"thread_parallel_fraction": 1.5}, "thread_parallel_fraction must be in [0, 1], got 1.5"),
    ({"validated": 2}, "validated must be 1 (fitted on published points) or 0 (assumed), got 2"),
    ({"validated": True}, "validated must be a finite number, got True"),
    ({"model_version": 0}, "fitted for cost model version 0, this code reads version 1"),
    ({**{f"cost_{c}": 0 for c in CLASSES}}, "every cost_* is 0"),
])
def test_params_validation_messages(change, message):
    d = _params()
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    with pytest.raises(ConfigError) as e:
        LatencyParams.from_mapping(d, "pixelX")
    assert message in str(e.value) and str(e.value).startswith("pixelX: ")


@pytest.mark.parametrize("name", DEVICES.names())
def test_every_profile_has_valid_latency_parameters(name):
    profile = get_device(name)
    params = LatencyParams.from_mapping(profile.latency, name)
    assert params is not None, f"{name}: no latency parameters; run `mobile-model calibrate`"
    assert 0 < params.parallel_fraction <= 1
    # Costs of a few tenths to a few cycles per instruction: anything else is a broken fit.
    assert all(0 <= v < 10 for v in params.costs.values())
    assert any(v > 0.05 for v in params.costs.values())


def test_validated_exactly_where_published_points_exist():
    published_cores = {get_device(p.device).qemu_cpu for p in cal.load_published()}
    for name in DEVICES.names():
        profile = get_device(name)
        params = LatencyParams.from_mapping(profile.latency, name)
        assert params.validated == (profile.qemu_cpu in published_cores), name
        if not params.validated:
            assert profile.qemu_cpu in cal.ASSUMED_CORES
            assert "ASSUMED, NOT FITTED" in (PROFILE_DIR / f"{name}.yaml").read_text()


def test_profiles_of_one_core_share_costs():
    by_core = {}
    for name in DEVICES.names():
        profile = get_device(name)
        costs = LatencyParams.from_mapping(profile.latency, name).costs
        by_core.setdefault(profile.qemu_cpu, []).append(dict(costs))
    for core, all_costs in by_core.items():
        assert all(c == all_costs[0] for c in all_costs), core


def test_assumed_costs_follow_their_base_core():
    for name in DEVICES.names():
        profile = get_device(name)
        a = cal.ASSUMED_CORES.get(profile.qemu_cpu)
        if a is None:
            continue
        base = next(get_device(n) for n in DEVICES.names() if get_device(n).qemu_cpu == a.base_core)
        mine = LatencyParams.from_mapping(profile.latency).costs
        theirs = LatencyParams.from_mapping(base.latency).costs
        for c in CLASSES:
            assert mine[c] == pytest.approx(a.factor * theirs[c], rel=1e-5)


def test_attach_latency_adds_ms_for_loaded_results():
    counts = dict(zip(CLASSES, (10_000_000, 1_000_000, 5_000_000, 500_000, 1_000_000)))
    r = {"loaded": True, "instructions_by_class": counts}
    attach_latency(r, "pixel2", 1)
    p = get_device("pixel2")
    assert r["latency_ms"] == pytest.approx(estimate_ms(counts, p.latency, p.clock_ghz))
    assert r["latency_validated"] is True
    r2 = {"loaded": False}
    attach_latency(r2, "pixel2", 1)
    assert r2["latency_ms"] is None


# -- calibration data and profile writing ----------------------------------------

def test_embedded_published_table_matches_the_shared_reference():
    if not SHARED_CSV.is_file():
        pytest.skip(f"{SHARED_CSV} not present")
    shared = cal.load_published(SHARED_CSV)
    assert shared == cal.load_published()
    assert len(shared) == 14


def test_published_multi_thread_pairs_have_single_thread_partners():
    pairs = cal.thread_pairs(cal.load_published())
    assert len(pairs) == len(cal.MULTI_THREAD_MS) == 12
    assert all(t == get_device(label.split()[1]).cores for label, t, _, _ in pairs)


@pytest.mark.parametrize("row, message", [
    ("mobilenet_v1,float16,pixel2,1,80,xnnpack-2020,x", "variant 'float16'; valid: float32, int8_qat"),
    ("mobilenet_v1,float32,pixel2,4,30,xnnpack-2020,x", "threads 4: the cost model is fitted on "
                                                        "single-thread latencies only"),
    ("mobilenet_v1,float32,pixel2,1,80,ncnn,x", "runtime 'ncnn'; valid: xnnpack-2020, tflite-2019"),
    ("mobilenet_v1,float32,pixel2,1,abc,xnnpack-2020,x", "threads and latency_ms must be numbers"),
    ("mobilenet_v1,float32,iphone,1,80,xnnpack-2020,x", "unknown device 'iphone'"),
])
def test_load_published_rejects_bad_rows(tmp_path, row, message):
    path = tmp_path / "p.csv"
    path.write_text("model,variant,device,threads,latency_ms,runtime,source\n" + row + "\n")
    with pytest.raises(ConfigError) as e:
        cal.load_published(path)
    assert message in str(e.value)


def test_load_published_needs_the_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("mobilenet_v1,float32,pixel2,1,86,xnnpack-2020,x\n")
    with pytest.raises(ConfigError, match="expected the header model,variant,device,threads,"
                                          "latency_ms,runtime,source, got 'mobilenet_v1,"):
        cal.load_published(path)


def test_write_profile_latency_replaces_only_the_latency_block(tmp_path):
    path = tmp_path / "pixel2.yaml"
    original = (PROFILE_DIR / "pixel2.yaml").read_text()
    path.write_text(original)
    params = LatencyParams.from_mapping(_params(device_points=6, core_points=10,
                                                loo_median_abs_error_pct=5.0,
                                                loo_worst_abs_error_pct=20.0))
    block = cal.latency_block(params, "cortex-a72")
    cal.write_profile_latency(path, block)
    text = path.read_text()
    assert text.endswith(block)
    head = original[:original.index("latency:")]
    head = "\n".join(ln for ln in head.splitlines() if not cal._is_latency_comment(ln + "\n"))
    assert text.startswith(head)
    cal.write_profile_latency(path, block)  # idempotent: the old comments are replaced too
    assert path.read_text() == text
    unvalidated = cal.latency_block(LatencyParams.from_mapping(_params(validated=0)), "cortex-a53")
    cal.write_profile_latency(path, unvalidated)
    assert path.read_text().count("ASSUMED, NOT FITTED") == 1
    assert "validated: 0" in path.read_text()


def test_write_profile_latency_needs_latency_last(tmp_path):
    path = tmp_path / "pixel2.yaml"
    text = (PROFILE_DIR / "pixel2.yaml").read_text()
    path.write_text(text + "extra: 1\n")
    with pytest.raises(ConfigError, match="expected `latency:` as the last key"):
        cal.write_profile_latency(path, "latency: {}\n")


def test_report_of_a_synthetic_calibration(tmp_path):
    a = _tied([1.2, 0.5])
    b = _tied([0.6, 1.5])
    pts = _synthetic(a, n=4, core="cortex-a72") + _synthetic(b, n=4, core="cortex-a76", seed=3)
    costs = fit_costs(pts)
    c = cal.Calibration(points=pts, fit_all=predict(pts, costs), loo=leave_one_out(pts),
                        costs=costs, parallel_fraction=0.87, thread_pairs=[("m d", 2, 10.0, 5.5)],
                        params=cal.profile_params(costs, 0.87, pts, leave_one_out(pts)),
                        matrix=[], sensitivity=[], published=cal.load_published())
    md, js = cal.write_report(c, tmp_path)
    data = json.loads(js.read_text())
    assert data["acceptance"]["met"] and len(data["points"]) == 8
    text = md.read_text()
    assert "| point | core | measured ms |" in text and "leave-one-out" in text
    # Assumed cores get base costs x factor and are unvalidated.
    n1 = c.params["graviton2"]
    assert not n1.validated and n1.costs == pytest.approx(costs["cortex-a76"])
    a53 = c.params["camera-a53"]
    assert a53.costs["simd_mac"] == pytest.approx(2.0 * costs["cortex-a72"]["simd_mac"])


def test_order_check():
    rows = [{"device": "pixel2", "family": f, "variant": "float32", "loaded": True, "latency_ms": ms}
            for f, ms in zip(cal.PUBLISHED_ORDER, (80, 50, 40, 12))]
    assert cal.order_check(rows) == [{"device": "pixel2", "variant": "float32",
                                      "order": list(cal.PUBLISHED_ORDER), "as_published": True}]
    rows[1]["latency_ms"] = 90
    assert cal.order_check(rows)[0]["as_published"] is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(family="resnet"), "unknown model family 'resnet'"),
    (dict(family="mobilenet_v2", alpha=0), "alpha must be a number in (0, 4], got 0"),
    (dict(family="mobilenet_v2", input_size=16), "input size must be an integer in [32, 1024], got 16"),
    (dict(family="mobilenet_v2", classes=1), "classes must be an integer >= 2, got 1"),
    (dict(family="mobilenet_v2", variant="float16"), "variant 'float16' is unknown; valid: float32, int8"),
])
def test_model_spec_validation(kwargs, message):
    with pytest.raises(ConfigError) as e:
        cal.ModelSpec(**kwargs)
    assert message in str(e.value)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path))
    assert cal.cache_root() == tmp_path.resolve() / "latency"
    monkeypatch.delenv("MOBILE_MODEL_CACHE")
    assert cal.cache_root() == Path.home().resolve() / ".cache" / "mobile-model" / "latency"


# -- CLI -------------------------------------------------------------------------

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


# -- on an emulated device ---------------------------------------------------------

@pytest.mark.device
def test_estimate_tiny_model_cold_then_cached(tmp_path, monkeypatch):
    """MobileNetV2-0.35 at 32x32 on pixel4: a real build, conversion and emulated run."""
    from pipeline.cli.latency import estimate

    # A fresh latency cache (the ARM runtime cache stays where it is).
    monkeypatch.setattr(cal, "cache_root", lambda: tmp_path / "latency")
    spec = cal.ModelSpec("mobilenet_v2", 0.35, 32, 10, "int8")
    t0 = time.monotonic()
    cold = cal.estimate_model(spec, "pixel4", threads=1)
    cold_s = time.monotonic() - t0
    assert not cold["cached"]
    assert cold["instructions"] == sum(cold["instructions_by_class"].values()) > 0
    p = get_device("pixel4")
    assert cold["latency_ms"] == pytest.approx(
        estimate_ms(cold["instructions_by_class"], p.latency, p.clock_ghz))
    assert 0.01 < cold["latency_ms"] < 50
    assert cold["validated"] is True
    assert cold_s < 120

    t0 = time.monotonic()
    res = CliRunner().invoke(estimate, ["--model", "mobilenet_v2", "--alpha", "0.35", "--input-size",
                                        "32", "--classes", "10", "--variant", "int8", "--device",
                                        "pixel4", "--threads", "4", "--json", "-q"])
    assert res.exit_code == 0, res.output
    assert time.monotonic() - t0 < 5
    warm = json.loads(res.output)
    assert warm["cached"] and warm["instructions"] == cold["instructions"]
    assert warm["threads_effective"] == 4
    assert warm["latency_ms"] == pytest.approx(cold["latency_ms"] / speedup(4, p.latency["thread_parallel_fraction"]))
    assert math.isclose(warm["latency_ms_single_thread"], cold["latency_ms"], rel_tol=1e-12)

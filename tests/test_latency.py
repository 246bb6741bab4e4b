"""Tests of the latency model: cost model, fitting, thread scaling, parameter data, CLI.

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

import yaml

from pipeline.devices.profiles import DEVICES, PROFILE_DIR, get_device
from pipeline.errors import ConfigError
from pipeline.latency import calibration_report as report
from pipeline.latency import fit as cal
from pipeline.latency import params as lp
from pipeline.latency import published as pub
from pipeline.latency import reference as ref
from pipeline.latency.calibrate import write_calibration
from pipeline.latency.estimate import estimate_model
from pipeline.latency.model import (CLASSES, DEFAULT_TIES, PARAM_KEYS, LatencyParams, Point,
                                    attach_latency, error_summary, estimate_ms, features, fit_costs,
                                    fit_parallel_fraction, leave_one_out, predict, predict_cycles,
                                    speedup)

DEFAULT = lp.load_params(lp.DEFAULT_PARAMS)


@pytest.fixture(autouse=True)
def _packaged_params(monkeypatch, tmp_path_factory):
    """Every test reads the packaged parameters, whatever the user's cache holds."""
    monkeypatch.delenv(lp.PARAMS_ENV, raising=False)
    monkeypatch.setattr(lp, "user_params_path", lambda: tmp_path_factory.mktemp("cache") / "params.yaml")


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


# -- parameters data ---------------------------------------------------------------

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
    params = DEFAULT[name]
    assert params is not None, f"{name}: no latency parameters; run `mobile-model calibrate`"
    assert 0 < params.parallel_fraction <= 1
    # Costs of a few tenths to a few cycles per instruction: anything else is a broken fit.
    assert all(0 <= v < 10 for v in params.costs.values())
    assert any(v > 0.05 for v in params.costs.values())


def test_validated_exactly_where_published_points_exist():
    published_cores = {get_device(p.device).qemu_cpu for p in pub.load_published()}
    text = lp.DEFAULT_PARAMS.read_text()
    for name in DEVICES.names():
        profile = get_device(name)
        params = DEFAULT[name]
        assert params.validated == (profile.qemu_cpu in published_cores), name
        if not params.validated:
            assert profile.qemu_cpu in cal.ASSUMED_CORES
            # The comment right above the device's block says so.
            block = text[:text.index(f"\n{name}:")].rsplit("\n\n", 1)[-1]
            assert "ASSUMED, NOT FITTED" in block, name


def test_profiles_of_one_core_share_costs():
    by_core = {}
    for name in DEVICES.names():
        by_core.setdefault(get_device(name).qemu_cpu, []).append(dict(DEFAULT[name].costs))
    for core, all_costs in by_core.items():
        assert all(c == all_costs[0] for c in all_costs), core


def test_assumed_costs_follow_their_base_core():
    for name in DEVICES.names():
        profile = get_device(name)
        a = cal.ASSUMED_CORES.get(profile.qemu_cpu)
        if a is None:
            continue
        base = next(n for n in DEVICES.names() if get_device(n).qemu_cpu == a.base_core)
        mine = DEFAULT[name].costs
        theirs = DEFAULT[base].costs
        for c in CLASSES:
            assert mine[c] == pytest.approx(a.factor * theirs[c], rel=1e-5)


def test_attach_latency_adds_ms_for_loaded_results():
    counts = dict(zip(CLASSES, (10_000_000, 1_000_000, 5_000_000, 500_000, 1_000_000)))
    r = {"loaded": True, "instructions_by_class": counts}
    attach_latency(r, "pixel2", 1)
    p = get_device("pixel2")
    assert r["latency_ms"] == pytest.approx(estimate_ms(counts, DEFAULT["pixel2"].to_mapping(), p.clock_ghz))
    assert r["latency_validated"] is True
    r2 = {"loaded": False}
    attach_latency(r2, "pixel2", 1)
    assert r2["latency_ms"] is None


# -- published data ----------------------------------------------------------------

def test_packaged_published_table_parses_with_registered_devices_and_models():
    from pipeline.train.zoo import family_names

    points = pub.load_published()
    assert len(points) == 14 and len({p.name for p in points}) == 14
    assert all(p.device in DEVICES.names() and p.model in family_names() for p in points)
    assert {p.runtime for p in points} <= set(pub.PUBLISHED_RUNTIMES)
    assert {p.model for p in points} == set(pub.PUBLISHED_ORDER)
    assert all(p.threads == 1 and p.latency_ms > 0 and p.source for p in points)


def test_published_multi_thread_pairs_have_single_thread_partners():
    multi = pub.load_multi_thread()
    pairs = cal.thread_pairs(pub.load_published())
    assert len(pairs) == len(multi) == 12
    assert all(t == get_device(label.split()[1]).cores for label, t, _, _ in pairs)
    # Every multi-thread latency is faster than its single-thread partner.
    assert all(many < one for _, _, one, many in pairs)


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
        pub.load_published(path)
    assert message in str(e.value)


def test_load_published_needs_the_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("mobilenet_v1,float32,pixel2,1,86,xnnpack-2020,x\n")
    with pytest.raises(ConfigError, match="expected the header model,variant,device,threads,"
                                          "latency_ms,runtime,source, got 'mobilenet_v1,"):
        pub.load_published(path)


def test_load_published_reads_a_commented_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("# a comment\n# model,variant,device,threads,latency_ms,runtime,source\n"
                    "mobilenet_v1,float32,pixel2,1,86,xnnpack-2020,x\n")
    assert [p.name for p in pub.load_published(path)] == ["mobilenet_v1 float32 pixel2"]


@pytest.mark.parametrize("row, message", [
    ("mobilenet_v1,iphone,40", "unknown device 'iphone'"),
    ("resnet,pixel2,40", "unknown model family 'resnet'"),
    ("mobilenet_v1,pixel2,0", "latency_ms must be > 0, got 0"),
    ("mobilenet_v1,pixel2,fast", "latency_ms must be a number, got 'fast'"),
])
def test_load_multi_thread_rejects_bad_rows(tmp_path, row, message):
    path = tmp_path / "m.csv"
    path.write_text("model,device,latency_ms\n" + row + "\n")
    with pytest.raises(ConfigError) as e:
        pub.load_multi_thread(path)
    assert message in str(e.value) and "row 1" in str(e.value)


# -- where the parameters live -------------------------------------------------------

def test_profiles_carry_no_latency_parameters():
    from pipeline.devices.profiles import FIELDS

    assert "latency" not in FIELDS
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        assert "latency" not in yaml.safe_load(path.read_text()), path.name


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


def test_written_params_read_back_with_notes_and_devices_without_parameters(tmp_path):
    params = dict(DEFAULT, pixel4=None)
    path = lp.write_params(tmp_path / "p.yaml", params, cal.params_notes(params))
    assert lp.load_params(path) == params
    text = path.read_text()
    assert "pixel4: {}" in text
    assert text.count("ASSUMED, NOT FITTED") == sum(1 for p in params.values() if p and not p.validated)


def test_estimates_use_the_chosen_params_file(monkeypatch, tmp_path):
    counts = dict(zip(CLASSES, (10_000_000, 1_000_000, 5_000_000, 500_000, 1_000_000)))
    before = {"loaded": True, "instructions_by_class": counts}
    attach_latency(before, "pixel2", 1)
    doubled = {n: (p and LatencyParams({c: 2 * v for c, v in p.costs.items()}, p.parallel_fraction,
                                       p.validated, p.info)) for n, p in DEFAULT.items()}
    monkeypatch.setenv(lp.PARAMS_ENV, str(lp.write_params(tmp_path / "p.yaml", doubled)))
    after = {"loaded": True, "instructions_by_class": counts}
    attach_latency(after, "pixel2", 1)
    assert after["latency_ms"] == pytest.approx(2 * before["latency_ms"])
    lp.write_params(tmp_path / "p.yaml", dict(DEFAULT, pixel2=None))  # rewritten: read again
    none = {"loaded": True, "instructions_by_class": counts}
    attach_latency(none, "pixel2", 1)
    assert none["latency_ms"] is None and none["latency_validated"] is None


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "expected a mapping of device names to parameters, got list"),
    ("iphone: {}", "unknown device 'iphone'; valid: camera-a53"),
    ("pixel2: 3", "pixel2: expected a mapping of parameters, got 3"),
    ("pixel2: {bogus: 1}", "pixel2: unknown key 'bogus'"),
])
def test_load_params_rejects_bad_files(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        lp.load_params(path)
    assert message in str(e.value) and str(e.value).startswith(f"latency parameters {path}")


# -- calibration --------------------------------------------------------------------

def _synthetic_calibration():
    a = _tied([1.2, 0.5])
    b = _tied([0.6, 1.5])
    pts = _synthetic(a, n=4, core="cortex-a72") + _synthetic(b, n=4, core="cortex-a76", seed=3)
    costs = fit_costs(pts)
    return cal.Calibration(points=pts, fit_all=predict(pts, costs), loo=leave_one_out(pts),
                           costs=costs, parallel_fraction=0.87, thread_pairs=[("m d", 2, 10.0, 5.5)],
                           params=cal.profile_params(costs, 0.87, pts, leave_one_out(pts)),
                           matrix=[], sensitivity=[], published=pub.load_published())


def test_report_of_a_synthetic_calibration(tmp_path):
    c = _synthetic_calibration()
    md, js = report.write_report(c, tmp_path)
    data = json.loads(js.read_text())
    assert data["acceptance"]["met"] and len(data["points"]) == 8
    text = md.read_text()
    assert "| point | core | measured ms |" in text and "leave-one-out" in text
    # Assumed cores get base costs x factor and are unvalidated.
    n1 = c.params["graviton2"]
    assert not n1.validated and n1.costs == pytest.approx(c.costs["cortex-a76"])
    a53 = c.params["camera-a53"]
    assert a53.costs["simd_mac"] == pytest.approx(2.0 * c.costs["cortex-a72"]["simd_mac"])


def test_calibration_writes_where_told_and_never_into_the_package(tmp_path):
    package = {p: p.read_bytes() for p in (lp.DEFAULT_PARAMS, *PROFILE_DIR.glob("*.yaml"))}
    c = _synthetic_calibration()
    files = write_calibration(c, tmp_path / "out")
    assert files.params == tmp_path / "out" / "params.yaml"
    assert files.report.is_file() and files.json.is_file()
    back = lp.load_params(files.params)  # rounded to 6 significant digits
    for name, params in c.params.items():
        assert back[name].costs == pytest.approx(params.costs, rel=1e-5), name
        assert back[name].validated == params.validated, name
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


@pytest.mark.parametrize("kwargs, message", [
    (dict(family="resnet"), "unknown model family 'resnet'"),
    (dict(family="mobilenet_v2", alpha=0), "alpha must be a number in (0, 4], got 0"),
    (dict(family="mobilenet_v2", input_size=16), "input size must be an integer in [32, 1024], got 16"),
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


# -- on an emulated device ---------------------------------------------------------

@pytest.mark.device
def test_estimate_tiny_model_cold_then_cached(tmp_path, monkeypatch):
    """MobileNetV2-0.35 at 32x32 on pixel4: a real build, conversion and emulated run."""
    from pipeline.cli.latency import estimate

    # A fresh latency cache (the ARM runtime cache stays where it is).
    monkeypatch.setattr(ref, "cache_root", lambda: tmp_path / "latency")
    spec = ref.ModelSpec("mobilenet_v2", 0.35, 32, 10, "int8")
    t0 = time.monotonic()
    cold = estimate_model(spec, "pixel4", threads=1)
    cold_s = time.monotonic() - t0
    assert not cold["cached"]
    assert cold["instructions"] == sum(cold["instructions_by_class"].values()) > 0
    p, params = get_device("pixel4"), DEFAULT["pixel4"].to_mapping()
    assert cold["latency_ms"] == pytest.approx(
        estimate_ms(cold["instructions_by_class"], params, p.clock_ghz))
    assert (cold["params_source"], cold["params_file"]) == ("package", str(lp.DEFAULT_PARAMS))
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
    assert warm["latency_ms"] == pytest.approx(cold["latency_ms"] / speedup(4, params["thread_parallel_fraction"]))
    assert math.isclose(warm["latency_ms_single_thread"], cold["latency_ms"], rel_tol=1e-12)

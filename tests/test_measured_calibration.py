"""``calibrate --measured``: points measured on real devices join the latency model's fit."""

import json

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.devices.remote import store
from pipeline.errors import EXIT_BAD_INPUT
from pipeline.latency import calibration as cal
from pipeline.latency.measured import group_rows, measured_points
from pipeline.latency.model import Device, predict

NUMBERS = {"compute_scale": 1.3, "op_overhead_cycles": 20000.0, "memory_scale": 1.5}


def row(**kw):
    base = {c: "" for c in store.COLUMNS}
    base.update(model="add.tflite", model_sha256="ab" * 32, target="ssh://pi@rpi:22", threads="1",
                runtime="litert", runtime_version="2.3.0", number_format="int8", mean_ms="4.0", profile="rpi4")
    base.update(kw)
    return base


def test_rows_group_by_model_profile_threads_and_runtime_at_their_median():
    rows = [row(mean_ms="4.0"), row(mean_ms="6.0"), row(mean_ms="5.5"), row(threads="4", mean_ms="2.0"),
            row(profile=""), row(number_format="hybrid"), row(profile="no-such-board")]
    groups, skipped = group_rows(rows)
    assert sorted((g.threads, g.measured_ms, g.count) for g in groups) == [(1, 5.5, 3), (4, 2.0, 1)]
    assert groups[0].name == "measured add.tflite int8 rpi4 1t"
    assert len(skipped) == 3
    assert "names no profile (give --device with --target)" in skipped[0]
    assert "hybrid has no published points" in skipped[1] and "not registered" in skipped[2]


def _point(i, device, threads=1):
    dev = Device(cores=4, clock_1t_ghz=2.0 + 0.1 * i, clock_ghz=1.8 + 0.1 * i, cache_kb=1024, dram_gbps=10.0 + 5 * i)
    cycles, ops, dram = 1e8 * (1 + i % 4), 60 + 20 * i, 20e6 * (1 + i % 3)
    ms = predict(cycles, ops, dram, dev, NUMBERS, threads).ms
    return cal.Point(f"p{i} {device} {threads}t", f"m{i % 4}", device, f"core{i % 3}", "kryo", "float32", threads,
                     ms, cycles, int(cycles * 1.5), ops, dram, dev,
                     {"simd_mac": 1, "simd_other": 1, "ldst": 1, "branch": 1, "scalar": 1})


def test_measured_points_join_the_fit_and_every_held_out_split(monkeypatch):
    published = [_point(i, f"dev{i % 3}") for i in range(9)]
    measured = [_point(20 + i, "rpi4") for i in range(2)]
    monkeypatch.setattr(cal, "calibration_points", lambda *a, **k: list(published))
    c = cal.calibrate([], matrix=False, runtime=object(), measured=measured)
    assert c.points[-2:] == measured and c.params.info["measured_points"] == 2
    assert c.params.compute_scale == pytest.approx(NUMBERS["compute_scale"], rel=1e-6)
    for split in c.held_out.values():
        assert [p.point for p in split][-2:] == measured


def test_measured_points_validate_their_core_and_format_and_the_estimate_states_its_error(monkeypatch):
    """Before: no point of the board's core, its estimates unvalidated. After calibrate
    with its measured points: validated, with the held-out error on those points."""
    import dataclasses

    from pipeline.latency.estimate import estimate_run

    published = [_point(i, f"dev{i % 3}") for i in range(9)]
    measured = [dataclasses.replace(_point(20 + i, "rpi4"), core="cortex-a72") for i in range(3)]
    monkeypatch.setattr(cal, "calibration_points", lambda *a, **k: list(published))
    before = cal.calibrate([], matrix=False, runtime=object())
    after = cal.calibrate([], matrix=False, runtime=object(), measured=measured)
    assert not before.params.is_validated("cortex-a72", "float32")
    assert "cortex-a72" not in before.params.info["validation_lodo"]
    assert after.params.is_validated("cortex-a72", "float32")
    assert not after.params.is_validated("cortex-a72", "int8")  # only float32 was measured
    error = after.params.info["validation_lodo"]["cortex-a72"]["float32"]
    held = [q for q in after.held_out["leave-one-device-out"] if q.point.core == "cortex-a72"]
    assert error["points"] == 3 == len(held)
    assert error["worst_abs_error_pct"] == round(100 * max(abs(q.error) for q in held), 1)

    class Profile:  # what estimate_run reads of a profile, on the measured board's core
        core, cores, sched_model, qemu_cpu, cache_kb = "cortex-a72", 4, "cortex-a57", "cortex-a72", 1024

    monkeypatch.setattr("pipeline.latency.cycles.core_cycles",
                        lambda *a, **k: type("C", (), {"cycles": 1e6, "ipc": 1.5, "instructions": 1500000,
                                                       "hot_blocks": 1, "hot_fraction": 1.0})())
    monkeypatch.setattr("pipeline.latency.estimate.Device.of", lambda profile: measured[0].device_figures)
    monkeypatch.setattr("pipeline.latency.estimate.pipeline_model_name", lambda profile: "llvm-mca test")
    traffic = type("T", (), {"op_count": 10, "dram_bytes": lambda self, cache: 1000})()
    for params, expected in ((before.params, None), (after.params, error)):
        est = estimate_run({}, traffic, Profile(), "float32", 1, params)
        assert est["validated"] is (expected is not None) and est["validation_error"] == expected


def test_calibrate_measured_with_nothing_usable_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_MODEL_REMOTE_CACHE", str(tmp_path))
    r = CliRunner(mix_stderr=False).invoke(main, ["calibrate", "--measured", "--out", str(tmp_path / "cal"), "-q"])
    assert r.exit_code == EXIT_BAD_INPUT
    assert r.stderr.startswith("error: no measured point can join the fit (0 stored)") and "empty" in r.stderr


@pytest.mark.device
def test_a_measured_point_is_priced_from_one_emulated_run(tmp_path):
    from tests.helpers.tiny_tflite import int8_add_model

    model = int8_add_model(tmp_path / "add.tflite")
    groups, _ = group_rows([row(model_sha256="cd" * 32, profile="pixel4", mean_ms="0.01")])
    (point,) = measured_points(groups, lambda sha: model)
    assert point.device == "pixel4" and point.core == "cortex-a76" and point.variant == "int8"
    assert point.cycles > 0 and point.instructions > 0 and point.measured_ms == 0.01
    assert json.dumps(point.by_class)  # plain counts per class

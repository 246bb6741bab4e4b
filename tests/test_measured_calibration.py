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

"""The threads-and-memory term of the latency model: a shared bus, a shared cache.

Unit tests (no TensorFlow, no qemu, no LLVM): the roofline's behaviour, the fit's
handling of a memory scale the points cannot see, and the profiles' memory fields.
"""

import pytest

from pipeline.devices.profiles import DEVICES, DeviceProfile, get_device
from pipeline.errors import ConfigError
from pipeline.latency import calibration as cal
from pipeline.latency.model import MEMORY_SCALE_MAX, Device, predict
from pipeline.latency.traffic import GraphTraffic, OpBytes

NUMBERS = {"compute_scale": 1.2, "op_overhead_cycles": 20_000.0, "memory_scale": 1.5}
BOARD = Device(cores=4, clock_1t_ghz=1.5, clock_ghz=1.5, cache_kb=1024, dram_gbps=12.8)


@pytest.mark.parametrize("dram", [0.0, 50e6, 1e9])
def test_more_threads_never_beat_the_bandwidth_bound(dram):
    bound_ms = NUMBERS["memory_scale"] * dram / (BOARD.dram_gbps * 1e6)
    runs = [predict(3e8, 60, dram, BOARD, dict(NUMBERS, op_overhead_cycles=0.0), t) for t in range(1, 9)]
    assert all(r.ms >= bound_ms * (1 - 1e-12) for r in runs)
    assert all(later.ms <= earlier.ms for earlier, later in zip(runs, runs[1:]))  # no join cost here
    if dram == 1e9:  # 117 ms of memory against 240 ms / T of compute: bound from 3 threads on
        assert not runs[1].memory_bound and runs[2].memory_bound
        assert runs[2].ms == runs[7].ms == pytest.approx(bound_ms)


def test_threads_share_one_bus_and_bytes_do_not_change_with_threads():
    one, four = (predict(3e8, 60, 1e9, BOARD, NUMBERS, t) for t in (1, 4))
    assert one.memory_ms == four.memory_ms
    assert four.compute_ms == pytest.approx(one.compute_ms / 4)


def test_a_working_set_inside_the_cache_leaves_one_thread_unchanged():
    g = GraphTraffic((OpBytes("CONV_2D", 300_000, 200_000, 100_000), OpBytes("ADD", 200_000, 100_000, 0)),
                     weight_bytes=100_000)
    dram = g.dram_bytes(BOARD.cache_kb * 1024)
    assert dram == 0.0
    for b in (1.0, MEMORY_SCALE_MAX):
        r = predict(3e8, g.op_count, dram, BOARD, dict(NUMBERS, memory_scale=b))
        assert r.ms == pytest.approx(r.compute_ms + r.overhead_ms) and r.memory_ms == 0.0
    # The same graph on a cache too small for it does move bytes.
    assert g.dram_bytes(256 * 1024) > 0


def test_one_thread_compute_bound_estimate_is_the_compute_plus_overhead():
    # A phone-like point: ~30 MB of DRAM at 30 GB/s is 1.5 ms, far under 100 ms of compute.
    phone = Device(cores=4, clock_1t_ghz=2.8, clock_ghz=2.4, cache_kb=2048, dram_gbps=30.0)
    r = predict(2.3e8, 60, 30e6, phone, NUMBERS)
    assert not r.memory_bound and r.ms == pytest.approx(r.compute_ms + r.overhead_ms)


def _point(i, truth, threads=1, dram=20e6):
    dev = Device(cores=4, clock_1t_ghz=2.0 + 0.1 * i, clock_ghz=1.8 + 0.1 * i, cache_kb=1024,
                 dram_gbps=10.0 + 5 * i)
    cycles, ops = 1e8 * (1 + i % 4), 60 + 20 * i
    ms = predict(cycles, ops, dram, dev, truth, threads).ms
    return cal.Point(f"p{i} {threads}t", f"m{i % 4}", f"dev{i % 3}", f"core{i % 3}", "kryo", "float32",
                     threads, ms, cycles, int(cycles * 1.5), ops, dram, dev, {})


def test_a_memory_scale_no_point_can_see_stays_at_the_peak():
    pts = [_point(i, NUMBERS, threads=1 + 3 * (i % 2)) for i in range(8)]
    assert not cal.memory_bound_points(pts, NUMBERS)
    fitted = cal.fit_params(pts)
    assert fitted["memory_scale"] == 1.0
    assert fitted["compute_scale"] == pytest.approx(NUMBERS["compute_scale"], rel=1e-6)
    assert fitted["op_overhead_cycles"] == pytest.approx(NUMBERS["op_overhead_cycles"], rel=1e-6)


def test_a_memory_scale_the_points_see_is_fitted_within_its_range():
    pts = [_point(i, NUMBERS, threads=1 + 3 * (i % 2)) for i in range(8)]
    pts += [_point(i, NUMBERS, threads=4, dram=1e9) for i in (1, 2)]
    assert len(cal.memory_bound_points(pts, NUMBERS)) == 2
    assert cal.fit_params(pts) == pytest.approx(NUMBERS, rel=1e-6)
    heavy = [_point(i, dict(NUMBERS, memory_scale=10.0), threads=4, dram=1e9) for i in (1, 2)]
    assert cal.fit_params(pts[:8] + heavy)["memory_scale"] == pytest.approx(MEMORY_SCALE_MAX)


# -- the profiles' memory system ----------------------------------------------------------

@pytest.mark.parametrize("name", DEVICES.names())
def test_every_profile_has_a_consistent_memory_system(name):
    p = get_device(name)
    assert p.cache_kb > 0 and p.dram_bus_bits in (16, 32, 64, 128, 256, 512)
    assert p.dram_gbps == pytest.approx(p.dram_bus_bits / 8 * p.dram_mts / 1000, rel=0.01)


def test_narrow_bus_boards_are_the_narrow_ones():
    assert get_device("rpi4").dram_bus_bits == 32 and get_device("rpi4").cache_kb == 1024
    assert get_device("camera-a53").dram_bus_bits == 32
    assert get_device("pixel2").dram_bus_bits == 64


def _profile(**over):
    d = get_device("rpi4").to_dict()
    d.update(over)
    return d


@pytest.mark.parametrize("data, message", [
    (_profile(dram_gbps=25.6), "dram_gbps 25.6 does not match dram_bus_bits 32 x dram_mts 3200 "
                               "(= 12.8 GB/s); expected the bus's peak within 1%"),
    (_profile(dram_bus_bits=0), "dram_bus_bits must be an integer >= 1, got 0"),
    (_profile(dram_mts="3200"), "dram_mts must be an integer >= 1, got '3200'"),
    ({k: v for k, v in _profile().items() if k != "dram_mts"}, "missing key 'dram_mts'; valid keys: "),
    (_profile(cache_kb=-1), "cache_kb must be an integer >= 1, got -1"),
])
def test_memory_fields_are_validated_with_clear_messages(data, message):
    with pytest.raises(ConfigError) as e:
        DeviceProfile.from_dict(data, source="device profile x.yaml")
    assert str(e.value).startswith("device profile x.yaml: ") and message in str(e.value)


def test_shipped_parameters_are_what_docs_latency_md_reports():
    from pipeline.latency.params import DEFAULT_PARAMS, load_params

    shipped = load_params(DEFAULT_PARAMS)
    # No published point is memory-bound, so the fit leaves the memory time at the peak.
    assert shipped.memory_scale == 1.0 and shipped.info["memory_bound_points"] == 0
    assert (shipped.info["lodo_median_abs_error_pct"], shipped.info["lodo_worst_abs_error_pct"]) == (9.09, 22.95)
    assert round(shipped.compute_scale, 3) == 1.241 and round(shipped.op_overhead_cycles) == 19644

"""The pool of independent jobs on this machine, and joining a Ray cluster that is not there.

A failed job raises an error that names it, whatever the back-end; an address that is
not a cluster is one clear line and a non-zero exit, at once (``ray.init`` alone would
retry for minutes). The jobs on a real two-node cluster are in ``tests/test_ray.py``.
"""

import pytest
from click.testing import CliRunner

from pipeline.errors import EXIT_BAD_INPUT, EXIT_DEVICE_UNAVAILABLE, ClusterError, ConfigError
from pipeline.pool import JobError, Needs, cluster_address, connect, connected, open_pool
from tests.helpers import pool_jobs
from tests.helpers.ray_cluster import free_port


def test_jobs_run_in_worker_processes_and_return_their_results():
    with open_pool(workers=2) as pool:
        futures = [pool.submit(pool_jobs.square, i, name=f"square/{i}", needs=Needs(memory_mb=64)) for i in range(4)]
        assert [f.result() for f in futures] == [0, 1, 4, 9]


def test_a_failed_job_names_itself_and_keeps_our_error_type():
    with open_pool(workers=1) as pool:
        ours = pool.submit(pool_jobs.refuse, "rpi9", name="device/rpi9/int8-qat")
        bug = pool.submit(pool_jobs.crash_by_bug, "counting", name="part/pixel4/stem")
        with pytest.raises(ConfigError, match=r"^job device/rpi9/int8-qat: rpi9 is not a valid thing$"):
            ours.result()
        with pytest.raises(JobError, match=r"^job part/pixel4/stem failed: ValueError: counting went wrong$") as e:
            bug.result()
        assert isinstance(e.value.__cause__, ValueError)


def test_a_job_whose_worker_dies_is_a_cluster_error_naming_it():
    with open_pool(workers=1) as pool:
        with pytest.raises(ClusterError, match=r"^job device/pixel4/int8-qat: its worker process died"):
            pool.submit(pool_jobs.die, name="device/pixel4/int8-qat").result()


def test_the_address_comes_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None and connect(None) is None and connected() is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address(None) == "10.0.0.1:6379"
    assert cluster_address("head:7000") == "head:7000"


def test_an_address_that_is_not_host_port_is_a_config_error():
    with pytest.raises(ConfigError, match=r"Ray address 'nowhere': expected HOST:PORT"):
        connect("nowhere")


def test_an_unreachable_head_fails_at_once_with_one_line():
    from pipeline.cli import main

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClusterError, match=f"cannot reach the Ray head at {address}"):
        connect(address)
    res = CliRunner(mix_stderr=False).invoke(main, ["build", "default", "--smoke", "--ray", address, "-q"])
    assert res.exit_code == EXIT_DEVICE_UNAVAILABLE, res.output
    assert res.stderr.strip().splitlines() == [f"error: cannot reach the Ray head at {address}: Connection refused"]
    res = CliRunner(mix_stderr=False).invoke(main, ["calibrate", "--ray", address, "-q"])
    assert res.exit_code == EXIT_DEVICE_UNAVAILABLE and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert connected() is None


def test_the_block_table_joins_the_cluster_before_measuring(capsys):
    from pipeline.search.blocktable import main

    address = f"127.0.0.1:{free_port()}"
    assert main(["--device", "pixel4", "--ray", address, "--held-out", "1", "--calibrate", "1"]) \
        == EXIT_DEVICE_UNAVAILABLE
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: cannot reach the Ray head at {address}: Connection refused"]
    assert main(["--device", "pixel4", "--ray", "nowhere"]) == EXIT_BAD_INPUT


class _CannedPool:
    """A pool whose jobs return canned results (what a worker would), recording each submission."""

    def __init__(self, results):
        self.results, self.submitted = results, []

    def submit(self, fn, *args, name, needs=Needs()):
        import concurrent.futures as cf

        self.submitted.append((fn.__name__, name, args[2] is not None))
        f = cf.Future()
        f.set_result(self.results[name])
        return f


def test_reference_runs_of_jobs_are_kept_as_measure_keeps_them(monkeypatch, tmp_path):
    """What a reference job returns lands in the cache where :func:`measure` reads it; a model
    the runtime refused is not run again; a converted file is kept; cached runs are not sent."""
    from pipeline.devices.profiles import get_device
    from pipeline.errors import RuntimeIncompatibleError
    from pipeline.latency import reference

    monkeypatch.setattr(reference, "cache_root", lambda: tmp_path / "latency")
    monkeypatch.setattr(reference, "_REFUSED", {})
    loads = reference.ModelSpec("mobilenet_v1", alpha=0.25, input_size=32, classes=2, variant="int8")
    refused = reference.ModelSpec("mobilenet_v1", alpha=0.5, input_size=32, classes=2, variant="int8")
    p4 = get_device("pixel4")
    m = {"spec": {}, "qemu_cpu": p4.qemu_cpu, "runtime": "litert", "runtime_version": "2.3.0", "runtime_key": "k",
         "model_sha256": "ab", "instructions": 7, "instructions_by_class": {c: 1 for c in reference.CLASSES},
         "block_profile": {}, "traffic": {}, "process_wall_s": 1.0}
    name = "reference/{}/" + f"{p4.qemu_cpu}/{p4.runtime}"
    pool = _CannedPool({name.format(loads.label): {"measurement": m, "tflite": b"converted"},
                        name.format(refused.label): {"refused": "pixel4 does not load it", "tflite": None}})
    assert reference.measure_all([(loads, p4), (refused, p4), (loads, p4)], pool) == 2
    assert [s[:2] for s in pool.submitted] == [("reference_job", name.format(loads.label)),
                                               ("reference_job", name.format(refused.label))]
    got = reference.measure(loads, p4)
    assert got.cached and got.instructions == 7
    assert reference.build_tflite(loads).read_bytes() == b"converted"
    with pytest.raises(RuntimeIncompatibleError, match="^pixel4 does not load it$"):
        reference.measure(refused, p4)
    assert reference.measure_all([(loads, p4), (refused, p4)], pool) == 0  # nothing sent again

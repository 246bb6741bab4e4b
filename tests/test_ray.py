"""Jobs on a real two-node Ray cluster (127.0.0.1): the same figures as on this machine.

The cluster is a head and one more node of one CPU each, started for this module with
its own temporary directory and ports, and stopped (its own processes only) at the end.
This machine's figures are made once (:func:`here`), while the cluster starts and before
it is joined when the module runs in order, so that it joins once: every join is a Ray
job of its own, whose first task on a node starts a new worker (and imports TensorFlow
there again).
A tiny build's device matrix on the cluster gives the same files and instruction counts
as on this machine; so do block-table parts; a real device that no node advertises fails
at once, naming the resource; a job that raises or whose worker dies names the job.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.errors import ClusterError, ConfigError
from pipeline.pool import JobError, Needs, connect, connected, disconnect, open_pool
from pipeline.recipe.stages import DevicesConfig
from tests.helpers import pool_jobs
from tests.helpers.ray_cluster import starting_cluster
from tests.helpers.stages import make_recipe, quiet

pytestmark = pytest.mark.integration

DEVICES = ("pixel4",)
VARIANTS = ("float32", "int8-ptq")


@pytest.fixture(scope="module")
def here(tmp_path_factory):
    """This machine's figures, made off the cluster: the tiny recipe built (device matrix
    included), and a block genotype's first table part (its stem at input 24, the
    smallest) and its emulated cost (gate 2 of a search), each measured once."""
    from models.genotype import parts
    from pipeline.build import build
    from pipeline.devices.profiles import get_device
    from pipeline.search import blocktable as bt
    from pipeline.search import cost as sc
    from pipeline.search.blockspace import sample_distinct

    g = sample_distinct(0, 1)[0]
    geometry = bt.Geometry(24)
    part = parts(g, geometry.input_shape, geometry.classes, geometry.first_stride)[0]
    spec = sc.genotype_spec(g.to_dict(), 24, 10, "int8", 1, 1)
    with on_this_machine():
        return SimpleNamespace(
            build=build(tiny_recipe(), out=tmp_path_factory.mktemp("raybuild") / "here", log=quiet),
            part=part, part_figures=bt.measure_part(part, get_device("pixel4")),
            spec=spec, cost=sc.measure_cost(spec, get_device("pixel4")))


@pytest.fixture(scope="module")
def starting():
    """The module's two-node cluster, starting in the background (see
    :func:`tests.helpers.ray_cluster.starting_cluster`), so that :func:`here` works meanwhile."""
    with starting_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def cluster(starting):
    """The two-node cluster, joined by this process for the module's tests."""
    connect(starting.started.result().address)
    return starting


@contextlib.contextmanager
def on_this_machine():
    """Leaves the cluster this process joined, if any, for the block; joins it again after."""
    address = connected()
    disconnect()
    try:
        yield
    finally:
        connect(address)


def tiny_recipe():
    r = make_recipe("mbconv", prune=False)
    return dataclasses.replace(
        r, name="raybuild", deploy_variant="int8-ptq", qat=dataclasses.replace(r.qat, enabled=False),
        convert=dataclasses.replace(r.convert, variants=VARIANTS, validation_samples=8),
        devices=DevicesConfig(targets=DEVICES, samples=2, workers=2), budgets={}).validate()


@pytest.fixture(scope="module")
def builds(here, cluster):
    """The tiny recipe built here, then its device matrix again on the cluster (a copy of
    the build without its device results: every other stage is cached)."""
    from pipeline.build import build

    root = here.build.root.parent
    shutil.copytree(root / "here", root / "cluster")
    shutil.rmtree(root / "cluster" / "devices")
    there = build(tiny_recipe(), out=root / "cluster", log=quiet)
    return here.build, there


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.device
def test_the_device_matrix_on_the_cluster_gives_the_local_figures(builds):
    here, there = builds
    assert sorted(s for s in there.summary.stages_run if s.startswith("device/")) == \
        sorted(f"device/{d}/{v}" for d in DEVICES for v in VARIANTS)
    for d in DEVICES:
        for v in VARIANTS:
            a, b = (json.loads((r.root / "devices" / d / f"{v}.json").read_text()) for r in (here, there))
            assert b["model_sha256"] == a["model_sha256"] == _sha256(there.summary.variants[v].path)
            assert b["model"] == str(Path(there.summary.variants[v].path).resolve())  # not the worker's copy
            assert b["instructions_median"] == a["instructions_median"] and a["instructions_median"] > 0
            assert b["instructions_by_class"] == a["instructions_by_class"]
            assert here.summary.devices[d][v].latency_ms == there.summary.devices[d][v].latency_ms


@pytest.mark.device
def test_block_table_parts_measured_on_the_cluster_match_the_local_ones(here, cluster):
    from pipeline.devices.profiles import get_device
    from pipeline.search.blocktable import measure_part

    p = here.part
    with open_pool(workers=1) as pool:
        there = pool.submit(measure_part, p, get_device("pixel4"), name=f"part/pixel4/{p.key()}").result()
    a, b = here.part_figures, there
    assert a["loaded"] and b["loaded"]
    assert (b["instructions"], b["instructions_by_class"], b["model_sha256"]) == \
        (a["instructions"], a["instructions_by_class"], a["model_sha256"])


def test_a_real_device_no_node_advertises_fails_at_once_naming_its_resource(cluster):
    from pipeline.build.matrix import run_device_matrix

    recipe = dataclasses.replace(tiny_recipe(), devices=DevicesConfig(targets=("rpi4@ssh://pi@camera-7",),
                                                                      samples=2))

    def stage(*args, **kwargs):
        raise AssertionError("no stage may run before the cluster is checked")

    splits = SimpleNamespace(x_test=np.zeros((2, 32, 32, 1), np.float32), y_test=np.zeros(2, np.int64))
    with pytest.raises(ClusterError) as e:
        run_device_matrix(recipe, Path("unused"), {}, splits, stage, quiet)
    assert len(str(e.value).splitlines()) == 1
    assert str(e.value).startswith(f"no node of the Ray cluster at {cluster.address} advertises "
                                   f"mm-device:camera-7: start one where the device can be reached with "
                                   f"ray start --address {cluster.address} --resources")


@pytest.mark.device
def test_a_search_prices_its_proposals_on_the_cluster(here, cluster, tmp_path, monkeypatch):
    """With nothing in this machine's latency cache, a block genotype's emulated cost (gate 2
    of a search) and one of its table parts are measured by jobs of the cluster, with the
    figures of the same runs made here."""
    from pipeline.search import blocktable as bt
    from pipeline.search import cost as sc

    spec, part, here_cost, here_part = here.spec, here.part, here.cost, here.part_figures
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path / "empty-cache"))  # this machine's only
    monkeypatch.setattr(bt, "_PRICED", {})
    logs = []
    there_cost = sc.spec_cost(spec, "g", "pixel4", "int8-ptq", 1, logs.append)
    there_part = bt.part_cost(part, "pixel4", logs.append)
    assert any("emulating" in m and "on the Ray cluster" in m for m in logs), logs
    assert any(f"measuring part {part.key()} on pixel4 on the Ray cluster" in m for m in logs), logs
    assert not there_cost["cached"] and not there_part["cached"]
    for here, there in ((here_cost, there_cost), (here_part, there_part)):
        assert here["loaded"] and there["loaded"] and here["instructions"] > 0
        assert (there["instructions"], there["instructions_by_class"], there["model_sha256"]) == \
            (here["instructions"], here["instructions_by_class"], here["model_sha256"])
    assert there_cost["latency_ms"] > 0 and there_part["latency_ms"] > 0
    # Kept in this machine's cache: the next search prices them without a job.
    logs.clear()
    assert sc.spec_cost(spec, "g", "pixel4", "int8-ptq", 1, logs.append)["cached"] and not logs


def test_a_failed_job_on_the_cluster_names_itself(cluster):
    with open_pool(workers=1) as pool:
        assert pool.submit(pool_jobs.square, 7, name="square/7", needs=Needs(memory_mb=64)).result() == 49
        ours = pool.submit(pool_jobs.refuse, "rpi9", name="device/rpi9/int8-qat", needs=Needs(memory_mb=64))
        bug = pool.submit(pool_jobs.crash_by_bug, "counting", name="part/pixel4/stem", needs=Needs(memory_mb=64))
        dies = pool.submit(pool_jobs.die, name="device/pixel4/int8-qat", needs=Needs(memory_mb=64))
        with pytest.raises(ConfigError, match=r"^job device/rpi9/int8-qat: rpi9 is not a valid thing$"):
            ours.result(timeout=120)
        with pytest.raises(JobError, match=r"^job part/pixel4/stem failed: ValueError: counting went wrong$"):
            bug.result(timeout=120)
        with pytest.raises(ClusterError, match=r"^job device/pixel4/int8-qat was lost on the Ray cluster "
                                               r"\(2 retries\): WorkerCrashedError"):
            dies.result(timeout=120)


@pytest.mark.device
def test_a_head_that_goes_away_mid_matrix_stops_the_build_with_one_line_and_a_rerun_resumes(here, tmp_path):
    """A cluster of its own (a head that runs no job, one node of one CPU) runs the device
    matrix of the tiny build (2 jobs, one at a time, each seconds of qemu); once the first
    result is written, the head is killed, and the worker node (its raylet and its
    workers) paused at the same moment, so that the other job is still out however fast
    the machine runs it. Within seconds (before Ray's own 60 s exit) the build fails with
    one line naming the head and the unfinished job; the finished result stays, and a
    rerun on this machine runs only the other."""
    import signal
    import threading
    import time

    import ray

    from pipeline.build import build
    from pipeline.pool import HEAD_GONE_S, head_lost
    from tests.helpers.ray_cluster import LocalCluster

    root = tmp_path / "headless"
    shutil.copytree(here.build.root, root)
    shutil.rmtree(root / "devices")
    c = LocalCluster(head_cpus=0)
    killed = {}

    def kill_head_after_first_result():
        while not killed and time.monotonic() < deadline:
            if list((root / "devices").glob("*/*.json")):
                killed["at"] = time.monotonic()
                c.pause_nodes()
                os.killpg(c.head_group, signal.SIGKILL)
                return
            time.sleep(0.02)

    with on_this_machine():
        try:
            c.start()
            connect(c.address)
            deadline = time.monotonic() + 300
            watcher = threading.Thread(target=kill_head_after_first_result, daemon=True)
            watcher.start()
            with pytest.raises(ClusterError) as e:
                build(tiny_recipe(), out=root, log=quiet)
            failed_at = time.monotonic()
            watcher.join(1)
            assert killed, "the head was never killed: no device result appeared"
            assert head_lost()
        finally:
            disconnect()
            c.stop()
            ray.shutdown()  # the head is gone: nothing is left to wait on
        assert HEAD_GONE_S <= failed_at - killed["at"] < 45
        message = str(e.value)
        assert "\n" not in message
        assert f"the Ray head at {c.address} went away (job device/" in message and "run the command again" in message
        finished = sorted(p.parent.name + "/" + p.stem for p in (root / "devices").glob("*/*.json"))
        assert 1 <= len(finished) < len(DEVICES) * len(VARIANTS)
        for p in (root / "devices").glob("*/*.json"):
            json.loads(p.read_text())  # complete files only
        again = build(tiny_recipe(), out=root, log=quiet)
    ran = sorted(s[len("device/"):] for s in again.summary.stages_run if s.startswith("device/"))
    everything = sorted(f"{d}/{v}" for d in DEVICES for v in VARIANTS)
    assert ran == sorted(set(everything) - set(finished))


def test_a_head_that_goes_away_between_jobs_is_left_before_ray_ends_the_process():
    """No job is out (the command works on its own, e.g. trains): once the head is gone
    the process leaves Ray (whose driver would end the process 60 s after losing the head)
    and the next job fails at once with one line naming the head."""
    import signal
    import time

    import ray

    from pipeline.pool import HEAD_GONE_S, head_lost
    from tests.helpers.ray_cluster import LocalCluster

    c = LocalCluster(head_cpus=0)
    with on_this_machine():
        try:
            c.start()
            connect(c.address)
            os.killpg(c.head_group, signal.SIGKILL)
            killed = time.monotonic()
            while not head_lost() and time.monotonic() - killed < 40:
                time.sleep(0.2)
            assert head_lost() and HEAD_GONE_S <= time.monotonic() - killed < 40
            deadline = time.monotonic() + 10
            while ray.is_initialized() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not ray.is_initialized()
            with open_pool(1) as pool, pytest.raises(ClusterError) as e:
                pool.submit(pool_jobs.square, 3, name="after")
            assert str(e.value).startswith(f"the Ray head at {c.address} went away (no job can be sent)")
        finally:
            disconnect()
            c.stop()


def _listening_addresses():
    """The local addresses of every listening TCP socket of this network namespace."""
    found = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                found.add(local.split(":")[0].rjust(size, "0"))
    return found


#: 127.0.0.1 as /proc/net/tcp writes it (little-endian hex), and as tcp6 writes ::1 and
#: the IPv4-mapped ::ffff:127.0.0.1; and the wildcard addresses 0.0.0.0 and ::.
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
WILDCARD = {"00000000", "00000000000000000000000000000000"}


def _interfaces():
    """The network interfaces of this process's namespace (/proc/self/net/dev; /sys/class/net
    shows the namespace sysfs was mounted in)."""
    return {line.split(":")[0].strip() for line in Path("/proc/self/net/dev").read_text().splitlines()[2:]}


def test_the_cluster_is_reachable_on_loopback_only(cluster):
    """Every node says 127.0.0.1, this namespace has no interface but loopback, and every
    socket listening now (the cluster's among them) is on loopback or the wildcard, which
    here is loopback too: the session runs in a network namespace of its own
    (tests/helpers/loopback.py), since Ray itself would listen on every interface."""
    import ray

    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    assert _interfaces() == {"lo"}, (
        f"interfaces {sorted(_interfaces())}: the test session is not in a network namespace of its own "
        "(run the suite as root; see tests/helpers/loopback.py)")
    listening = _listening_addresses()
    assert listening & LOOPBACK, "no socket listens on loopback: the cluster is not running"
    assert listening <= LOOPBACK | WILDCARD, f"sockets on other addresses: {sorted(listening - LOOPBACK - WILDCARD)}"

"""A search whose trainings run on a real Ray cluster (127.0.0.1): a head that runs no job
and two worker nodes of one CPU each.

The recipe is a grid of two MobileNetV1 widths at 32x32 (64 training images, one float
epoch, no compression): the proxy trainings and the finalist's full recipe are real
builds, run as jobs on the cluster and unpacked into the search folder; the device cost
of each candidate (an emulated run, on this machine either way) is a stand-in. The
search runs here, then on the cluster with ``search.concurrency: 1``, where, once the
first trial is stored, the worker node running a job is killed mid-job: the job runs
again on the other node, and the search chooses as the local one, with the same
figures, keeps every stored trial, completes and resumes without training.
Without a cluster: the concurrency key's validation, an unreachable ``--ray``, and
grid and block trials two at once with stand-in trainings.
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.pool import connect
from pipeline.recipe.load import load_recipe
from pipeline.search import space as ss
from pipeline.search import study as se
from tests.helpers.ray_cluster import starting_cluster
from tests.helpers.stages import quiet
from tests.test_blockstudy import stand_ins  # noqa: F401 (a fixture)

RECIPE = {
    "name": "raysearch",
    "data": {"dataset": "shapes", "train_samples": 64, "val_samples": 16, "test_samples": 16},
    "model": {"family": "mobilenet_v1", "alpha": 0.25, "input_size": 32, "channels": 1, "first_stride": 1},
    "train": {"epochs": 1, "batch_size": 32},
    "prune": {"enabled": False},
    "qat": {"enabled": False},
    "convert": {"variants": ["float32"], "validation_samples": 8},
    "deploy_variant": "float32",
    "devices": {"samples": 2},
    "search": {"families": ["mobilenet_v1"], "alphas": [0.25, 0.5], "input_sizes": [32], "trials": 2,
               "proxy_epochs": 1, "finalists": 1},
}
LATENCY_MS = {"mobilenet_v1-0.25-32": 0.4, "mobilenet_v1-0.5-32": 0.8}


def _recipe(tmp_path, **search):
    p = tmp_path / "raysearch.yaml"
    p.write_text(yaml.safe_dump({**RECIPE, "search": {**RECIPE["search"], **search}}))
    return load_recipe(p)


# -- the concurrency key ---------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    (0, "recipe.search.concurrency: expected a positive integer, got 0"),
    (-2, "recipe.search.concurrency: expected a positive integer, got -2"),
    (1.5, "recipe.search.concurrency: expected an integer, got 1.5"),
    (True, "recipe.search.concurrency: expected an integer, got True"),
    ("4", "recipe.search.concurrency: expected an integer, got '4'"),
    (None, "recipe.search.concurrency: expected an integer, got None"),
])
def test_bad_concurrency_is_named(tmp_path, value, message):
    with pytest.raises(ConfigError) as e:
        _recipe(tmp_path, concurrency=value)
    assert str(e.value) == message


def test_concurrency_defaults_to_one_and_does_not_change_the_study(tmp_path):
    one = _recipe(tmp_path)
    four = _recipe(tmp_path, concurrency=4)
    assert one.search.concurrency == 1 and four.search.concurrency == 4
    budget = ss.Budget(1.0)
    # Stored trials stay valid whatever the concurrency: an interrupted search resumes with another.
    assert se.study_key(one, "pixel4", "float32", budget) == se.study_key(four, "pixel4", "float32", budget)


def test_search_at_an_address_where_nothing_answers_fails_at_once(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    assert "--ray ADDRESS" in CliRunner().invoke(main, ["search", "--help"]).output
    res = CliRunner().invoke(main, ["search", str(tmp_path / "r.yaml"), "--device", "pixel4", "--latency-ms", "1",
                                    "--variant", "float32", "--out", str(tmp_path / "s"), "--ray", "127.0.0.1:1"])
    assert res.exit_code == 3, res.output
    assert res.output.startswith("error: cannot reach the Ray head at 127.0.0.1:1: ")
    assert not (tmp_path / "s").exists()


# -- several trials at once, with stand-ins ----------------------------------------------------

class Concurrent:
    """Stand-in proxy trainings in threads; the most at once is kept. The first two wait for
    each other (a barrier, not a sleep, so that a loaded machine cannot make them miss each
    other): with one training at a time the barrier breaks after ``timeout_s`` and the
    trial fails."""

    def __init__(self, top1, timeout_s: float = 120.0):
        self.top1, self.running, self.most, self.trained, self.started = top1, 0, 0, [], 0
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(4)
        self.first_two = threading.Barrier(2, timeout=timeout_s)

    def start(self, builds, recipe, arch, root, log, epochs=None):
        def train():
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.started += 1
                first_two = self.started <= 2
            if first_two:
                self.first_two.wait()
            with self.lock:
                self.running -= 1
                self.trained.append((arch.name, epochs))
            top1 = self.top1(arch.name, epochs)
            return {"proxy_val_top1": top1, "proxy_test_top1": top1, "proxy_wall_s": 0.2}

        return self.pool.submit(train)


def test_grid_trials_run_two_at_once_and_are_all_stored(tmp_path, stand_in_cost, monkeypatch):
    from optuna.trial import TrialState

    recipe = _recipe(tmp_path, concurrency=2)
    jobs = Concurrent(lambda name, epochs: {"mobilenet_v1-0.25-32": 60.0, "mobilenet_v1-0.5-32": 70.0}[name])
    monkeypatch.setattr(se, "start_proxy", jobs.start)
    study, ran = se.run_trials(recipe, "pixel4", "float32", ss.Budget(1.0), 4, tmp_path,
                               lambda m: None, SimpleNamespace(inline=False, concurrency=2))
    assert ran == 2 and jobs.most == 2 and sorted(n for n, _ in jobs.trained) == sorted(LATENCY_MS)
    told = {t.user_attrs["candidate"]: (t.state, t.value) for t in study.trials}
    assert told == {"mobilenet_v1-0.25-32": (TrialState.COMPLETE, 60.0),
                    "mobilenet_v1-0.5-32": (TrialState.COMPLETE, 70.0)}


def test_block_trials_run_two_at_once_through_their_rungs(tmp_path, stand_ins, monkeypatch):  # noqa: F811
    from optuna.trial import TrialState
    from pipeline.search import blockstudy as bs
    from tests.test_blockstudy import StandInTable, _recipe as blocks_recipe

    recipe = blocks_recipe(tmp_path, concurrency=2, trials=3)
    jobs = Concurrent(lambda name, epochs: 50.0 + 2 * int(name[1:3], 16) % 40 + epochs)
    monkeypatch.setattr(bs, "start_proxy", jobs.start)
    budget = ss.Budget(2.0)  # every genotype fits (at most 1.5 ms by the stand-in): each proposal is trained
    study = se.open_study(recipe, "camera-a53", "int8-qat", budget, tmp_path, lambda m: None)
    screen = StandInTable(recipe, "camera-a53", "int8-qat", 10, budget, lambda m: None)
    phase = bs.BlockPhase(study, recipe, "camera-a53", "int8-qat", budget, 10, tmp_path, lambda m: None,
                          screen=screen, builds=SimpleNamespace(inline=False, concurrency=2))
    counts = phase.run(0.0)
    assert counts["trained"] == 3 and jobs.most == 2 and not stand_ins["trained"]
    trained = {t.user_attrs["candidate"]: t for t in study.trials if t.user_attrs.get("rungs")}
    assert len(trained) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trained.values())
    for name, t in trained.items():  # every rung a job; a promoted trial trained 1 then 3 epochs
        epochs = [e for n, e in jobs.trained if n == name]
        assert epochs in ([1], [1, 3]) and set(t.user_attrs["rungs"]) == {str(e) for e in epochs}
        assert (t.state == TrialState.COMPLETE) == (epochs == [1, 3])
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


# -- on the cluster ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """A head that runs no job and two nodes of one CPU each: every job runs on a node that
    can be killed while the other takes its jobs over. It starts in the background
    (``started``, a future) while :func:`searches` searches here, then joins it; it is left
    and stopped at the end."""
    with starting_cluster(extra_nodes=2, head_cpus=0) as c:
        yield c


def _stand_in_cost(recipe, cand, device, variant, classes, log):
    return {"candidate": cand.name, "loaded": True, "latency_ms": LATENCY_MS[cand.name], "memory_mb": 1.0,
            "size_kb": 50.0, "cached": True}


@pytest.fixture
def stand_in_cost(monkeypatch):
    """The emulated cost of a candidate (tier 1) replaced; both candidates fit 1 ms."""
    monkeypatch.setattr(se, "candidate_cost", _stand_in_cost)


def _top1(result):
    return {r["candidate"]: r["proxy_val_top1"] for r in result.rows}


@pytest.fixture(scope="module")
def searches(cluster, tmp_path_factory):
    """The search here (while the cluster starts), then on the cluster, where the node running a job is killed
    (SIGKILL to its process group, its ``ray start``, and to its workers) while it runs
    it, once the first trial is stored.

    Returns:
        (the recipe, the local result, the cluster's, its folder, {number: (candidate,
        value)} of the trials stored before the kill, the killed worker's process title).
    """
    mp = pytest.MonkeyPatch()
    mp.setattr(se, "candidate_cost", _stand_in_cost)
    root = tmp_path_factory.mktemp("searches")
    recipe = _recipe(root)
    try:
        here = se.search(recipe, "pixel4", ss.Budget(1.0), variant="float32", out=root / "here", log=quiet,
                         final_build=False)
        connect(cluster.started.result().address)
        out, result, errors = root / "there", {}, []

        def run():
            try:
                result["search"] = se.search(recipe, "pixel4", ss.Budget(1.0), variant="float32", out=out,
                                             log=quiet, final_build=False)
            except BaseException as e:  # reported by the tests
                errors.append(e)

        thread = threading.Thread(target=run)
        thread.start()
        stored = _wait_for_a_stored_trial(out, thread)
        busy = _wait_for_a_running_job(cluster, thread)
        cluster.kill_node(busy[0])
        thread.join(timeout=300)
        assert not thread.is_alive(), "the search did not end after the worker node was lost"
        assert not errors, errors
        yield recipe, here, result["search"], out, stored, busy[1]
    finally:
        mp.undo()


@pytest.mark.integration
def test_the_cluster_search_chooses_as_the_local_one(searches):
    _, here, there, out, _, _ = searches
    assert there.chosen["candidate"] == here.chosen["candidate"]
    assert _top1(there) == _top1(here)
    assert [f["val_top1"] for f in there.finalists] == [f["val_top1"] for f in here.finalists]
    # Built on the nodes, kept where a local search keeps them, paths included.
    for name in LATENCY_MS:
        assert (out / "proxy" / name / "keras" / "float.h5").is_file()
    chosen = out / "finalists" / there.chosen["candidate"]
    summary = json.loads((chosen / "summary.json").read_text())
    assert summary["variants"]["float32"]["path"].startswith(str(chosen.resolve()))
    assert not (chosen / ".lock").exists()  # the node's lock stays there


@pytest.mark.integration
def test_a_lost_worker_node_loses_no_stored_trial(searches):
    """A worker node was killed while it ran a job, once the first trial was stored: the
    job ran again on the other node; every stored trial is kept and the search completed."""
    from optuna.trial import TrialState

    recipe, _, there, out, stored, killed = searches
    assert killed.startswith("ray::") and "IDLE" not in killed
    after = {t.number: t for t in _study(out).trials}
    for number, (candidate, value) in stored.items():
        assert after[number].state == TrialState.COMPLETE
        assert (after[number].user_attrs["candidate"], after[number].value) == (candidate, value)
    assert set(_top1(there)) == set(LATENCY_MS) and there.chosen["candidate"] in LATENCY_MS
    # Resumed on the head alone: every trial stored; the finalist's build, sent to the node
    # and back, is cached.
    logs = []
    again = se.search(recipe, "pixel4", ss.Budget(1.0), variant="float32", out=out, log=logs.append,
                      final_build=False)
    assert again.trials_run == 0 and again.chosen["candidate"] == there.chosen["candidate"]
    assert any("resuming" in m for m in logs) and not any("[train] epoch" in m for m in logs)


def _study(out):
    import optuna

    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def _wait_for_a_running_job(cluster, thread, timeout_s: float = 240.0):
    """``(process group, title)`` of a node's worker that runs a job, once there is one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and thread.is_alive():
        busy = cluster.running_job()
        if busy is not None:
            return busy
        time.sleep(0.2)
    raise AssertionError("no job ran on a worker node after the first stored trial")


def _wait_for_a_stored_trial(out, thread, timeout_s: float = 240.0):
    """{number: (candidate, value)} of the complete trials, once there is one."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and thread.is_alive():
        if (out / "study.db").exists():
            try:
                done = [t for t in _study(out).trials if t.state == TrialState.COMPLETE]
            except ValueError:  # the study is not created yet
                done = []
            if done:
                return {t.number: (t.user_attrs["candidate"], t.value) for t in done}
        time.sleep(0.5)
    raise AssertionError("no trial was stored in time")

"""How the cluster's jobs scale with nodes: measured on 1 and 2 nodes, modelled beyond.

Two workloads, each made of the real jobs the commands submit (:mod:`pipeline.pool`):

- **search**: ``--candidates`` proxy trainings (:func:`pipeline.search.jobs.build_job`,
  the job of ``search --ray``), one per distinct block-space genotype at 32x32 on a small
  ``shapes`` set, each returning its build folder as an archive that this process
  unpacks, as a search does;
- **ci**: ``--models`` int8 models x every device profile (8), one emulated run each
  (:func:`pipeline.build.matrix.emulate`, the job of ``build --ray``'s device matrix).

Each workload runs on a real local Ray cluster (:class:`tests.helpers.ray_cluster.LocalCluster`,
127.0.0.1): a head that runs no job and ``N`` worker nodes of one CPU each, for each
``N`` of ``--nodes``. Every job records when it started and ended on its node.

**The model.** A run on one node gives each job's own time ``d_i``, the worker start-up
``w`` (what the first job of a fresh worker takes beyond the median: TensorFlow's and
the runtime's import), and the per-job overhead ``o`` (scheduling, sending the
arguments, fetching the result: the one-node wall time less the jobs' own times, per
job). For ``N`` nodes of one slot each, the jobs are dealt in submission order to
whichever slot frees first (Ray's scheduler does the same for equal jobs), each slot
paying ``w`` once and ``o`` per job; this process's serial work per result (unpacking
an archive: ``u_i``, measured) runs beside them, so the wall time is the later of the
last slot's end and ``sum(u_i)``. The two-node measurement checks the model before it
is used for 8 and 32 nodes.

Run: ``python -m benchmarks.ray_scaling [--nodes 1 2] [--candidates 64] [--models 10]``
(about 15 minutes on two cores). Prints a Markdown table; ``--json`` writes the raw
per-job times.
"""

import argparse
import dataclasses
import heapq
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from pipeline.table import Table

MODELLED_NODES = (8, 32)


# -- the jobs, timed where they run ---------------------------------------------------------

def _where() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:8] + f"/{os.getpid()}"
    except Exception:
        pass
    return f"local/{os.getpid()}"


def timed_build(recipe, prior) -> Dict[str, Any]:
    """Job: :func:`pipeline.search.jobs.build_job`, with its start and end times and worker."""
    from pipeline.search.jobs import build_job

    start = time.time()
    summary, wall, _lines, where, data = build_job(recipe, prior)
    return {"start": start, "end": time.time(), "worker": _where(), "archive": data, "where": where}


def timed_emulate(model: bytes, filename: str, device: str, x, y) -> Dict[str, Any]:
    """Job: :func:`pipeline.build.matrix.emulate`, with its start and end times and worker."""
    from pipeline.build.matrix import emulate

    start = time.time()
    res = emulate(model, filename, device, x, y)
    return {"start": start, "end": time.time(), "worker": _where(), "instructions": res.get("instructions_median")}


# -- the workloads ----------------------------------------------------------------------------

@dataclasses.dataclass
class Job:
    name: str
    fn: Callable
    args: Tuple
    after: Callable[[Dict[str, Any]], None] = lambda r: None  # this process's work on the result


def search_jobs(candidates: int, seed: int, work: Path) -> List[Job]:
    from pipeline.recipe.schema import Recipe
    from pipeline.search.blockspace import sample_distinct
    from pipeline.search.blockstudy import genotype_arch
    from pipeline.search.jobs import unpack
    from pipeline.search.recipes import proxy_recipe

    base = Recipe.from_dict({
        "name": "scaling", "data": {"dataset": "shapes", "train_samples": 256, "val_samples": 64, "test_samples": 64},
        "model": {"family": "mobilenet_v1", "alpha": 0.25, "input_size": 32, "channels": 1, "first_stride": 1},
        "train": {"epochs": 1, "batch_size": 64}, "prune": {"enabled": False}, "qat": {"enabled": False},
        "convert": {"variants": ["float32"], "validation_samples": 8}, "deploy_variant": "float32",
        "search": {"proxy_epochs": 1}}).validate()
    jobs = []
    for i, g in enumerate(sample_distinct(seed, candidates)):
        recipe = proxy_recipe(base, genotype_arch(g, 32))
        dest = work / "proxy" / f"{i:03d}"

        def after(r, dest=dest):
            t = time.perf_counter()
            unpack(r.pop("archive"), dest)
            r["serial_s"] = time.perf_counter() - t
        jobs.append(Job(f"proxy/{i:03d}", timed_build, (recipe, None), after))
    return jobs


def ci_jobs(models: int, seed: int) -> List[Job]:
    from pipeline.devices.profiles import DEVICES
    from pipeline.latency.reference import build_tflite
    from pipeline.search.blockspace import sample_distinct
    from pipeline.search.cost import genotype_spec

    rng = np.random.default_rng(seed)
    x = rng.random((2, 32, 32, 1), dtype=np.float32)
    y = np.zeros(2, dtype=np.int64)
    jobs = []
    for i, g in enumerate(sample_distinct(seed + 1, models)):
        spec = genotype_spec(g.to_dict(), 32, 10, "int8", 1, 1)
        data = Path(build_tflite(spec, lambda m: None)).read_bytes()
        for device in DEVICES:
            jobs.append(Job(f"device/{device}/m{i:02d}", timed_emulate, (data, f"m{i:02d}.tflite", device, x, y)))
    return jobs


# -- one run on N nodes -----------------------------------------------------------------------

def run_on_cluster(nodes: int, make_jobs: Callable[[], List[Job]], log) -> Dict[str, Any]:
    from pipeline.pool import Needs, connect, disconnect, open_pool
    from tests.helpers.ray_cluster import LocalCluster

    jobs = make_jobs()
    cluster = LocalCluster(extra_nodes=nodes, head_cpus=0)
    try:
        cluster.start()
        connect(cluster.address)
        log(f"  {len(jobs)} jobs on {nodes} node(s)")
        t0 = time.time()
        records: List[Dict[str, Any]] = []
        with open_pool(nodes) as pool:
            futures = [(j, pool.submit(j.fn, *j.args, name=j.name, needs=Needs(cpus=1, memory_mb=1024)))
                       for j in jobs]
            for j, f in futures:
                r = f.result()
                j.after(r)
                r.pop("archive", None)
                r["name"] = j.name
                records.append(r)
        wall = time.time() - t0
    finally:
        disconnect()
        cluster.stop()
    for r in records:
        r["start"] -= t0
        r["end"] -= t0
    return {"nodes": nodes, "wall_s": wall, "jobs": records}


# -- the model --------------------------------------------------------------------------------

@dataclasses.dataclass
class Model:
    """Per-job figures from a one-node run (see the module docstring)."""

    durations: List[float]   # d_i, in submission order, without the worker start-up
    startup_s: float         # w
    overhead_s: float        # o
    serial_s: List[float]    # u_i

    @classmethod
    def from_run(cls, run: Dict[str, Any]) -> "Model":
        jobs = run["jobs"]
        d = [r["end"] - r["start"] for r in jobs]
        firsts = _first_per_worker(jobs)
        rest = [x for i, x in enumerate(d) if i not in firsts] or d
        typical = statistics.median(rest)
        startup = max(0.0, statistics.mean(d[i] for i in firsts) - typical)
        base = [x - startup if i in firsts else x for i, x in enumerate(d)]
        slots = len({r["worker"].split("/")[0] for r in jobs})
        overhead = max(0.0, (run["wall_s"] * slots - sum(d)) / len(d))
        return cls(base, startup, overhead, [r.get("serial_s", 0.0) for r in jobs])

    def wall_s(self, slots: int) -> float:
        free = [(0.0, k) for k in range(slots)]
        started = set()
        end = 0.0
        for d in self.durations:
            t, k = heapq.heappop(free)
            t += self.overhead_s + d + (self.startup_s if k not in started else 0.0)
            started.add(k)
            end = max(end, t)
            heapq.heappush(free, (t, k))
        return max(end, sum(self.serial_s))


def _first_per_worker(jobs: Sequence[Dict[str, Any]]) -> set:
    first: Dict[str, Tuple[float, int]] = {}
    for i, r in enumerate(jobs):
        if r["worker"] not in first or r["start"] < first[r["worker"]][0]:
            first[r["worker"]] = (r["start"], i)
    return {i for _, i in first.values()}


# -- the table --------------------------------------------------------------------------------

def table(results: Dict[str, List[Dict[str, Any]]]) -> str:
    rows = []
    headers = (["workload", "jobs", "per job s (median)", "worker start-up s", "overhead s/job",
               "1 node s", "2 nodes s (model)", "8 nodes s (model)", "32 nodes s (model)", "speed-up at 32"])
    for workload, runs in results.items():
        by_nodes = {r["nodes"]: r for r in runs}
        one = by_nodes[min(by_nodes)]
        model = Model.from_run(one)
        cells = [workload, str(len(one["jobs"])), f"{statistics.median(model.durations):.1f}",
                 f"{model.startup_s:.1f}", f"{model.overhead_s:.2f}", f"{one['wall_s']:.0f}"]
        two = by_nodes.get(2)
        cells.append(f"{two['wall_s']:.0f} ({model.wall_s(2):.0f})" if two else f"({model.wall_s(2):.0f})")
        for n in MODELLED_NODES:
            cells.append(f"({model.wall_s(n):.0f})")
        cells.append(f"{one['wall_s'] / model.wall_s(MODELLED_NODES[-1]):.1f}x")
        rows.append(cells)
    checks = []
    for workload, runs in results.items():
        one = min(runs, key=lambda r: r["nodes"])
        for run in runs:
            if run is not one:
                n = run["nodes"]
                checks.append(f"- {workload} on {n} nodes: measured {run['wall_s']:.0f} s; modelled "
                              f"{Model.from_run(one).wall_s(n):.0f} s from the one-node run, "
                              f"{Model.from_run(run).wall_s(n):.0f} s from this run's own job times")
    return "\n".join(Table(headers, rows).markdown() + ["", "Model checks:"] + checks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ray_scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="worker nodes of the measured runs")
    ap.add_argument("--candidates", type=int, default=64, help="proxy trainings of the search workload")
    ap.add_argument("--models", type=int, default=10, help="models of the CI workload (each on 8 devices)")
    ap.add_argument("--only", choices=("search", "ci"), help="one workload only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every run's per-job times here")
    args = ap.parse_args(argv)
    if 1 not in args.nodes:
        ap.error("--nodes must include 1: the model is fitted on the one-node run")

    def log(m):
        print(m, file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="mm-scaling-"))
    results: Dict[str, List[Dict[str, Any]]] = {}
    try:
        workloads = {"search": lambda: search_jobs(args.candidates, args.seed, work),
                     "ci": lambda: ci_jobs(args.models, args.seed)}
        for name, make in workloads.items():
            if args.only and name != args.only:
                continue
            log(f"[scaling] {name}")
            results[name] = []
            for n in sorted(args.nodes):
                shutil.rmtree(work / "proxy", ignore_errors=True)
                run = run_on_cluster(n, make, log)
                log(f"  {n} node(s): {run['wall_s']:.0f} s")
                results[name].append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

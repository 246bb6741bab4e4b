"""Tier 2 of the search: accuracy, by training.

Only candidates within every budget are trained, with the proxy schedule (float
training, ``proxy_epochs``, ``proxy_train_samples``); their float top-1 on the
validation split ranks them. The best ``finalists`` get the full recipe; their
deploy variant's top-1 on the validation split picks the choice.

The trainings run where :class:`pipeline.search.jobs.Builds` puts them: here, or as jobs
of a pool (worker processes or a Ray cluster), unpacked into the same folders.
"""

import concurrent.futures as cf
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from pipeline.recipe.schema import Recipe
from pipeline.search.jobs import FULL_MEMORY_MB, PROXY_MEMORY_MB, Builds
from pipeline.search.recipes import chosen_recipe, proxy_recipe
from pipeline.search.space import Arch, Budget, Candidate
from pipeline.errors import Log


def _indent(log: Log) -> Log:
    return lambda m: log(f"  {m}")


def proxy_dir(recipe: Recipe, name: str, root: Path, epochs: Optional[int] = None) -> Path:
    """Where a candidate's proxy is built: ``proxy/<name>``, or ``proxy/<name>-e<epochs>``
    for a longer rung than ``search.proxy_epochs``."""
    if epochs is None or epochs == recipe.search.proxy_epochs:
        return root / "proxy" / name
    return root / "proxy" / f"{name}-e{epochs}"


def then(future: cf.Future, fn: Callable[[Any], Any]) -> cf.Future:
    """A future of ``fn(future's result)``; a failure of either is its failure."""
    outer: cf.Future = cf.Future()

    def done(f: cf.Future) -> None:
        try:
            outer.set_result(fn(f.result()))
        except BaseException as e:  # whatever happens, the caller is not left waiting
            outer.set_exception(e)

    future.add_done_callback(done)
    return outer


def start_proxy(builds: Builds, recipe: Recipe, cand: Union[Arch, Candidate], root: Path, log: Log,
                epochs: Optional[int] = None) -> cf.Future:
    """Starts :func:`proxy_accuracy`'s build on ``builds``; a future of its figures."""
    out = proxy_dir(recipe, cand.name, root, epochs)
    future = builds.submit(proxy_recipe(recipe, cand, epochs), out, f"proxy/{out.name}", PROXY_MEMORY_MB,
                           _indent(log))
    return then(future, lambda res: _proxy_figures(res, out))


def _proxy_figures(res, out: Path) -> Dict[str, Any]:
    s = res.summary
    return {"proxy_val_top1": float(s.float_val_top1), "proxy_test_top1": float(s.float_top1),
            "params": int(s.params), "macs": int(s.macs), "proxy_dir": str(out),
            "proxy_wall_s": round(res.wall_s, 1)}


def proxy_accuracy(recipe: Recipe, cand: Union[Arch, Candidate], root: Path, log: Log,
                   epochs: Optional[int] = None, builds: Optional[Builds] = None) -> Dict[str, Any]:
    """Builds ``cand``'s proxy recipe (``epochs``, default ``search.proxy_epochs``) under
    ``root/proxy/`` (float only, no devices), on ``builds`` (default: here, or the cluster
    this process joined).

    Returns:
        the proxy's validation and test top-1, parameters, MACs, directory and wall time.
    """
    if builds is None:
        with Builds() as here:
            return start_proxy(here, recipe, cand, root, log, epochs).result()
    return start_proxy(builds, recipe, cand, root, log, epochs).result()


def arch_of(row: Dict[str, Any]) -> Arch:
    """The candidate of a search table row."""
    return Arch(row["candidate"], dict(row["model"]))


def finalists(recipe: Recipe, rows: Sequence[Dict[str, Any]], device: str, variant: str, budget: Budget,
              root: Path, log: Log, builds: Optional[Builds] = None) -> List[Dict[str, Any]]:
    """Builds the full recipe of the best proxies (``recipe.search.finalists``), without devices,
    on ``builds`` (default: here, or the cluster this process joined), up to its
    concurrency at once.

    The best are those of the highest successive-halving rung reached, by their top-1
    at that rung (the grid has one rung).
    """
    if builds is None:
        with Builds() as here:
            return finalists(recipe, rows, device, variant, budget, root, log, here)
    trained = sorted((r for r in rows if r.get("proxy_val_top1") is not None),
                     key=lambda r: (-r.get("rung", 0), -r.get("rung_val_top1", r["proxy_val_top1"]),
                                    r["latency_ms"]))[:recipe.search.finalists]
    out = []
    for start in range(0, len(trained), builds.concurrency):
        started = []
        for r in trained[start:start + builds.concurrency]:
            arch = arch_of(r)
            where = root / "finalists" / arch.name
            log(f"[search] finalist {arch.name}: full recipe -> {where}")
            full = chosen_recipe(recipe, arch, device, variant, budget)
            started.append((r, arch, where, builds.submit(full, where, f"finalist/{arch.name}", FULL_MEMORY_MB,
                                                          _indent(log))))
        for r, arch, where, future in started:
            res = future.result()
            v = res.summary.variants[variant]
            out.append({"candidate": arch.name, "dir": str(where), "val_top1": v.val_top1,
                        "test_top1": v.top1, "float_test_top1": res.summary.float_top1,
                        "size_kb": v.size_bytes / 1024, "latency_ms": r["latency_ms"]})
            log(f"[search] finalist {arch.name}: {variant} val top-1 {out[-1]['val_top1']:.1f}%, "
                f"test top-1 {v.top1:.1f}%")
    return out


def final_build(recipe: Recipe, root: Path, device: str, variant: str, log: Log) -> Dict[str, Any]:
    """Builds the chosen recipe completely (device checks, report, bundle) in ``root``.

    Returns:
        the build's budget verdicts and the deployed variant's figures on the device.
    """
    from pipeline.build import build

    res = build(recipe, out=root, log=_indent(log), run_devices=True)
    s = res.summary
    dev = s.device(device, variant)
    return {"dir": str(res.root), "budgets_ok": res.budgets_ok,
            "budgets": [b.to_dict() for b in res.budgets],
            "top1": s.variants[variant].top1,
            "device_top1": dev.top1 if dev else None, "latency_ms": dev.latency_ms if dev else None,
            "memory_mb": ((dev.peak_memory_bytes if dev else None) or 0) / 2**20,
            "size_kb": s.variants[variant].size_bytes / 1024,
            "instructions": dev.instructions_per_inference if dev else None}

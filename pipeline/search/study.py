"""Device-aware model search: the most accurate model within a device's budgets.

The search looks at candidates of the recipe's ``search`` space (family x width
multiplier x input size, :mod:`pipeline.search.space`) in two tiers:

1. **Cost** (:mod:`pipeline.search.cost`): one emulated run of a random-weight
   model gives the estimated latency, memory and size on the device (cached).
2. **Accuracy** (:mod:`pipeline.search.proxy`): only candidates within every
   budget are trained with the proxy schedule; the best ``finalists`` get the full
   recipe; the one whose deploy variant is best on the validation split is the
   choice. Its recipe is written as ``chosen.yaml`` and built completely, device
   checks included.

Trials live in an Optuna study (SQLite in the search directory): an interrupted
search continues from its stored trials. The trainings run where
:class:`pipeline.search.jobs.Builds` puts them (here, or as jobs on a Ray cluster),
``search.concurrency`` trials at once (ask and tell; with 1, one after the other). The study's name holds a hash of
everything that makes a result valid (the recipe without ``trials``/``finalists``,
device, variant, budgets, threads), so a changed budget or space starts its own
study instead of reusing incompatible results.

Layout of a search directory (default ``build/search/<recipe>-<device>/``)::

    study.db  search.json  pareto.md  pareto.png  chosen.yaml
    proxy/<candidate>/     proxy builds (float only)
    finalists/<candidate>/ full builds; the chosen one also has devices/, report, bundle/
"""

import concurrent.futures as cf
import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pipeline.errors import BudgetExceededError, Log
from pipeline.latency.reference import noop
from pipeline.recipe.schema import Recipe
from pipeline.search.cost import COST_VERSION, candidate_cost
from pipeline.search.pareto import pareto_front, write_outputs
from pipeline.search.blockstudy import BlockPhase, reference_rows
from pipeline.search.floor import below_floor, space_floor, warm_start
from pipeline.search.jobs import Builds, done_future, remove_staging
from pipeline.search.proxy import final_build as build_final, finalists, proxy_accuracy, start_proxy
from pipeline.search.recipes import search_command, write_chosen  # noqa: F401 (search_command: the API)
from pipeline.search.space import Budget, Candidate, check_variant, space
from pipeline.store.atomic import json_hash
from pipeline.store.lock import build_lock


# Trials of distinct random candidates before TPE models the results (Optuna's default).
TPE_STARTUP = 10


def default_search_dir(recipe: Recipe, device: str) -> Path:
    """``build/search/<recipe>-<device>`` (``-blocks`` appended for the block space)."""
    suffix = "-blocks" if recipe.search.space == "blocks" else ""
    return Path("build") / "search" / f"{recipe.build_name}-{device}{suffix}"


def study_key(recipe: Recipe, device: str, variant: str, budget: Budget) -> str:
    """A hash of what the stored trials depend on (not ``trials``, ``finalists`` nor ``concurrency``)."""
    d = recipe.to_dict()
    d["search"] = {k: v for k, v in d["search"].items()
                   if k not in ("trials", "finalists", "time_budget_s", "concurrency")}
    key = {"recipe": d, "device": device, "variant": variant, "budget": budget.to_dict(),
           "cost_version": COST_VERSION}
    if recipe.search.space == "blocks":  # a changed block space starts its own study
        from pipeline.search.blockspace import SPACE_VERSION

        key["space_version"] = SPACE_VERSION
    return json_hash(key, 12)


@dataclass
class SearchResult:
    """What a search found. ``rows`` has one entry per distinct candidate looked at."""

    root: Path
    device: str
    variant: str
    budget: Budget
    rows: List[Dict[str, Any]]
    front: List[str]
    finalists: List[Dict[str, Any]]
    chosen: Optional[Dict[str, Any]]
    chosen_recipe: Optional[Path]
    final: Optional[Dict[str, Any]]
    trials_run: int
    trials_stored: int
    wall_s: float
    phases: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["root"] = str(self.root)
        d["chosen_recipe"] = str(self.chosen_recipe) if self.chosen_recipe else None
        return d


# -- trials -------------------------------------------------------------------------

def _done_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def make_sampler(recipe: Recipe):
    """The study's sampler: TPE, seeded by the recipe.

    On the grid its random start-up phase is replaced by distinct candidates in a seeded
    random order (enqueued), so a small budget of trials never looks at one twice; when
    the trials cover the space, every candidate is enqueued once (exhaustive). On the
    block space a rejected proposal's constraint (``Trial.set_constraint``, how far over
    budget) ranks it: TPE splits feasible trials by value, then infeasible ones by their
    violation, so with few feasible trials the least infeasible ones are the "good"
    group and proposals move toward cheaper genotypes (Optuna 5 reads the stored
    constraints itself; its ``constraints_func`` argument is deprecated for this).
    """
    import optuna

    return optuna.samplers.TPESampler(seed=recipe.seed, n_startup_trials=TPE_STARTUP)


def open_study(recipe: Recipe, device: str, variant: str, budget: Budget, root: Path, log: Log):
    """The study of this recipe, device, variant and budget (created or loaded)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(root / 'study.db').resolve()}"
    name = f"{recipe.build_name}-{device}-{variant}-{study_key(recipe, device, variant, budget)}"
    sampler = make_sampler(recipe)
    pruner = None
    if recipe.search.space == "blocks":
        # The block space's rejected proposals carry a constraint (how far over budget),
        # which TPE reads; the trained ones go through successive halving
        # (pipeline.search.blockstudy).
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=recipe.search.proxy_epochs,
                                                        reduction_factor=recipe.search.reduction)
    others = [n for n in optuna.get_all_study_names(storage)
              if n != name] if (root / "study.db").exists() else []
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if others:
        log(f"[search] {len(others)} stored stud(ies) with another recipe/budget/space are left "
            f"alone; this one is {name}")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Left behind by an interrupted search (one search per directory holds the lock).
        study.tell(t.number, state=TrialState.FAIL)
        log(f"[search] trial {t.number} was interrupted; its candidate is proposed again")
    return study


def _enqueue(study, recipe: Recipe, log: Log) -> Tuple[int, int]:
    """Enqueues unseen candidates for the start-up phase; returns (target, remaining) distinct ones."""
    from optuna.trial import TrialState

    s, cands = recipe.search, space(recipe)
    done = study.get_trials(deepcopy=False, states=_done_states())
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    # ``trials`` counts distinct candidates: a candidate TPE proposes again costs nothing.
    seen = {t.user_attrs.get("candidate") for t in done}
    target = min(s.trials, len(cands))
    remaining = target - len(seen)
    if done or waiting:
        log(f"[search] resuming {study.study_name}: {len(seen)} candidate(s) stored, "
            f"{max(remaining, 0)} to look at")
    seen |= {Candidate(**t.system_attrs.get("fixed_params", t.params)).name for t in waiting}
    unseen = [c for c in cands if c.name not in seen]
    random.Random(recipe.seed).shuffle(unseen)
    enqueue = (remaining if s.trials >= len(cands) else min(remaining, TPE_STARTUP - len(seen))) - len(waiting)
    for c in unseen[:max(enqueue, 0)]:
        study.enqueue_trial({"family": c.family, "alpha": c.alpha, "input_size": c.input_size})
    return target, remaining


def _propose(study, trial, recipe: Recipe, device: str, variant: str, budget: Budget, classes: int,
             root: Path, log: Log, builds: Builds, busy) -> Optional[cf.Future]:
    """One trial up to its training: a known candidate's stored figures, else its cost (on
    this machine); a candidate within budget gets its proxy started (the future returned).
    None: the candidate is in training (``busy``). Raises ``TrialPruned`` over budget."""
    import optuna
    from optuna.trial import TrialState

    s = recipe.search
    cand = Candidate(trial.suggest_categorical("family", list(s.families)),
                     float(trial.suggest_categorical("alpha", list(s.alphas))),
                     int(trial.suggest_categorical("input_size", list(s.input_sizes))))
    prior = [t for t in study.get_trials(deepcopy=False, states=_done_states())
             if t.user_attrs.get("candidate") == cand.name]
    trial.set_user_attr("candidate", cand.name)
    if cand.name in busy:
        return None
    if prior:  # the same architecture again: its figures are known
        p = prior[0]
        for k, v in p.user_attrs.items():
            if k != "candidate":
                trial.set_user_attr(k, v)
        trial.set_user_attr("duplicate_of", p.number)
        log(f"[search] trial {trial.number}: {cand.name} again (trial {p.number}): stored figures")
        if p.state == TrialState.PRUNED:
            raise optuna.TrialPruned()
        return done_future(lambda: {"proxy_val_top1": p.value})
    cost = candidate_cost(recipe, cand, device, variant, classes, log)
    trial.set_user_attr("cost", {k: v for k, v in cost.items() if k != "instructions_by_class"})
    misses = budget.misses(cost)
    trial.set_user_attr("misses", misses)
    lat = "-" if cost["latency_ms"] is None else f"{cost['latency_ms']:.3f} ms"
    mem = "-" if cost["memory_mb"] is None else f"{cost['memory_mb']:.2f} MiB"
    log(f"[search] trial {trial.number}: {cand.name}: {lat}, {mem}, {cost['size_kb']:.1f} KiB"
        + (" (cached)" if cost["cached"] else "")
        + (f" -> over budget: {'; '.join(misses)}" if misses else " -> fits, proxy training"))
    if misses:
        raise optuna.TrialPruned()
    if builds.inline:  # here and now, as a search always trained
        return done_future(lambda: proxy_accuracy(recipe, cand, root, log))
    return start_proxy(builds, recipe, cand, root, log)


def _tell_trained(study, trial, acc: Dict[str, Any], log: Log) -> None:
    if "duplicate_of" in trial.user_attrs:
        study.tell(trial, acc["proxy_val_top1"])
        return
    trial.set_user_attr("proxy", acc)
    log(f"[search] trial {trial.number}: {trial.user_attrs['candidate']}: proxy val top-1 "
        f"{acc['proxy_val_top1']:.1f}%")
    study.tell(trial, acc["proxy_val_top1"])


def run_trials(recipe: Recipe, device: str, variant: str, budget: Budget, classes: int,
               root: Path, log: Log, builds: Optional[Builds] = None) -> Tuple[Any, int]:
    """Runs trials until ``recipe.search.trials`` distinct candidates are stored, up to
    ``search.concurrency`` at once (ask and tell on the study; with 1, one after the other).

    Returns:
        (the Optuna study, the number of trials this call ran).

    Raises:
        the first failed trial's error, once the other running trials are stored.
    """
    import optuna
    from optuna.trial import TrialState

    if builds is None:
        with Builds(recipe.search.concurrency) as here:
            return run_trials(recipe, device, variant, budget, classes, root, log, here)
    study = open_study(recipe, device, variant, budget, root, log)
    target, remaining = _enqueue(study, recipe, log)
    running: Dict[cf.Future, Any] = {}
    error: Optional[BaseException] = None

    def busy() -> set:
        return {t.user_attrs.get("candidate") for t in running.values()}

    def distinct() -> int:
        return len(busy() | {t.user_attrs.get("candidate")
                             for t in study.get_trials(deepcopy=False, states=_done_states())})

    ran, waiting = 0, False
    # TPE may keep proposing seen candidates in a small, mostly explored space: give up
    # after a few proposals per missing candidate rather than loop.
    while True:
        while error is None and not waiting and len(running) < recipe.search.concurrency and \
                distinct() < target and ran < 4 * max(remaining, 0):
            trial = study.ask()
            ran += 1
            try:
                future = _propose(study, trial, recipe, device, variant, budget, classes, root, log, builds,
                                  busy())
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                continue
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            if future is None:  # proposed while in training: the sampler is asked again once one ends
                study.tell(trial, state=TrialState.FAIL)
                waiting = True
                continue
            running[future] = trial
        if not running:
            break
        done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        waiting = False
        for future in sorted(done, key=lambda f: running[f].number):
            trial = running.pop(future)
            try:
                _tell_trained(study, trial, future.result(), log)
            except BaseException as e:  # the other running trials are stored first
                study.tell(trial, state=TrialState.FAIL)
                error = error or e
    if error is not None:
        raise error
    return study, ran


def table_row(name: str, model: Dict[str, Any], kind: str, cost: Dict[str, Any], misses: List[str],
              proxy: Optional[Dict[str, Any]] = None, **extra) -> Dict[str, Any]:
    """One row of the search table: a candidate's model, cost, verdict and proxy figures."""
    return {"candidate": name, "kind": kind, "model": model, "family": model["family"],
            "alpha": float(model["alpha"]), "input_size": int(model["input_size"]),
            "latency_ms": cost.get("latency_ms"), "latency_validated": cost.get("latency_validated"),
            "memory_mb": cost.get("memory_mb"), "size_kb": cost.get("size_kb"),
            "instructions": cost.get("instructions"), "loaded": cost.get("loaded"), "fits": not misses,
            "misses": list(misses), **(proxy or {}), **extra}


def rows_of(study) -> List[Dict[str, Any]]:
    """One row per distinct candidate of the study that got a device cost, fastest first."""
    rows: Dict[str, Dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=_done_states()):
        name = t.user_attrs.get("candidate")
        if name in rows or "cost" not in t.user_attrs:
            continue
        a = t.user_attrs
        model = a.get("model") or Candidate(t.params["family"], float(t.params["alpha"]),
                                            int(t.params["input_size"])).model
        extra = {"trial": t.number}
        if a.get("rungs"):  # successive halving: the highest rung reached and its top-1
            epochs = sorted(a["rungs"], key=int)
            extra.update(rungs=a["rungs"], rung=len(epochs) - 1, rung_val_top1=a["rungs"][epochs[-1]])
        rows[name] = table_row(name, model, "searched" if a.get("model") else "grid", a["cost"],
                               a.get("misses", []), a.get("proxy"), **extra)
    return sort_rows(rows.values())


def sort_rows(rows) -> List[Dict[str, Any]]:
    """Fastest first; rows without a latency last."""
    return sorted(rows, key=lambda r: (r["latency_ms"] is None, r["latency_ms"] or 0, r["candidate"]))


# -- the search ---------------------------------------------------------------------

def _nothing_fits(recipe: Recipe, device: str, variant: str, budget: Budget, rows, root: Path):
    """Writes the outputs of a search where no candidate fits; returns the error to raise."""
    loaded = [r for r in rows if r["loaded"] and r["latency_ms"] is not None and r["kind"] != "hand-designed"]
    cheapest = min(loaded, key=lambda r: r["latency_ms"]) if loaded else None
    what = (f"the cheapest, {cheapest['candidate']}, needs {cheapest['latency_ms']:.3f} ms, "
            f"{cheapest['memory_mb']:.2f} MiB, {cheapest['size_kb']:.1f} KiB"
            if cheapest else "none loaded on the device")
    result = {"root": str(root), "device": device, "variant": variant,
              "budget": budget.to_dict(), "rows": rows, "chosen": None}
    write_outputs(root, recipe, device, variant, budget, rows, result)
    if recipe.search.space == "blocks":
        error = BudgetExceededError(
            f"no genotype fits {budget.text()} on {device}: {len(loaded)} emulated (more were rejected by the "
            f"per-block table); {what} (table: {root / 'pareto.md'}); raise the number of trials or the "
            "time budget, or loosen the budget")
    else:
        left = len(space(recipe)) - len(rows)
        error = BudgetExceededError(
            f"no candidate fits {budget.text()} on {device}: {len(rows)} looked at; {what} "
            f"(table: {root / 'pareto.md'})"
            + ("" if left <= 0 else f"; {left} more in the space (raise the number of trials)"))
    error.result = {**result, "reason": str(error)}  # what `search --json` prints
    return error


def _mark_front(rows) -> List[str]:
    """Marks the rows on the Pareto front of the trained candidates of their kind (grid,
    searched, hand-designed) by rung-0 proxy top-1; returns the names on the front of
    the candidates the search chooses from (not the hand-designed reference)."""
    front: List[str] = []
    for kind in {r["kind"] for r in rows}:
        fits = [r for r in rows if r["kind"] == kind and r["fits"] and r.get("proxy_val_top1") is not None]
        names = [fits[i]["candidate"] for i in pareto_front([(r["latency_ms"], r["proxy_val_top1"]) for r in fits])]
        for r in rows:
            if r["kind"] == kind:
                r["pareto"] = r["candidate"] in names
        if kind != "hand-designed":
            front += names
    return front


def _block_rows(recipe: Recipe, device: str, variant: str, budget: Budget, classes: int, root: Path,
                log: Log, t0: float, builds: Builds):
    """The block space's trial phase, then the hand-designed reference; returns
    (study, rows, phase counts)."""
    floor = space_floor(recipe, device, variant, classes, log)
    error = below_floor(floor, budget, device, variant, root)
    if error is not None:  # no proposal could pass the gates: stop before anything is trained
        raise error
    study = open_study(recipe, device, variant, budget, root, log)
    warm_start(study, floor, budget, recipe.search.input_sizes, log)
    phase = BlockPhase(study, recipe, device, variant, budget, classes, root, log, builds=builds)
    counts = {**phase.run(t0), "floor": floor.to_dict()}
    counts["trial_phase_s"] = round(time.perf_counter() - t0, 1)
    stored = study.get_trials(deepcopy=False, states=_done_states())
    counts["rejected_by_table"] = len({t.user_attrs.get("candidate") for t in stored
                                       if t.user_attrs.get("rejected_by") == "table"})
    counts["rejected_by_emulation"] = len({t.user_attrs.get("candidate") for t in stored
                                           if t.user_attrs.get("rejected_by") == "emulation"})
    log(f"[search] trial phase: {counts['trained']} trained this run, {counts['proposals']} proposal(s); "
        f"stored: {counts['rejected_by_table']} rejected by the table, {counts['rejected_by_emulation']} "
        f"by emulation ({counts['trial_phase_s']:.0f} s)")
    t1 = time.perf_counter()
    # The reference is priced within the time budget too, before the finalists' reserve.
    budget_s = recipe.search.time_budget_s
    deadline = t0 + budget_s - phase.reserve_s() if budget_s else None
    refs = [table_row(r["candidate"], r["model"], r["kind"], r["cost"], r["misses"], r.get("proxy"))
            for r in reference_rows(recipe, device, variant, budget, classes, root, log, deadline, builds)]
    counts["reference_s"] = round(time.perf_counter() - t1, 1)
    return study, sort_rows(rows_of(study) + refs), counts


def search(recipe: Recipe, device: str, budget: Budget, variant: str = "int8-qat",
           trials: Optional[int] = None, out: Optional[Path] = None, log: Log = noop,
           final_build: bool = True) -> SearchResult:
    """Finds the most accurate candidate of ``recipe.search`` within ``budget`` on ``device``.

    Args:
        recipe: a validated recipe; its ``search`` section is the space and schedule
            (``space: grid`` or ``blocks``, :mod:`pipeline.search.blockstudy`).
        device: a device profile name.
        budget: latency (and optionally memory, size) limits for ``variant``.
        variant: the deployed variant whose cost is budgeted (``SEARCH_VARIANTS``).
        trials: overrides ``recipe.search.trials``.
        out: the search directory (default ``build/search/<recipe>-<device>``).
        final_build: build the chosen recipe completely (device checks, report, bundle).

    Returns:
        SearchResult; ``final`` holds the chosen build's budget checks.

    Raises:
        ConfigError: unknown device or variant, bad budget or trials.
        BudgetExceededError: no candidate looked at fits the budget (the message names
            the cheapest one's cost), or, for the block space, the latency budget is
            under the space's floor (the message names it; nothing is trained).
        DeviceUnavailableError: an emulated run failed.
    """
    from pipeline.data import load_dataset
    from pipeline.devices.profiles import get_device

    t0 = time.perf_counter()
    get_device(device)  # unknown names fail first, listing the valid ones
    check_variant(variant, recipe)
    if trials is not None:
        recipe = dataclasses.replace(recipe, search=dataclasses.replace(recipe.search, trials=trials)).validate()
    root = Path(out) if out else default_search_dir(recipe, device)
    blocks = recipe.search.space == "blocks"
    with build_lock(root), Builds(recipe.search.concurrency) as builds:
        remove_staging(root)
        classes = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed).num_classes
        if blocks:
            from pipeline.search.blockspace import space_size

            log(f"[search] {recipe.build_name} on {device}: block-level genotypes ({space_size():,} per input "
                f"size, {len(recipe.search.input_sizes)} size(s)), {recipe.search.trials} trained trial(s)"
                + (f" or {recipe.search.time_budget_s:g} s" if recipe.search.time_budget_s else "")
                + f", {variant} within {budget.text()}")
            study, rows, counts = _block_rows(recipe, device, variant, budget, classes, root, log, t0, builds)
            ran = counts["proposals"]
        else:
            log(f"[search] {recipe.build_name} on {device}: {len(space(recipe))} candidates, "
                f"{recipe.search.trials} trial(s), {variant} within {budget.text()}")
            study, ran = run_trials(recipe, device, variant, budget, classes, root, log, builds)
            rows, counts = rows_of(study), {"trial_phase_s": round(time.perf_counter() - t0, 1)}
        front = _mark_front(rows)
        choosable = [r for r in rows if r["kind"] != "hand-designed"]
        if not any(r["fits"] and r.get("proxy_val_top1") is not None for r in choosable):
            raise _nothing_fits(recipe, device, variant, budget, rows, root)
        t1 = time.perf_counter()
        finals = finalists(recipe, choosable, device, variant, budget, root, log, builds)
        best = max(finals, key=lambda f: (f["val_top1"], -f["latency_ms"]))
        by_name = {r["candidate"]: r for r in rows}
        for f in finals:
            by_name[f["candidate"]]["finalist"] = f
        row = by_name[best["candidate"]]
        chosen, chosen_path = write_chosen(recipe, device, variant, budget, row, best, root)
        counts["finalists_s"] = round(time.perf_counter() - t1, 1)
        log(f"[search] chosen: {row['candidate']} -> {chosen_path}")
        t2 = time.perf_counter()
        final = build_final(chosen, Path(best["dir"]), device, variant, log) if final_build else None
        counts["final_build_s"] = round(time.perf_counter() - t2, 1)
        result = SearchResult(root, device, variant, budget, rows, front, finals,
                              {**row, "recipe": recipe.name}, chosen_path, final, ran, len(study.trials),
                              round(time.perf_counter() - t0, 1), counts)
        write_outputs(root, recipe, device, variant, budget, rows, result.to_dict())
        return result

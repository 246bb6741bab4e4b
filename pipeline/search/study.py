"""Device-aware model search: the most accurate model within a device's budgets.

The search looks at candidates of the recipe's ``search`` space (family x width
multiplier x input size) in two tiers:

1. **Cost** (:func:`candidate_cost`): the candidate is built with random weights,
   converted like the chosen variant and run once on the device's emulated core.
   Instructions by class give the estimated latency (the profile's cost model),
   the guest's tensors give the memory estimate, the file gives the size. int8
   instruction counts depend on the architecture, not on the weights, so one entry
   per architecture and core serves every search (cached on disk next to the
   latency cache).
2. **Accuracy**: only candidates within every budget are trained, with the proxy
   schedule (float training, ``proxy_epochs``, ``proxy_train_samples``); their
   float top-1 on the validation split ranks them. The best ``finalists`` get the
   full recipe; the one whose deploy variant is best on the validation split is
   the choice. Its recipe is written as ``chosen.yaml`` and built completely,
   device checks included.

Trials live in an Optuna study (SQLite in the search directory): an interrupted
search continues from its stored trials. The study's name holds a hash of
everything that makes a result valid (the recipe without ``trials``/``finalists``,
device, variant, budgets, threads), so a changed budget or space starts its own
study instead of reusing incompatible results.

Layout of a search directory (default ``build/search/<recipe>-<device>/``)::

    study.db  search.json  pareto.md  pareto.png  chosen.yaml
    proxy/<candidate>/     proxy builds (float only)
    finalists/<candidate>/ full builds; the chosen one also has devices/, report, bundle/
"""

import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from pipeline.recipe.schema import Recipe
from pipeline.errors import BudgetExceededError, ConfigError
from pipeline.store.atomic import atomic_write_json, atomic_write_text
from pipeline.store.lock import build_lock

Log = Callable[[str], None]

# Variants the cost tier can stand for: the numeric format of the reference model
# it converts. A QAT and a PTQ model of one architecture convert to the same ops
# and types, so they run the same kernels.
SEARCH_VARIANTS = {"int8-qat": "int8", "int8-ptq": "int8", "float32": "float32"}
# Trials of distinct random candidates before TPE models the results (Optuna's default).
TPE_STARTUP = 10
# Bump when what a cost entry holds changes.
COST_VERSION = 1


def _noop(msg: str) -> None:
    pass


# -- candidates and budgets ---------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """One point of the space: a family at a width multiplier and input size."""

    family: str
    alpha: float
    input_size: int

    @property
    def name(self) -> str:
        return f"{self.family}-{self.alpha:g}-{self.input_size}"


@dataclass(frozen=True)
class Budget:
    """Limits a candidate must meet on the device; None means no limit.

    Attributes:
        latency_ms: estimated latency of the variant at the recipe's threads.
        memory_mb: peak memory estimate (MiB) of the variant on the device.
        size_kb: file size (KiB) of the variant.
    """

    latency_ms: float
    memory_mb: Optional[float] = None
    size_kb: Optional[float] = None

    def __post_init__(self):
        for key in ("latency_ms", "memory_mb", "size_kb"):
            v = getattr(self, key)
            if key != "latency_ms" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"--{key.replace('_', '-')}: expected a positive number, got {v!r}")

    def misses(self, cost: Dict[str, Any]) -> List[str]:
        """The budgets ``cost`` misses, each as "what measured > limit" (empty: fits)."""
        if not cost.get("loaded"):
            return [f"does not load on the device ({cost.get('load_error_op') or cost.get('load_error')})"]
        out = []
        if cost["latency_ms"] is None:
            out.append("no latency estimate (profile without latency parameters)")
        elif cost["latency_ms"] > self.latency_ms:
            out.append(f"latency {cost['latency_ms']:.3f} ms > {self.latency_ms:g} ms")
        if self.memory_mb is not None and cost["memory_mb"] > self.memory_mb:
            out.append(f"memory {cost['memory_mb']:.3f} MiB > {self.memory_mb:g} MiB")
        if self.size_kb is not None and cost["size_kb"] > self.size_kb:
            out.append(f"size {cost['size_kb']:.1f} KiB > {self.size_kb:g} KiB")
        return out

    def to_dict(self) -> Dict[str, Optional[float]]:
        return dataclasses.asdict(self)


def space(recipe: Recipe) -> List[Candidate]:
    """Every candidate of the recipe's search space, in a fixed order."""
    s = recipe.search
    return [Candidate(f, float(a), int(n)) for f in s.families for a in s.alphas for n in s.input_sizes]


# -- tier 1: cost on the device ---------------------------------------------------

def _spec(recipe: Recipe, cand: Candidate, classes: int, variant: str):
    from pipeline.latency.calibrate import ModelSpec

    return ModelSpec(cand.family, cand.alpha, cand.input_size, classes, SEARCH_VARIANTS[variant],
                     channels=recipe.model.channels, first_stride=recipe.model.first_stride)


def _cost_path(spec, profile) -> Tuple[Path, Dict[str, Any]]:
    from pipeline.latency.calibrate import _hash, _run_key, cache_root

    key = {"run": _run_key(spec, profile), "cost_version": COST_VERSION}
    return cache_root() / "search" / f"{spec.label}-{profile.qemu_cpu}-{profile.runtime}-{_hash(key)}.json", key


def _measure_cost(spec, profile, log: Log) -> Dict[str, Any]:
    """One emulated run of ``spec``'s random-weight file: counts, memory, size."""
    import numpy as np

    from pipeline.latency.calibrate import SEED, build_tflite
    from pipeline.devices.check import run_device_check
    from pipeline.devices.runtime import ensure_runtime

    path = build_tflite(spec, log)
    x = np.random.default_rng(SEED).random((1, *spec.input_shape), dtype=np.float32)
    log(f"[search] emulating {spec.label} on {profile.qemu_cpu} ({profile.runtime})")
    # One inference after the runner's warm-up, one thread: the counts repeat exactly.
    res = run_device_check(path, dataclasses.replace(profile, default_threads=1), x, threads=1,
                           runtime=ensure_runtime(progress=log))
    out = {"loaded": res.loaded, "load_error": res.load_error, "load_error_op": res.load_error_op,
           "size_bytes": path.stat().st_size, "model_sha256": res.model_sha256,
           "process_wall_s": res.process_wall_s}
    if res.loaded:
        out.update(instructions=int(res.instructions_median),
                   instructions_by_class={k: int(v) for k, v in res.instructions_by_class.items()},
                   peak_memory_bytes=int(res.memory.total_bytes))
    return out


def candidate_cost(recipe: Recipe, cand: Candidate, device: str, variant: str, classes: int,
                   log: Log = _noop) -> Dict[str, Any]:
    """The cost of ``cand`` on ``device``: latency, memory and size of its ``variant``.

    The emulated run is cached per architecture, core and runtime (``cached`` in the
    result says whether this call ran one); the latency is recomputed from the
    cached counts with the profile's current parameters at ``recipe.devices.threads``.

    Args:
        recipe: gives input channels, stem stride and threads.
        variant: a key of :data:`SEARCH_VARIANTS`.
        classes: output classes of the data set.

    Returns:
        ``{"loaded", "latency_ms", "memory_mb", "size_kb", "instructions", "cached", ...}``;
        a model the device's runtime cannot load has ``loaded`` False and no figures.

    Raises:
        ConfigError: unknown device or variant, or a bad candidate.
        DeviceUnavailableError: the emulated run failed.
    """
    from pipeline.devices.profiles import get_device
    from pipeline.latency.model import estimate_ms

    if variant not in SEARCH_VARIANTS:
        raise ConfigError(f"--variant: expected one of {', '.join(SEARCH_VARIANTS)}; got {variant!r}")
    profile = get_device(device)
    spec = _spec(recipe, cand, classes, variant)
    path, key = _cost_path(spec, profile)
    cached = False
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            raw, cached = data["cost"], True
    if not cached:
        raw = _measure_cost(spec, profile, log)
        atomic_write_json(path, {"key": key, "cost": raw})
    cost = {"candidate": cand.name, "device": profile.name, "variant": variant, **raw,
            "cached": cached, "latency_ms": None, "memory_mb": None,
            "size_kb": raw["size_bytes"] / 1024}
    if raw["loaded"]:
        cost["latency_ms"] = estimate_ms(raw["instructions_by_class"], profile.latency, profile.clock_ghz,
                                         recipe.devices.threads, profile.cores)
        cost["memory_mb"] = raw["peak_memory_bytes"] / 2**20
    return cost


# -- recipes of the two tiers -----------------------------------------------------------

def proxy_recipe(recipe: Recipe, cand: Candidate) -> Recipe:
    """The proxy schedule of ``cand``: float training only, short, no devices or budgets."""
    r = dataclasses.replace
    s = recipe.search
    data = recipe.data if not s.proxy_train_samples else r(recipe.data, train_samples=s.proxy_train_samples)
    return r(recipe, name=f"{recipe.name}-proxy", data=data,
             model=r(recipe.model, family=cand.family, alpha=cand.alpha, input_size=cand.input_size),
             train=r(recipe.train, epochs=s.proxy_epochs),
             prune=r(recipe.prune, enabled=False), cluster=r(recipe.cluster, enabled=False),
             qat=r(recipe.qat, enabled=False),
             convert=r(recipe.convert, variants=("float32",)),
             devices=r(recipe.devices, targets=()), budgets={}, deploy_variant="float32").validate()


def chosen_recipe(recipe: Recipe, cand: Candidate, device: str, variant: str, budget: Budget) -> Recipe:
    """The full recipe of ``cand`` on ``device``: its model, the device as the only
    target, ``variant`` deployed and the budgets as recipe budgets (checked by the build)."""
    r = dataclasses.replace
    if variant not in recipe.convert.variants:
        raise ConfigError(f"--variant {variant!r} is not a variant recipe {recipe.name} builds; "
                          f"valid: {', '.join(v for v in recipe.convert.variants if v in SEARCH_VARIANTS)}")
    budgets = {k: dict(v) for k, v in recipe.budgets.items()}
    budgets.setdefault("max_latency_ms", {})[device] = budget.latency_ms
    if budget.memory_mb is not None:
        budgets.setdefault("max_memory_mb", {})[device] = budget.memory_mb
    if budget.size_kb is not None:
        budgets.setdefault("max_size_kb", {})[variant] = budget.size_kb
    return r(recipe, name=f"{recipe.name}-{device}",
             model=r(recipe.model, family=cand.family, alpha=cand.alpha, input_size=cand.input_size),
             devices=r(recipe.devices, targets=(device,)), budgets=budgets,
             deploy_variant=variant).validate()


def recipe_yaml(recipe: Recipe, header: str = "") -> str:
    """A recipe as YAML, loadable with ``load_recipe``; ``header`` becomes leading comments."""
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + yaml.safe_dump(recipe.to_dict(), sort_keys=False)


# -- Pareto --------------------------------------------------------------------------

def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point dominates (lower latency, higher accuracy).

    ``points`` are (latency, accuracy). A point is dominated when another is at most
    as slow and at least as accurate, and strictly better in one. Returned in order
    of latency. Of exact duplicates only the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# -- the study ------------------------------------------------------------------------

def default_search_dir(recipe: Recipe, device: str) -> Path:
    return Path("build") / "search" / f"{recipe.build_name}-{device}"


def study_key(recipe: Recipe, device: str, variant: str, budget: Budget) -> str:
    """A hash of what the stored trials depend on (not ``trials`` nor ``finalists``)."""
    d = recipe.to_dict()
    d["search"] = {k: v for k, v in d["search"].items() if k not in ("trials", "finalists")}
    text = json.dumps({"recipe": d, "device": device, "variant": variant, "budget": budget.to_dict(),
                       "cost_version": COST_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["root"] = str(self.root)
        d["chosen_recipe"] = str(self.chosen_recipe) if self.chosen_recipe else None
        return d


def _proxy_accuracy(recipe: Recipe, cand: Candidate, root: Path, log: Log) -> Dict[str, Any]:
    from pipeline.build import build

    out = root / "proxy" / cand.name
    res = build(proxy_recipe(recipe, cand), out=out, log=lambda m: log(f"  {m}"), run_devices=False)
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    train = stages["train"]["metrics"]
    return {"proxy_val_top1": float(train["val_top1"]), "proxy_test_top1": float(train["test_top1"]),
            "params": int(train["params"]), "macs": int(train["macs"]), "proxy_dir": str(out),
            "proxy_wall_s": round(res.wall_s, 1)}


def _run_trials(recipe: Recipe, device: str, variant: str, budget: Budget, classes: int,
                root: Path, log: Log) -> Tuple[Any, int]:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = recipe.search
    cands = space(recipe)
    storage = f"sqlite:///{(root / 'study.db').resolve()}"
    name = f"{recipe.build_name}-{device}-{variant}-{study_key(recipe, device, variant, budget)}"
    # TPE, seeded. Its random start-up phase is replaced by distinct candidates in a seeded
    # random order (enqueued), so a small budget of trials never looks at one twice; when
    # the trials cover the space, every candidate is enqueued once (exhaustive).
    startup = TPE_STARTUP
    sampler = optuna.samplers.TPESampler(seed=recipe.seed, n_startup_trials=startup)
    others = [n for n in optuna.get_all_study_names(storage)
              if n != name] if (root / "study.db").exists() else []
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=sampler, load_if_exists=True)
    if others:
        log(f"[search] {len(others)} stored stud(ies) with another recipe/budget/space are left "
            f"alone; this one is {name}")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Left behind by an interrupted search (one search per directory holds the lock).
        study.tell(t.number, state=TrialState.FAIL)
        log(f"[search] trial {t.number} was interrupted; its candidate is proposed again")
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    # ``trials`` counts distinct candidates: a candidate TPE proposes again costs nothing.
    seen = {t.user_attrs.get("candidate") for t in done}
    target = min(s.trials, len(cands))
    remaining = target - len(seen)
    if done or waiting:
        log(f"[search] resuming {name}: {len(seen)} candidate(s) stored, {max(remaining, 0)} to look at")
    seen |= {Candidate(**t.system_attrs.get("fixed_params", t.params)).name for t in waiting}
    unseen = [c for c in cands if c.name not in seen]
    random.Random(recipe.seed).shuffle(unseen)
    enqueue = (remaining if s.trials >= len(cands) else min(remaining, startup - len(seen))) - len(waiting)
    for c in unseen[:max(enqueue, 0)]:
        study.enqueue_trial({"family": c.family, "alpha": c.alpha, "input_size": c.input_size})

    def objective(trial):
        cand = Candidate(trial.suggest_categorical("family", list(s.families)),
                         float(trial.suggest_categorical("alpha", list(s.alphas))),
                         int(trial.suggest_categorical("input_size", list(s.input_sizes))))
        prior = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                        TrialState.PRUNED))
                 if t.user_attrs.get("candidate") == cand.name]
        trial.set_user_attr("candidate", cand.name)
        if prior:  # the same architecture again: its figures are known
            p = prior[0]
            for k, v in p.user_attrs.items():
                if k != "candidate":
                    trial.set_user_attr(k, v)
            trial.set_user_attr("duplicate_of", p.number)
            log(f"[search] trial {trial.number}: {cand.name} again (trial {p.number}): stored figures")
            if p.state == TrialState.PRUNED:
                raise optuna.TrialPruned()
            return p.value
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
        acc = _proxy_accuracy(recipe, cand, root, log)
        trial.set_user_attr("proxy", acc)
        log(f"[search] trial {trial.number}: {cand.name}: proxy val top-1 {acc['proxy_val_top1']:.1f}%")
        return acc["proxy_val_top1"]

    def distinct() -> int:
        return len({t.user_attrs.get("candidate") for t in study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))})

    ran = 0
    # TPE may keep proposing seen candidates in a small, mostly explored space: give up
    # after a few proposals per missing candidate rather than loop.
    while distinct() < target and ran < 4 * max(remaining, 0):
        study.optimize(objective, n_trials=1, catch=())
        ran += 1
    return study, ran


def _rows(study) -> List[Dict[str, Any]]:
    from optuna.trial import TrialState

    rows: Dict[str, Dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        name = t.user_attrs.get("candidate")
        if name in rows or "cost" not in t.user_attrs:
            continue
        cost = t.user_attrs["cost"]
        rows[name] = {"candidate": name, "trial": t.number, "family": t.params["family"],
                      "alpha": float(t.params["alpha"]), "input_size": int(t.params["input_size"]),
                      "latency_ms": cost.get("latency_ms"), "memory_mb": cost.get("memory_mb"),
                      "size_kb": cost.get("size_kb"), "instructions": cost.get("instructions"),
                      "loaded": cost.get("loaded"), "fits": not t.user_attrs.get("misses"),
                      "misses": t.user_attrs.get("misses", []), **t.user_attrs.get("proxy", {})}
    return sorted(rows.values(), key=lambda r: (r["latency_ms"] is None, r["latency_ms"] or 0, r["candidate"]))


def _val_top1(path: Path, recipe: Recipe) -> float:
    import numpy as np

    from pipeline.data import load_dataset
    from pipeline.native import captured_stderr
    from pipeline.tflite.host import run_tflite

    splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed)
    with captured_stderr():  # the runtime's "Created TensorFlow Lite XNNPACK delegate" line
        probs = run_tflite(Path(path).read_bytes(), splits.x_val)
    return float(np.mean(np.argmax(probs, axis=1) == splits.y_val) * 100.0)


def _finalists(recipe: Recipe, rows, device, variant, budget, root: Path, log: Log) -> List[Dict[str, Any]]:
    from pipeline.build import build

    trained = sorted((r for r in rows if r.get("proxy_val_top1") is not None),
                     key=lambda r: (-r["proxy_val_top1"], r["latency_ms"]))
    out = []
    for r in trained[:recipe.search.finalists]:
        cand = Candidate(r["family"], r["alpha"], r["input_size"])
        full = chosen_recipe(recipe, cand, device, variant, budget)
        where = root / "finalists" / cand.name
        log(f"[search] finalist {cand.name}: full recipe -> {where}")
        res = build(full, out=where, log=lambda m: log(f"  {m}"), run_devices=False)
        v = res.metrics["variants"][variant]
        out.append({"candidate": cand.name, "dir": str(where), "val_top1": _val_top1(Path(v["path"]), full),
                    "test_top1": v["top1"], "float_test_top1": res.metrics["float_top1"],
                    "size_kb": v["size_bytes"] / 1024, "latency_ms": r["latency_ms"]})
        log(f"[search] finalist {cand.name}: {variant} val top-1 {out[-1]['val_top1']:.1f}%, "
            f"test top-1 {v['top1']:.1f}%")
    return out


def search(recipe: Recipe, device: str, budget: Budget, variant: str = "int8-qat",
           trials: Optional[int] = None, out: Optional[Path] = None, log: Log = _noop,
           final_build: bool = True) -> SearchResult:
    """Finds the most accurate candidate of ``recipe.search`` within ``budget`` on ``device``.

    Args:
        recipe: a validated recipe; its ``search`` section is the space and schedule.
        device: a device profile name.
        budget: latency (and optionally memory, size) limits for ``variant``.
        variant: the deployed variant whose cost is budgeted (:data:`SEARCH_VARIANTS`).
        trials: overrides ``recipe.search.trials``.
        out: the search directory (default ``build/search/<recipe>-<device>``).
        final_build: build the chosen recipe completely (device checks, report, bundle).

    Returns:
        SearchResult; ``final`` holds the chosen build's budget checks.

    Raises:
        ConfigError: unknown device or variant, bad budget or trials.
        BudgetExceededError: no candidate looked at fits the budget (the message names
            the cheapest one's cost).
        DeviceUnavailableError: an emulated run failed.
    """
    from pipeline.data import load_dataset
    from pipeline.devices.profiles import get_device

    t0 = time.perf_counter()
    get_device(device)  # unknown names fail first, listing the valid ones
    if variant not in SEARCH_VARIANTS:
        raise ConfigError(f"--variant: expected one of {', '.join(SEARCH_VARIANTS)}; got {variant!r}")
    if variant not in recipe.convert.variants:
        raise ConfigError(f"--variant {variant!r} is not a variant recipe {recipe.name} builds; valid: "
                          f"{', '.join(v for v in recipe.convert.variants if v in SEARCH_VARIANTS)}")
    if trials is not None:
        recipe = dataclasses.replace(recipe, search=dataclasses.replace(recipe.search, trials=trials)).validate()
    root = Path(out) if out else default_search_dir(recipe, device)
    with build_lock(root):
        splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed)
        classes = splits.num_classes
        log(f"[search] {recipe.build_name} on {device}: {len(space(recipe))} candidates, "
            f"{recipe.search.trials} trial(s), {variant} within {_budget_text(budget)}")
        study, ran = _run_trials(recipe, device, variant, budget, classes, root, log)
        rows = _rows(study)
        stored = len(study.trials)
        fits = [r for r in rows if r["fits"]]
        front_idx = pareto_front([(r["latency_ms"], r["proxy_val_top1"]) for r in fits])
        front = [fits[i]["candidate"] for i in front_idx]
        for r in rows:
            r["pareto"] = r["candidate"] in front
        if not fits:
            loaded = [r for r in rows if r["loaded"] and r["latency_ms"] is not None]
            cheapest = min(loaded, key=lambda r: r["latency_ms"]) if loaded else None
            what = (f"the cheapest, {cheapest['candidate']}, needs {cheapest['latency_ms']:.3f} ms, "
                    f"{cheapest['memory_mb']:.2f} MiB, {cheapest['size_kb']:.1f} KiB"
                    if cheapest else "none loaded on the device")
            _write_outputs(root, recipe, device, variant, budget, rows, [], None)
            raise BudgetExceededError(
                f"no candidate fits {_budget_text(budget)} on {device}: {len(rows)} looked at; {what} "
                f"(table: {root / 'pareto.md'})"
                + ("" if len(rows) >= len(space(recipe)) else
                   f"; {len(space(recipe)) - len(rows)} more in the space (--trials)"))
        finalists = _finalists(recipe, rows, device, variant, budget, root, log)
        best = max(finalists, key=lambda f: (f["val_top1"], -f["latency_ms"]))
        by_name = {r["candidate"]: r for r in rows}
        for f in finalists:
            by_name[f["candidate"]]["finalist"] = f
        row = by_name[best["candidate"]]
        cand = Candidate(row["family"], row["alpha"], row["input_size"])
        chosen = chosen_recipe(recipe, cand, device, variant, budget)
        chosen_path = root / "chosen.yaml"
        atomic_write_text(chosen_path, recipe_yaml(chosen, (
            f"mobile-model build {chosen_path}\n\n"
            f"Chosen by `mobile-model search {recipe.name} --device {device} {_budget_flags(budget)} "
            f"--variant {variant}`:\n{cand.name}, estimated {row['latency_ms']:.3f} ms, "
            f"{row['memory_mb']:.2f} MiB, {row['size_kb']:.1f} KiB on {device} (random-weight run);\n"
            f"{variant} top-1 {best['test_top1']:.2f}% (test) after the full recipe.")))
        log(f"[search] chosen: {cand.name} -> {chosen_path}")
        final = None
        if final_build:
            from pipeline.build import build

            res = build(chosen, out=Path(best["dir"]), log=lambda m: log(f"  {m}"), run_devices=True)
            dev = res.metrics["devices"].get(device, {}).get(variant, {})
            final = {"dir": str(res.root), "budgets_ok": res.budgets_ok,
                     "budgets": [c.to_dict() for c in res.budgets],
                     "top1": res.metrics["variants"][variant]["top1"],
                     "device_top1": dev.get("top1"), "latency_ms": dev.get("latency_ms"),
                     "memory_mb": (dev.get("peak_memory_bytes") or 0) / 2**20,
                     "size_kb": res.metrics["variants"][variant]["size_bytes"] / 1024,
                     "instructions": dev.get("instructions_per_inference")}
        result = SearchResult(root, device, variant, budget, rows, front, finalists,
                              {**row, "recipe": recipe.name}, chosen_path, final, ran, stored,
                              round(time.perf_counter() - t0, 1))
        _write_outputs(root, recipe, device, variant, budget, rows, finalists, result)
        return result


# -- outputs ---------------------------------------------------------------------------

def _budget_text(b: Budget) -> str:
    parts = [f"{b.latency_ms:g} ms"]
    if b.memory_mb is not None:
        parts.append(f"{b.memory_mb:g} MiB")
    if b.size_kb is not None:
        parts.append(f"{b.size_kb:g} KiB")
    return ", ".join(parts)


def _budget_flags(b: Budget) -> str:
    flags = f"--latency-ms {b.latency_ms:g}"
    if b.memory_mb is not None:
        flags += f" --memory-mb {b.memory_mb:g}"
    if b.size_kb is not None:
        flags += f" --size-kb {b.size_kb:g}"
    return flags


def pareto_table(rows: Sequence[Dict[str, Any]], variant: str) -> str:
    """Markdown table of every candidate looked at, fastest first."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = ["| candidate | est. latency ms | memory MiB | size KiB | fits | proxy val top-1 % | "
             f"Pareto | full {variant} test top-1 % |",
             "|---|---:|---:|---:|---|---:|---|---:|"]
    for r in rows:
        fin = r.get("finalist")
        fits = "yes" if r["fits"] else "no: " + "; ".join(r["misses"])
        lines.append(f"| {r['candidate']} | {f(r['latency_ms'], '.3f')} | {f(r['memory_mb'], '.3f')} | "
                     f"{f(r['size_kb'], '.1f')} | {fits} | {f(r.get('proxy_val_top1'), '.1f')} | "
                     f"{'*' if r.get('pareto') else ''} | {f(fin and fin['test_top1'], '.2f')} |")
    return "\n".join(lines)


def _plot(rows, budget: Budget, device: str, variant: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    trained = [r for r in rows if r.get("proxy_val_top1") is not None]
    front = sorted((r for r in trained if r.get("pareto")), key=lambda r: r["latency_ms"])
    ax.scatter([r["latency_ms"] for r in trained], [r["proxy_val_top1"] for r in trained],
               c="tab:blue", label="trained (proxy, val top-1)")
    if front:
        ax.step([r["latency_ms"] for r in front], [r["proxy_val_top1"] for r in front], where="post",
                c="tab:blue", alpha=0.5, label="Pareto front")
    fin = [r for r in rows if r.get("finalist")]
    ax.scatter([r["latency_ms"] for r in fin], [r["finalist"]["test_top1"] for r in fin], marker="*",
               s=160, c="tab:orange", label=f"full recipe ({variant}, test top-1)")
    for r in trained + fin:
        ax.annotate(r["candidate"], (r["latency_ms"], r["proxy_val_top1"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    over = [r for r in rows if not r["fits"] and r["latency_ms"] is not None]
    if over:
        y0 = ax.get_ylim()[0] if trained else 0
        ax.scatter([r["latency_ms"] for r in over], [y0] * len(over), marker="|", s=200, c="grey",
                   label="over budget (not trained)")
    ax.axvline(budget.latency_ms, c="red", ls="--", label=f"budget {budget.latency_ms:g} ms")
    lats = [r["latency_ms"] for r in rows if r["latency_ms"]]
    if lats and max(lats) > 10 * min(lats):  # over-budget giants would squash the rest
        ax.set_xscale("log")
    ax.set_xlabel(f"estimated latency on {device} (ms, {variant})")
    ax.set_ylabel("top-1 %")
    ax.set_title(f"search on {device}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _write_outputs(root: Path, recipe: Recipe, device: str, variant: str, budget: Budget,
                   rows, finalists, result: Optional[SearchResult]) -> None:
    table = pareto_table(rows, variant)
    head = (f"# Search: {recipe.build_name} on {device}, {variant} within {_budget_text(budget)}\n\n"
            "Latency, memory and size: one emulated run of a random-weight model per architecture "
            "(the latency model of the profile). Proxy: float top-1 on the validation split after "
            f"{recipe.search.proxy_epochs} epoch(s). Pareto: among candidates within the budget.\n\n")
    atomic_write_text(root / "pareto.md", head + table + "\n")
    _plot(rows, budget, device, variant, root / "pareto.png")
    data = result.to_dict() if result else {"root": str(root), "device": device, "variant": variant,
                                            "budget": budget.to_dict(), "rows": rows, "chosen": None}
    atomic_write_json(root / "search.json", data)

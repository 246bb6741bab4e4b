"""The trial phase of a search over block-level genotypes (``search.space: blocks``).

Each proposal of the study's sampler is a genotype of :mod:`pipeline.search.blockspace`
at one of the recipe's input sizes. It passes three gates, cheapest first:

1. **The per-block table** (:mod:`pipeline.search.blocktable`): the sum of the
   genotype's cached part costs plus the per-model overhead predicts its
   single-thread latency in milliseconds. A proposal predicted over the latency
   budget by more than :data:`SCREEN_MARGIN` is rejected here: no conversion, no
   emulation, no training. (The table stands for one-thread int8 runs; with more
   threads, or a float variant, every proposal goes to gate 2; so does one whose
   parts the table mostly lacks, :data:`MEASURE_MISSING`.)
2. **Full emulation** (:func:`pipeline.search.cost.genotype_cost`, cached): the
   estimate every budget is checked against (latency at the recipe's threads,
   memory, size, and whether the runtime loads it). Only a proposal within every
   budget is trained, so no infeasible candidate is ever trained. For ``int8-qat``
   the int8 PTQ graph is emulated first: converting it takes a third of the QAT
   graph's time, and its latency is a lower bound of the QAT graph's (which keeps
   the SE hard-sigmoid's ADD), so a proposal whose PTQ graph is more than
   :data:`SCREEN_MARGIN` over the latency budget is rejected without the QAT
   conversion (over 20 genotypes on pixel4 and camera-a53 the QAT graph's latency
   was 0.9988-1.0434 x the PTQ graph's, so the margin keeps the bound safe). A
   proposal the table priced skips this step: the table stands for the PTQ graph.
3. **Successive halving**: rung ``r`` trains the proxy for ``proxy_epochs x
   reduction**r`` epochs (from scratch, each rung its own cached build); Optuna's
   :class:`~optuna.pruners.SuccessiveHalvingPruner` stops a candidate that is not in
   the best ``1/reduction`` of its rung.

The sampler is Optuna's TPE with constraints: a rejected proposal is stored as a
pruned trial whose constraint (``Trial.set_constraint``) is how far it is over budget.
Optuna 5's TPE reads stored constraints itself: it ranks feasible trials first, then
infeasible ones by their violation, so after rejections the least infeasible
proposals are its "good" group and it proposes cheaper genotypes
(:func:`pipeline.search.study.make_sampler`). Before any proposal the space's floor
is priced (:mod:`pipeline.search.floor`): a budget under it stops the search, and a
budget close to it starts the study at the floor genotype. ``search.trials`` counts
trained candidates; proposals rejected at gate 1 or 2 are not counted.

``search.time_budget_s`` is the whole search's wall time, finalists and chosen build
included: proposals are priced while time is left, but no candidate is trained
(and no rung starts) unless it and the estimated time of the finalists' full
recipes it would make (:meth:`BlockPhase.reserve_s`: their epochs at the measured
seconds per proxy epoch) fit in what is left. Before the first proxy is measured
nothing is known of its speed, so the first candidate within budget is always
trained.

The hand-designed candidates of the recipe's grid (family x width x input size) are
reference points: priced by full emulation and, when they fit, trained with the
same rung-0 proxy schedule, so the Pareto plot compares the searched front with the
hand-designed one at equal latency. They are not finalists. They count in the time
budget: once the budget less the finalists' reserve is spent, a reference whose cost
is not cached is left out and a fitting one is not trained (:func:`reference_rows`).
"""

import concurrent.futures as cf
import time
from typing import Any, Dict, List, Optional, Tuple

from pipeline.recipe.schema import GENOTYPE_FAMILY, Recipe
from pipeline.search.blockspace import (EXPANSIONS, HEAD_FCS, HEADS, HSWISH_FROM, KERNELS, SKELETON, SPACE,
                                        STEMS, WIDTH_MULTS, Frame, StageChoice, genotype_of, sample_distinct)
from pipeline.search.cost import candidate_cost, genotype_cost
from pipeline.search.jobs import Builds, done_future
from pipeline.search.proxy import proxy_accuracy, start_proxy
from pipeline.search.reserve import final_build_s, full_recipe_epochs
from pipeline.search.space import Arch, Budget, space
from pipeline.variants import VARIANTS
from pipeline.errors import Log, RuntimeIncompatibleError


#: A proposal is rejected by the table only when predicted this much over the latency
#: budget (the table's worst error against full emulation is well under it,
#: docs/search.md); closer ones are emulated.
SCREEN_MARGIN = 0.02
#: The table prices a proposal when it lacks at most this many of its parts (each
#: measured then, one conversion and emulation of its own, and kept); with more
#: missing, one full emulation of the genotype (3-13 s in docs/search.md's runs) is
#: cheaper, so the proposal goes straight to gate 2.
MEASURE_MISSING = 2
#: Random proposals before TPE models the results (Optuna's default).
TPE_STARTUP = 10
#: Calibration genotypes of the table's per-model overhead (drawn from seed + 1000,
#: as ``python -m pipeline.search.blocktable`` draws them).
CALIBRATION = 3
#: Proposals allowed per trained candidate before the phase gives up (a budget so
#: tight that the sampler finds almost nothing within it).
PROPOSALS_PER_TRIAL = 40


def genotype_arch(genotype, input_size: int) -> Arch:
    """A genotype at an input size as a search candidate (family ``mbconv``)."""
    from models.genotype import Genotype

    g = Genotype.from_dict(genotype)
    return Arch(f"{g.key()}-{input_size}", {"family": GENOTYPE_FAMILY, "alpha": 1.0,
                                            "input_size": int(input_size), "genotype": g.to_dict()})


def suggest(trial, input_sizes) -> Tuple[Any, int]:
    """The genotype and input size of an Optuna trial's per-stage choices."""
    choices = []
    for i, slot in enumerate(SKELETON):
        choices.append(StageChoice(
            kernel=trial.suggest_categorical(f"s{i}_kernel", list(KERNELS)),
            expand=trial.suggest_categorical(f"s{i}_expand", list(EXPANSIONS)),
            depth=trial.suggest_categorical(f"s{i}_depth", list(SPACE.depths_of(slot))),
            width_mult=trial.suggest_categorical(f"s{i}_width", list(WIDTH_MULTS)),
            se=trial.suggest_categorical(f"s{i}_se", [False, True])))
    hswish = trial.suggest_categorical("hswish_from", list(HSWISH_FROM))
    frame = Frame(stem=trial.suggest_categorical("stem", list(STEMS)),
                  head=trial.suggest_categorical("head", list(HEADS)),
                  head_fc=trial.suggest_categorical("head_fc", list(HEAD_FCS)))
    size = trial.suggest_categorical("input_size", [int(n) for n in input_sizes])
    return genotype_of(choices, hswish, frame), int(size)


def params_of(stages, hswish_from: int, frame: Frame, input_size: int) -> Dict[str, Any]:
    """The sampler parameters :func:`suggest` turns into these choices (to enqueue a genotype)."""
    params: Dict[str, Any] = {}
    for i, c in enumerate(stages):
        params.update({f"s{i}_kernel": c.kernel, f"s{i}_expand": c.expand, f"s{i}_depth": c.depth,
                       f"s{i}_width": c.width_mult, f"s{i}_se": bool(c.se)})
    return {**params, "hswish_from": hswish_from, "stem": frame.stem, "head": frame.head,
            "head_fc": frame.head_fc, "input_size": int(input_size)}


def excess(cost: Dict[str, Any], budget: Budget) -> float:
    """How far ``cost`` is over ``budget``: the largest ``measured / limit - 1`` (<= 0: fits;
    1.0 for a model the device does not load)."""
    if not cost.get("loaded") or cost.get("latency_ms") is None:
        return 1.0
    ratios = [cost["latency_ms"] / budget.latency_ms]
    if budget.memory_mb is not None:
        ratios.append(cost["memory_mb"] / budget.memory_mb)
    if budget.size_kb is not None:
        ratios.append(cost["size_kb"] / budget.size_kb)
    return max(ratios) - 1.0


class TableScreen:
    """Gate 1: the per-block table's latency prediction, calibrated once per input size."""

    def __init__(self, recipe: Recipe, device: str, variant: str, classes: int, budget: Budget, log: Log):
        self.recipe, self.device, self.classes, self.budget, self.log = recipe, device, classes, budget, log
        # The parts are PTQ int8; a QAT graph holds those ops and perhaps more (the
        # hard-sigmoid's ADD), so the table is a lower bound for int8-qat: a
        # rejection stays right, and emulation prices what passes.
        self.applies = recipe.devices.threads == 1 and VARIANTS.get(variant).full_integer
        self._overhead: Dict[int, Optional[Dict[str, Dict[str, float]]]] = {}  # None: not calibrated

    def _geometry(self, input_size: int):
        from pipeline.search.blocktable import Geometry

        m = self.recipe.model
        return Geometry(input_size, m.channels, m.first_stride, self.classes)

    def predict(self, genotype, input_size: int) -> Optional[Dict[str, float]]:
        """The table's prediction; None where the table does not apply, where it lacks
        more than :data:`MEASURE_MISSING` of the genotype's parts (measuring them would
        cost more than one full emulation), or where the device's runtime does not load
        one of its parts (or a calibration genotype's) on its own: the genotype is then
        emulated whole."""
        from pipeline.search.blocktable import missing_parts, predict

        if not self.applies:
            return None
        geometry = self._geometry(input_size)
        missing = missing_parts(genotype, geometry, self.device)
        if missing > MEASURE_MISSING:
            self.log(f"[search] the per-block table lacks {missing} parts of {genotype.key()}: emulating it whole")
            return None
        if input_size not in self._overhead:
            self.log(f"[search] per-block table on {self.device}, input {input_size}: calibrating the "
                     f"per-model overhead on {CALIBRATION} genotypes (cached after the first search)")
            self._overhead[input_size] = self._calibrated(geometry)
        if self._overhead[input_size] is None:
            return None
        try:
            return predict(genotype, geometry, self.device, self._overhead[input_size], self.log)
        except RuntimeIncompatibleError as e:  # a part alone does not load; in its network it may
            self.log(f"[search] the per-block table cannot price {genotype.key()} ({e}): emulating it whole")
            return None

    def _calibrated(self, geometry) -> Optional[Dict[str, Dict[str, float]]]:
        """The table's per-model overhead at ``geometry``; None (asked once per size) when a
        calibration genotype has a part the device's runtime does not load on its own."""
        from pipeline.search.blocktable import calibrate

        try:
            return calibrate(sample_distinct(self.recipe.seed + 1000, CALIBRATION), geometry, self.device, self.log)
        except RuntimeIncompatibleError as e:
            self.log(f"[search] the per-block table cannot be calibrated at input {geometry.input_size} ({e}): "
                     f"every proposal of that size is emulated whole")
            return None

    def rejects(self, prediction: Optional[Dict[str, float]]) -> bool:
        return prediction is not None and \
            prediction["latency_ms"] > self.budget.latency_ms * (1 + SCREEN_MARGIN)


def _cost_attrs(cost: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in cost.items() if k != "instructions_by_class"}


class _Training:
    """A trial in training: its candidate, the rung running (its future) and the rungs' top-1 so far."""

    def __init__(self, trial, arch: Arch):
        self.trial, self.arch, self.rung = trial, arch, 0
        self.rungs: Dict[str, float] = {}
        self.future: Optional[cf.Future] = None


class BlockPhase:
    """The trial phase over genotypes: proposals, gates, rungs; results in the study.

    ``builds`` runs the proxy trainings (:class:`pipeline.search.jobs.Builds`; default:
    here, or the cluster this process joined, ``search.concurrency`` at once)."""

    def __init__(self, study, recipe: Recipe, device: str, variant: str, budget: Budget, classes: int,
                 root, log: Log, screen: Optional[TableScreen] = None, builds: Optional[Builds] = None):
        self.study, self.recipe, self.device, self.variant = study, recipe, device, variant
        self.budget, self.classes, self.root, self.log = budget, classes, root, log
        self.screen = screen or TableScreen(recipe, device, variant, classes, budget, log)
        s = recipe.search
        self.epochs = [s.proxy_epochs * s.reduction ** r for r in range(s.rungs)]
        self._walls: List[float] = []  # rung-0 proxy walls of this run
        self.out_of_time = False
        self.builds = builds or Builds(s.concurrency)
        self._jobs: Dict[cf.Future, _Training] = {}  # trials in training, by their running rung
        self._wait = False  # a proposal was in training: no new one until a rung ends

    def stored(self) -> Dict[str, Any]:
        """Done trials by candidate name (the first of each)."""
        from optuna.trial import TrialState

        out: Dict[str, Any] = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            out.setdefault(t.user_attrs.get("candidate"), t)
        return out

    def trained(self) -> int:
        return sum(1 for t in self.stored().values() if t.user_attrs.get("rungs"))

    def _reject(self, trial, misses: List[str], over: float, stage: str) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("misses", misses)
        trial.set_user_attr("excess", over)
        trial.set_constraint("budget", over)
        trial.set_user_attr("rejected_by", stage)
        self.study.tell(trial, state=TrialState.PRUNED)

    def epoch_s(self) -> float:
        """Seconds per proxy epoch: the slowest rung-0 proxy stored (0 before any)."""
        walls = [t.user_attrs.get("proxy", {}).get("proxy_wall_s", 0.0) for t in self.stored().values()]
        return max(walls + self._walls, default=0.0) / self.recipe.search.proxy_epochs

    def reserve_s(self, extra: int = 0) -> float:
        """The time the finalists' full recipes and the chosen build are estimated to
        need: one full recipe (:func:`full_recipe_epochs` at the proxy's seconds per
        epoch) per finalist there will be, the stored trained candidates plus ``extra``
        up to ``search.finalists``, plus the chosen build (:func:`final_build_s`)."""
        finalists = min(self.recipe.search.finalists, self.trained() + extra)
        return finalists * full_recipe_epochs(self.recipe) * self.epoch_s() + final_build_s(self.recipe)

    def time_left(self, t0: float, needed_s: float = 0.0, extra: int = 0) -> bool:
        """Whether ``needed_s`` more seconds and the reserve (``extra`` more finalists)
        fit in the time budget."""
        s = self.recipe.search
        return not s.time_budget_s or \
            time.perf_counter() - t0 + needed_s + self.reserve_s(extra) < s.time_budget_s

    def _proxy(self, arch: Arch, epochs: int) -> cf.Future:
        """Starts a rung's proxy build: here and now, or as a job (:mod:`pipeline.search.jobs`)."""
        if self.builds.inline:
            return done_future(lambda: proxy_accuracy(self.recipe, arch, self.root, self.log, epochs))
        return start_proxy(self.builds, self.recipe, arch, self.root, self.log, epochs)

    def _start_rung(self, job: "_Training", t0: float) -> bool:
        """Gate 3: starts the job's next rung of successive halving; False when the time
        budget stops it (the trial is then stored)."""
        from optuna.trial import TrialState

        r, epochs = job.rung, self.epochs[job.rung]
        if r and not self.time_left(t0, epochs * self.epoch_s(), extra=1 + len(self._jobs)):
            self.log(f"[search] trial {job.trial.number}: promoted, but rung {r} would not leave the "
                     f"finalists their time: stopped at rung {r - 1}")
            self.study.tell(job.trial, state=TrialState.PRUNED)
            return False
        job.future = self._proxy(job.arch, epochs)
        return True

    def _rung_done(self, job: "_Training", acc: Dict[str, Any], t0: float) -> bool:
        """Stores a finished rung; starts the next one when the trial is promoted (True),
        else stores the trial (False)."""
        from optuna.trial import TrialState

        trial, r, epochs = job.trial, job.rung, self.epochs[job.rung]
        job.rungs[str(epochs)] = acc["proxy_val_top1"]
        if r == 0:
            trial.set_user_attr("proxy", acc)
            self._walls.append(float(acc.get("proxy_wall_s", 0.0)))
        trial.set_user_attr("rungs", job.rungs)
        trial.report(acc["proxy_val_top1"], epochs)
        self.log(f"[search] trial {trial.number}: {job.arch.name}: rung {r} ({epochs} epochs) "
                 f"val top-1 {acc['proxy_val_top1']:.1f}%")
        if r + 1 < len(self.epochs) and trial.should_prune():
            self.log(f"[search] trial {trial.number}: not in the best 1/{self.recipe.search.reduction} "
                     f"of rung {r}: stopped")
            self.study.tell(trial, state=TrialState.PRUNED)
            return False
        if r + 1 == len(self.epochs):
            self.study.tell(trial, acc["proxy_val_top1"])
            return False
        job.rung += 1
        return self._start_rung(job, t0)

    def _ptq_rejects(self, trial, genotype, size: int, name: str) -> bool:
        """For int8-qat: whether the proposal's int8 PTQ graph, a lower bound of its QAT
        graph's latency, is already over budget by more than :data:`SCREEN_MARGIN`
        (then it is rejected here, and the QAT graph is never converted)."""
        if VARIANTS.get(self.variant).source != "qat":
            return False
        lower = genotype_cost(self.recipe, genotype, size, self.device, "int8-ptq", self.classes, self.log)
        if not lower.get("loaded") or lower.get("latency_ms") is None:
            return False  # the QAT graph's own emulation says why
        ms = float(lower["latency_ms"])
        trial.set_user_attr("ptq_latency_ms", ms)
        if ms <= self.budget.latency_ms * (1 + SCREEN_MARGIN):
            return False
        self._reject(trial, [f"latency {ms:.3f} ms of the int8 PTQ graph (a lower bound) > "
                             f"{self.budget.latency_ms:g} ms"], ms / self.budget.latency_ms - 1, "emulation")
        self.log(f"[search] proposal {trial.number}: {name}: int8 PTQ graph emulated at {ms:.3f} ms -> "
                 "over budget, QAT graph not converted")
        return True

    def propose(self, trial, t0: float = 0.0) -> Optional["_Training"]:
        """One proposal through gates 1 and 2; its training when it passed them (rung 0 started)."""
        from optuna.trial import TrialState

        g, size = suggest(trial, self.recipe.search.input_sizes)
        arch = genotype_arch(g, size)
        trial.set_user_attr("candidate", arch.name)
        trial.set_user_attr("model", arch.model)
        if arch.name in {j.arch.name for j in self._jobs.values()}:
            # In training: the sampler is asked again once a running trial ends.
            self.study.tell(trial, state=TrialState.FAIL)
            self._wait = True
            return None
        prior = self.stored().get(arch.name)
        if prior is not None:  # proposed again: its figures are known, nothing is counted
            for k, v in prior.user_attrs.items():
                if k != "candidate":
                    trial.set_user_attr(k, v)
            trial.set_user_attr("duplicate_of", prior.number)
            trial.set_constraint("budget", float(prior.user_attrs.get("excess", 0.0)))
            if prior.state == TrialState.COMPLETE:
                self.study.tell(trial, prior.value)
            else:
                self.study.tell(trial, state=TrialState.PRUNED)
            return None
        pred = self.screen.predict(g, size)
        if pred is not None:
            trial.set_user_attr("predicted", {k: pred[k] for k in ("latency_ms", "latency_cycles", "parts")})
            if self.screen.rejects(pred):
                over = pred["latency_ms"] / self.budget.latency_ms - 1
                self._reject(trial, [f"predicted latency {pred['latency_ms']:.3f} ms > "
                                     f"{self.budget.latency_ms:g} ms (per-block table)"], over, "table")
                self.log(f"[search] proposal {trial.number}: {arch.name}: table predicts "
                         f"{pred['latency_ms']:.3f} ms -> over budget, not emulated")
                return None
        # The table already priced the PTQ graph (to within its 0.25%): emulating it too
        # would decide the same.
        if pred is None and self._ptq_rejects(trial, g, size, arch.name):
            return None
        cost = genotype_cost(self.recipe, g, size, self.device, self.variant, self.classes, self.log)
        trial.set_user_attr("cost", _cost_attrs(cost))
        misses = self.budget.misses(cost)
        if misses:
            self._reject(trial, misses, excess(cost, self.budget), "emulation")
            self.log(f"[search] proposal {trial.number}: {arch.name}: emulated -> over budget: "
                     f"{'; '.join(misses)}")
            return None
        over = excess(cost, self.budget)
        trial.set_user_attr("misses", [])
        trial.set_user_attr("excess", over)
        trial.set_constraint("budget", min(over, 0.0))
        what = (f"{arch.name} ({g.text()}): {cost['latency_ms']:.3f} ms, {cost['memory_mb']:.2f} MiB, "
                f"{cost['size_kb']:.1f} KiB -> fits")
        if not self.time_left(t0, self.recipe.search.proxy_epochs * self.epoch_s(), extra=1 + len(self._jobs)):
            # Training it would leave one more finalist than the time budget can build.
            trial.set_user_attr("untrained", "time budget")
            self.study.tell(trial, state=TrialState.PRUNED)
            self.out_of_time = True
            self.log(f"[search] proposal {trial.number}: {what}, but training it would not leave the "
                     "finalists their time: not trained")
            return None
        self.log(f"[search] trial {trial.number}: {what}, proxy training")
        job = _Training(trial, arch)
        self._start_rung(job, t0)
        return job

    def run(self, t0: float) -> Dict[str, Any]:
        """Proposes until ``search.trials`` candidates are trained, the time budget is spent
        or too many proposals in a row miss, keeping up to ``search.concurrency`` trials
        in training (with 1, each is trained before the next proposal). Returns counts of
        what happened.

        Raises:
            the first failed training's error, once the other running trials are stored.
        """
        from optuna.trial import TrialState

        s = self.recipe.search
        target = s.trials
        done = self.trained()
        if done:
            self.log(f"[search] resuming {self.study.study_name}: {done} candidate(s) trained, "
                     f"{max(target - done, 0)} to go")
        proposals = trained = 0
        self.out_of_time, self._jobs, self._wait = False, {}, False
        error, stop = None, False
        while True:
            while error is None and not (stop or self._wait or self.out_of_time) and \
                    len(self._jobs) < s.concurrency and done + trained < target:
                # Pricing a proposal is cheap; training one is checked in propose.
                if not self.time_left(t0):
                    self.out_of_time = True
                    self.log(f"[search] time budget of {s.time_budget_s:g} s: {time.perf_counter() - t0:.0f} s "
                             f"spent, {self.reserve_s():.0f} s kept for the finalists and the chosen build: "
                             "no new trial")
                    break
                if proposals >= PROPOSALS_PER_TRIAL * (trained + 1):
                    self.log(f"[search] {proposals} proposals, {trained} within the budget: giving up")
                    stop = True
                    break
                trial = self.study.ask()
                proposals += 1
                job = self.propose(trial, t0)
                if job is not None:
                    trained += 1
                    self._jobs[job.future] = job
            if not self._jobs:
                break
            finished, _ = cf.wait(list(self._jobs), return_when=cf.FIRST_COMPLETED)
            self._wait = False
            for future in sorted(finished, key=lambda f: self._jobs[f].trial.number):
                job = self._jobs.pop(future)
                try:
                    if self._rung_done(job, future.result(), t0):
                        self._jobs[job.future] = job
                except BaseException as e:  # the other running trials are stored first
                    self.study.tell(job.trial, state=TrialState.FAIL)
                    error = error or e
        if error is not None:
            raise error
        return {"proposals": proposals, "trained": trained, "out_of_time": self.out_of_time}


def reference_rows(recipe: Recipe, device: str, variant: str, budget: Budget, classes: int, root,
                   log: Log, deadline: Optional[float] = None, builds: Optional[Builds] = None) -> List[Dict[str, Any]]:
    """The hand-designed candidates of the recipe's grid, priced and (when they fit)
    trained with the rung-0 proxy schedule: the reference the searched genotypes are
    compared with (cached: each cost once per core, each proxy build once).

    ``deadline`` (a ``time.perf_counter()`` value: the time budget less the finalists'
    and chosen build's reserve) keeps the search within its time budget: once it has
    passed, a candidate whose cost is not cached is left out (named in the log), and a
    fitting one is listed untrained. Cached costs are always listed."""
    from pipeline.search.cost import candidate_cost_cached

    rows, skipped = [], []
    for cand in space(recipe):
        late = deadline is not None and time.perf_counter() > deadline
        if late and not candidate_cost_cached(recipe, cand, device, variant, classes):
            skipped.append(cand.name)
            continue
        cost = candidate_cost(recipe, cand, device, variant, classes, log)
        misses = budget.misses(cost)
        row = {"candidate": cand.name, "model": cand.model, "kind": "hand-designed",
               "cost": _cost_attrs(cost), "misses": misses}
        if not misses:
            if deadline is not None and time.perf_counter() > deadline:
                log(f"[search] hand-designed {cand.name}: {cost['latency_ms']:.3f} ms -> fits; not trained "
                    "(time budget)")
            else:
                log(f"[search] hand-designed {cand.name}: {cost['latency_ms']:.3f} ms -> fits, proxy training")
                on = {} if builds is None or builds.inline else {"builds": builds}  # a job where builds run
                row["proxy"] = proxy_accuracy(recipe, Arch.of(cand), root, log, **on)
        rows.append(row)
    if skipped:
        log(f"[search] time budget: {len(skipped)} hand-designed reference(s) not priced (not in the cost "
            f"cache): {', '.join(skipped)}")
    return rows

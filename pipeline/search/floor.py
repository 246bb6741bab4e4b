"""The floor of the block space: the fastest genotype a device can run, known before any training.

The genotype that computes least (:func:`pipeline.search.blockspace.least_work`) at the
recipe's smallest input size is emulated once (:func:`pipeline.search.cost.genotype_cost`,
cached), as gate 2 emulates a proposal (:mod:`pipeline.search.blockstudy`): its int8
PTQ graph for ``int8-qat`` (the lower bound gate 2 checks first), the variant's own
graph otherwise, at the recipe's threads. Why no other genotype is cheaper:

* every least option does a subset of the work of every other option of its choice,
  in its own part and in the parts after it: a smaller kernel, expansion or width
  (a stage's width is also the next block's input), no squeeze-excite, ReLU (fused
  into the conv) instead of a separate hard-swish, a narrower stem and head, no
  dense layer, a dropped stage, a smaller input;
* the choices are not independent stage by stage, so "the cheapest option per
  stage" needs this argument rather than a per-stage minimum; under an additive
  price (the per-block table's sum of part costs plus ``fixed + per_part x parts``,
  :func:`pipeline.search.blocktable.predict`) ``tests/test_search_floor.py`` checks it
  against brute force and against sampled genotypes.

It is emulated rather than summed by the table: the figure is the one every budget is
checked against, the table's calibration genotypes have 7-17 parts and the floor 6
(an extrapolation of the per-part overhead), and on a device whose table is not
calibrated yet one emulation takes seconds where calibrating takes minutes.

A latency budget under the floor by more than the gates' margin is met by no proposal:
the search stops before anything is trained, with the figure. A budget close to the
floor (under :data:`WARM_START_BELOW` x the floor) leaves most of the space over
budget, so uniform start-up proposals would mostly be rejected: the floor genotype
is then the study's first proposal, and the constrained sampler starts from a point
within budget.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from pipeline.errors import BudgetExceededError, Log
from pipeline.recipe.schema import Recipe
from pipeline.search.blockspace import genotype_of, least_work
from pipeline.search.blockstudy import SCREEN_MARGIN, genotype_arch, params_of
from pipeline.search.cost import genotype_cost
from pipeline.search.space import Budget
from pipeline.variants import VARIANTS


#: A budget under this many times the floor starts the study at the floor genotype.
WARM_START_BELOW = 2.0


@dataclass(frozen=True)
class Floor:
    """The space's fastest genotype on a device and its price."""

    candidate: str      # "<genotype key>-<input size>"
    text: str           # the genotype in one line
    input_size: int
    latency_ms: float
    priced_by: str      # how: "emulation of its int8-ptq graph (...)"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def least_work_point(input_sizes):
    """The least-work genotype at the smallest of ``input_sizes`` and its sampler parameters."""
    stages, hswish, frame = least_work()
    size = min(int(n) for n in input_sizes)
    return genotype_of(stages, hswish, frame), size, params_of(stages, hswish, frame, size)


def space_floor(recipe: Recipe, device: str, variant: str, classes: int, log: Log) -> Floor:
    """The floor of the block space on ``device`` for ``variant`` (one emulation, cached).

    Raises:
        DeviceUnavailableError: the emulated run failed.
    """
    g, size, _ = least_work_point(recipe.search.input_sizes)
    name = genotype_arch(g, size).name
    graph = "int8-ptq" if VARIANTS.get(variant).source == "qat" else variant
    cost = genotype_cost(recipe, g, size, device, graph, classes, log)
    how = f"emulation of its {graph} graph" + (" (a lower bound of the QAT graph's)" if graph != variant else "")
    if not cost.get("loaded") or cost.get("latency_ms") is None:
        ms, how = math.inf, f"{how}: the device does not load it"
    else:
        ms = float(cost["latency_ms"])
    log(f"[search] floor of the space on {device}: {name} ({g.text()}) {ms:.3f} ms, {how}")
    return Floor(name, g.text(), size, ms, how)


def below_floor(floor: Floor, budget: Budget, device: str, variant: str,
                root: Path) -> Optional[BudgetExceededError]:
    """The error to raise when ``budget``'s latency is under the floor by more than the gates'
    margin (no proposal could pass them), after writing ``search.json``; None otherwise."""
    from pipeline.store.atomic import atomic_write_json

    # A floor the device does not load says nothing of the other genotypes: the search goes on.
    if not math.isfinite(floor.latency_ms) or floor.latency_ms <= budget.latency_ms * (1 + SCREEN_MARGIN):
        return None
    error = BudgetExceededError(
        f"the fastest genotype of this space is {floor.latency_ms:.3f} ms on {device} (latency budget "
        f"{budget.latency_ms:g} ms): {floor.candidate} ({floor.text}), by {floor.priced_by}; "
        "no candidate was trained: loosen the budget")
    result = {"root": str(root), "device": device, "variant": variant, "budget": budget.to_dict(), "rows": [],
              "chosen": None, "floor": floor.to_dict(), "reason": str(error)}
    atomic_write_json(root / "search.json", result)
    error.result = result  # what `search --json` prints
    return error


def warm_start(study, floor: Floor, budget: Budget, input_sizes, log: Log) -> bool:
    """Enqueues the floor genotype as a new study's first proposal when ``budget`` is
    under :data:`WARM_START_BELOW` x the floor; returns whether it did."""
    if study.trials or not math.isfinite(floor.latency_ms) or \
            budget.latency_ms >= WARM_START_BELOW * floor.latency_ms:
        return False
    study.enqueue_trial(least_work_point(input_sizes)[2])
    log(f"[search] {budget.latency_ms:g} ms is under {WARM_START_BELOW:g} x the floor: the first proposal "
        f"is the floor genotype {floor.candidate}")
    return True

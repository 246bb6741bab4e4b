"""The floor of the block space: the fastest genotype a device can run, known before any training.

The genotype that computes least (:func:`pipeline.search.blockspace.least_work`) at the
recipe's smallest input size is priced the way gate 1 prices every proposal
(:mod:`pipeline.search.blockstudy`): by the per-block table, its missing parts measured
now, where the table applies (one thread, a full-integer variant); by full emulation
otherwise. Why no other genotype is cheaper:

* the table's prediction is additive: the sum of the parts' costs plus ``fixed +
  per_part x parts`` (:func:`pipeline.search.blocktable.predict`); a part's cost
  depends only on what it computes (its input shape and spec);
* the choices are not independent stage by stage (a stage's width is the next
  block's input channels; where hard-swish starts is one choice for all stages), but
  every least option does a subset of the work of every other option of its choice,
  in its own part and in the parts after it; a dropped stage removes a part, whose
  cost is far above the per-part overhead the table subtracts for it.

So the floor is a lower bound of every proposal's gate-1 price (``tests/test_search_floor.py``
checks it with a stand-in price against brute force and against sampled genotypes).
A latency budget under it by more than gate 1's margin is met by no proposal: the
search stops before anything is trained, with the figure.

A budget close to the floor (under :data:`WARM_START_BELOW` x the floor) leaves most
of the space over budget, so uniform start-up proposals are mostly rejected: the
floor genotype is then the study's first proposal, and the constrained sampler starts
from a point within budget.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from pipeline.errors import BudgetExceededError, Log
from pipeline.recipe.schema import Recipe
from pipeline.search.blockspace import genotype_of, least_work
from pipeline.search.blockstudy import SCREEN_MARGIN, TableScreen, genotype_arch, params_of
from pipeline.search.cost import genotype_cost
from pipeline.search.space import Budget


#: A budget under this many times the floor starts the study at the floor genotype.
WARM_START_BELOW = 2.0


@dataclass(frozen=True)
class Floor:
    """The space's fastest genotype on a device and its price."""

    candidate: str      # "<genotype key>-<input size>"
    text: str           # the genotype in one line
    input_size: int
    latency_ms: float
    priced_by: str      # "per-block table" or "emulation"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def least_work_point(input_sizes):
    """The least-work genotype at the smallest of ``input_sizes`` and its sampler parameters."""
    stages, hswish, frame = least_work()
    size = min(int(n) for n in input_sizes)
    return genotype_of(stages, hswish, frame), size, params_of(stages, hswish, frame, size)


def space_floor(recipe: Recipe, device: str, variant: str, classes: int, screen: TableScreen,
                log: Log) -> Floor:
    """The floor of the block space on ``device`` (priced as gate 1 prices a proposal).

    Raises:
        RuntimeIncompatibleError, DeviceUnavailableError: as the pricing does.
    """
    g, size, _ = least_work_point(recipe.search.input_sizes)
    name = genotype_arch(g, size).name
    if screen.applies:
        ms, how = float(screen.price(g, size)["latency_ms"]), "per-block table"
    else:
        cost = genotype_cost(recipe, g, size, device, variant, classes, log)
        if not cost.get("loaded") or cost.get("latency_ms") is None:
            ms, how = float("inf"), "emulation (the device does not load it)"
        else:
            ms, how = float(cost["latency_ms"]), "emulation"
    log(f"[search] floor of the space on {device}: {name} ({g.text()}) {ms:.3f} ms ({how})")
    return Floor(name, g.text(), size, ms, how)


def below_floor(floor: Floor, budget: Budget, device: str, variant: str,
                root: Path) -> Optional[BudgetExceededError]:
    """The error to raise when ``budget``'s latency is under the floor by more than gate 1's
    margin (nothing could pass gate 1), after writing ``search.json``; None otherwise."""
    from pipeline.store.atomic import atomic_write_json

    # A floor the device does not load says nothing of the other genotypes: the search goes on.
    if not math.isfinite(floor.latency_ms) or floor.latency_ms <= budget.latency_ms * (1 + SCREEN_MARGIN):
        return None
    error = BudgetExceededError(
        f"the fastest genotype of this space is {floor.latency_ms:.3f} ms on {device} (latency budget "
        f"{budget.latency_ms:g} ms): {floor.candidate} ({floor.text}), priced by the {floor.priced_by}; "
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

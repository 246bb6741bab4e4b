"""Recipes of the compression stages' tests: the smallest that exercise a stage.

Also imported by the subprocess of ``tests/test_optimize.py``'s distribution tests.
"""

import dataclasses

import pytest

from pipeline.recipe.schema import DataConfig, Recipe
from pipeline.recipe.training import GENOTYPE_FAMILY

# One row per registered family; tests/test_optimize.py::test_every_family_has_a_case fails
# when one is missing.
FAMILY_CASES = {
    "mobilenet_v1": dict(alpha=0.25),
    "mobilenet_v2": dict(alpha=0.25),
    "mobilenet_v3_small": dict(alpha=0.25),
    "mobilenet_v3_large": dict(alpha=0.25),
}
#: The block-level family (``model.family: mbconv``) in its smallest useful form: a stem
#: and two one-block stages, one with squeeze-excite and hard-swish (about 30 layers
#: against 90-160 for the hand-designed families). Tests of a stage's mechanics that do
#: not depend on a family (a distribution strategy, determinism) train it, since
#: building and tracing the graph, not arithmetic, is what a 32x32 model costs.
TINY_GENOTYPE = {
    "stem": 8, "head": 64, "head_fc": 0, "stem_act": "relu",
    "stages": [{"kernel": 3, "expand": 1, "depth": 1, "width": 16, "se": False, "act": "relu", "stride": 2},
               {"kernel": 3, "expand": 3, "depth": 1, "width": 24, "se": True, "act": "hswish", "stride": 2}],
}
TARGET = 0.5
# 50% per layer is exact up to rounding of tiny kernels; PQAT and the int8 file must keep it.
KEPT = 0.45

DATA = DataConfig(dataset="shapes", train_samples=128, val_samples=32, test_samples=32)


def make_recipe(family, *, prune=True, m_by_n=None, strategy="default", logical_devices=0):
    """The smallest recipe that exercises a stage: 32x32x1, batch 32, one epoch each."""
    case = dict(alpha=1.0, genotype=TINY_GENOTYPE) if family == GENOTYPE_FAMILY else FAMILY_CASES.get(family)
    if case is None:
        pytest.fail(f"model family {family!r} has no case in FAMILY_CASES of tests/helpers/stages.py")
    base = Recipe(name="optimize-test", seed=0)
    r = dataclasses.replace
    return r(
        base,
        data=DATA,
        model=r(base.model, family=family, alpha=case["alpha"], input_size=32, channels=1,
                genotype=case.get("genotype")),
        train=r(base.train, epochs=1, batch_size=32, strategy=strategy, logical_devices=logical_devices),
        prune=r(base.prune, enabled=prune, target_sparsity=TARGET, m_by_n=m_by_n, epochs=1),
        qat=r(base.qat, enabled=True, epochs=1),
    ).validate()


def quiet(line):
    """A stage's ``log`` that drops every line."""

"""Recipes of the compression stages' tests: the smallest that exercise a stage.

Also imported by the subprocess of ``tests/test_optimize.py``'s distribution tests.
"""

import dataclasses
from typing import Any

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
#: A block genotype that holds every layer kind of every registered family (checked by
#: ``tests/test_optimize.py::test_the_chained_genotype_holds_every_layer_kind``): a
#: ReLU6 stem, a ReLU depthwise-separable stage, a hard-swish stage with squeeze-excite
#: whose second block adds its residual, a ReLU6 head and dense layer after the pool. About 45
#: layers against 85 (MobileNetV1) and 150 (V3-Small): pruning and QAT wrap each layer by
#: its kind, so a chain through it acts on every kind at a fraction of the tracing.
EVERY_KIND_GENOTYPE = {
    "stem": 8, "head": 64, "head_fc": 16, "stem_act": "relu6",
    "stages": [{"kernel": 3, "expand": 1, "depth": 1, "width": 16, "se": False, "act": "relu", "stride": 2},
               {"kernel": 3, "expand": 3, "depth": 2, "width": 24, "se": True, "act": "hswish", "stride": 2}],
}
TARGET = 0.5
# 50% per layer is exact up to rounding of tiny kernels; PQAT and the int8 file must keep it.
KEPT = 0.45

DATA = DataConfig(dataset="shapes", train_samples=128, val_samples=32, test_samples=32)


def make_recipe(family, *, prune=True, m_by_n=None, strategy="default", logical_devices=0, genotype=None):
    """The smallest recipe that exercises a stage: 32x32x1, batch 32, one epoch each.

    ``family`` "mbconv" builds ``genotype`` (default: :data:`TINY_GENOTYPE`)."""
    case = dict(alpha=1.0, genotype=genotype or TINY_GENOTYPE) if family == GENOTYPE_FAMILY \
        else FAMILY_CASES.get(family)
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


@dataclasses.dataclass
class ArraySplits:
    """In-memory splits of the arrays a schedule or fine-tune reads (train, validation,
    optionally test), for tests that run a stage on a few images without a data set."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    x_test: Any = None
    y_test: Any = None
    num_classes: int = 10


"""Budgets: measurement against a build's summary, verdicts, table."""

import pytest

from pipeline.gate.budgets import check_budgets, format_budget_table
from pipeline.recipe.budgets import validate_budgets
from pipeline.errors import ConfigError
from pipeline.summary import BuildSummary, DeviceSummary, TensorIO, Validation, VariantSummary


def variant(top1, size_bytes, gzip_bytes, zeros_prunable, max_unique_per_kernel=256):
    return VariantSummary(
        top1=top1, agreement_with_float=99.0, size_bytes=size_bytes, gzip_bytes=gzip_bytes,
        zeros_prunable=zeros_prunable, zeros_all_kernels=zeros_prunable, max_unique_per_kernel=max_unique_per_kernel,
        kernels=(), input=TensorIO("float32", (1, 32, 32, 1)), output=TensorIO("float32", (1, 10)), ops=(),
        samples=100, validation=Validation(0.0, 1.0, 16, size_bytes), macs=1000, path="x.tflite", chain="float",
        predictions="x.pred.npy")


METRICS = BuildSummary(
    recipe="t", float_top1=90.0, params=1000, macs=1000, deploy_variant="int8-qat", labels=(),
    variants={
        "float32": variant(90.0, 10240, 9000, 0.0),
        "int8-qat": variant(89.5, 2048, 1024, 0.5, max_unique_per_kernel=16),
        "int8-ptq": variant(87.0, 3072, 2048, 0.0),
    },
    devices={"pixel4": {"int8-qat": DeviceSummary(loaded=True, runtime="litert 2.3.0",
                                                  instructions_per_inference=2_500_000, latency_ms=3.0)}},
)


def test_each_kind_measures_and_decides():
    budgets = {
        "max_top1_drop": {"int8-qat": 1.0, "int8-ptq": 2.0},
        "max_size_kb": {"int8-qat": 1},
        "max_size_ratio": {"*": 0.25},
        "min_sparsity": {"int8-qat": 0.45},
        "max_unique_values": {"int8-qat": 16},
        "max_minstructions": {"pixel4": 3},
        "max_latency_ms": {"*": 2.0},
    }
    checks = {(c.budget, c.subject): c for c in check_budgets(budgets, METRICS, ["pixel4"])}
    assert checks[("max_top1_drop", "int8-qat")].measured == 0.5 and checks[("max_top1_drop", "int8-qat")].ok
    assert checks[("max_top1_drop", "int8-ptq")].measured == 3.0 and not checks[("max_top1_drop", "int8-ptq")].ok
    assert checks[("max_size_kb", "int8-qat")].measured == 2.0 and not checks[("max_size_kb", "int8-qat")].ok
    assert ("max_size_ratio", "float32") not in checks  # a ratio to itself is meaningless
    assert checks[("max_size_ratio", "int8-qat")].measured == 0.2 and checks[("max_size_ratio", "int8-qat")].ok
    assert not checks[("max_size_ratio", "int8-ptq")].ok
    assert checks[("min_sparsity", "int8-qat")].ok
    assert checks[("max_unique_values", "int8-qat")].ok
    assert checks[("max_minstructions", "pixel4")].measured == 2.5 and checks[("max_minstructions", "pixel4")].ok
    assert not checks[("max_latency_ms", "pixel4")].ok


def test_unmeasured_budget_is_missed():
    (c,) = check_budgets({"max_latency_ms": {"rpi4": 10}}, METRICS, ["rpi4"])
    assert c.measured is None and not c.ok
    assert "| max_latency_ms | rpi4 | <= 10 ms | not measured | MISSED |" in format_budget_table([c])


def test_table_marks_missed():
    checks = check_budgets({"max_size_kb": {"int8-qat": 1}}, METRICS)
    assert "| max_size_kb | int8-qat | <= 1 KiB | 2 KiB | MISSED |" in format_budget_table(checks)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_non_finite_limits_are_rejected(text):
    import yaml

    limit = yaml.safe_load(text)
    with pytest.raises(ConfigError, match=r"recipe.budgets.max_size_kb.int8-qat: expected a finite number"):
        validate_budgets({"max_size_kb": {"int8-qat": limit}}, ["int8-qat"])


def test_every_recipe_budget_has_a_measure():
    from pipeline.gate.budgets import MEASURES
    from pipeline.recipe.budgets import BUDGETS

    assert list(MEASURES) == list(BUDGETS)

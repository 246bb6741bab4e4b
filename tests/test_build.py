"""End-to-end smoke build: real training, pruning, PQAT, conversion and host evaluation."""

import json
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.recipe.schema import VARIANTS
from pipeline.tflite.reader import float_compute_ops, read_tflite

pytestmark = pytest.mark.integration


def test_every_variant_built_and_evaluated(smoke_build):
    m = smoke_build.summary
    # The default recipe builds every variant but the clustered ones (tests/test_cluster.py).
    assert list(m.variants) == [v for v in VARIANTS if v not in ("int8-cqat", "int8-pcqat")]
    for name, v in m.variants.items():
        assert 0.0 <= v.top1 <= 100.0
        assert v.val_top1 is not None and 0.0 <= v.val_top1 <= 100.0  # what search's finalists compare
        assert v.size_bytes > 1000 and v.gzip_bytes < v.size_bytes
        assert v.validation.validation_samples == 16
    assert m.float_val_top1 is not None and 0.0 <= m.float_val_top1 <= 100.0
    assert m.macs > 0 and m.params > 0


def test_summary_is_written_once_and_reads_back_typed(smoke_build):
    from pipeline.summary import SCHEMA_VERSION, load_summary

    on_disk = load_summary(smoke_build.root)
    assert on_disk == smoke_build.summary
    data = json.loads((smoke_build.root / "summary.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    # The keys readers and docs knew stay; the typed summary only adds its version.
    assert {"recipe", "float_top1", "params", "macs", "deploy_variant", "variants", "devices", "labels",
            "budgets", "stages_run"} <= set(data)


def test_evaluation_saves_predictions_that_give_its_top1(smoke_build):
    """Later stages read the saved predictions instead of running the models again."""
    from pipeline.data import load_dataset
    from pipeline.recipe.load import load_recipe

    recipe = load_recipe("default", smoke=True)
    y = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed).y_test
    for name, v in smoke_build.summary.variants.items():
        pred = np.load(v.predictions)
        assert v.predictions == str(smoke_build.root / "tflite" / f"{name}.pred.npy")
        assert pred.dtype == np.int64 and pred.shape == (v.samples,) == y.shape
        assert float(np.mean(pred == y) * 100.0) == pytest.approx(v.top1)


def test_manifest_records_every_stage(smoke_build):
    manifest = json.loads((smoke_build.root / "manifest.json").read_text())
    stages = manifest["stages"]
    built = smoke_build.summary.variants
    expected = {"train", "prune", "qat"} | {f"convert/{v}" for v in built} | {f"evaluate/{v}" for v in built}
    assert expected <= set(stages)
    for v in built:
        assert stages[f"evaluate/{v}"]["outputs"]["predictions"]["path"] == f"tflite/{v}.pred.npy"
    for name, rec in stages.items():
        assert rec["versions"]["tensorflow"].startswith("2.21"), name
        for out in rec["outputs"].values():
            assert len(out["sha256"]) == 64
    assert manifest["data"]["fingerprint"] and manifest["recipe"]["name"] == "default"


def test_full_integer_variants_compute_in_int8(smoke_tflite):
    for name in ("int8-ptq", "int8-qat"):
        model = read_tflite(smoke_tflite[name])
        assert float_compute_ops(model) == [], name
        ops = {op for op, _ in model.op_versions()}
        assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= ops


def test_int8_files_are_small(smoke_build):
    # The recipe's own budget (0.40x for the thin V2-0.35: per-channel scales and zero
    # points cost 24 bytes a channel), and well below float16's 0.5x.
    from pipeline.recipe.load import load_recipe

    limits = load_recipe("default").budgets["max_size_ratio"]
    v = smoke_build.summary.variants
    for name in ("int8-ptq", "int8-qat"):
        assert v[name].size_bytes <= limits[name] * v["float32"].size_bytes, name
        assert v[name].size_bytes < v["float16"].size_bytes, name


def test_the_default_recipe_device_budgets_are_checked_on_every_device(smoke_build):
    # The smoke form keeps the full recipe's model and input size, so the cost budgets
    # (latency, instructions, memory) hold; a one-epoch model has no accuracy floor.
    from pipeline.gate.budgets import BUDGETS
    from pipeline.recipe.load import load_recipe

    recipe = load_recipe("default")
    device_kinds = [k for k in recipe.budgets if BUDGETS[k].scope == "device"]
    assert set(device_kinds) == {"max_latency_ms", "max_minstructions", "max_memory_mb", "min_device_top1"}
    rows = {(b.budget, b.subject): b for b in smoke_build.summary.budgets}
    for kind in set(device_kinds) - {"min_device_top1"}:  # the smoke form drops the accuracy floor
        for device in recipe.devices.targets:
            row = rows[(kind, device)]
            assert row.measured is not None and row.measured > 0, (kind, device)
            assert row.ok, (kind, device, row.measured, row.limit)
    assert not any(b.budget == "min_device_top1" for b in smoke_build.summary.budgets)
    # The two devices on different runtimes execute different code, and the budget saw it.
    assert rows[("max_minstructions", "camera-a53")].measured != rows[("max_minstructions", "pixel4")].measured


def test_pqat_keeps_sparsity_into_int8_file(smoke_build):
    # The default recipe prunes to 50% and uses prune-preserving QAT.
    assert smoke_build.summary.variants["int8-qat"].zeros_prunable >= 0.45


def test_parser_op_list_matches_runtime(smoke_tflite):
    from pipeline.tflite.host import allocate, make_interpreter

    for path in smoke_tflite.values():
        ours = sorted(op.opcode for op in read_tflite(path).operators)
        interp = make_interpreter(path.read_bytes(), delegates=False)  # XNNPACK would hide the ops
        allocate(interp)
        assert ours == sorted(d["op_name"] for d in interp._get_ops_details())


def test_rebuild_with_nothing_changed_runs_no_stage(smoke_build):
    from pipeline.build import build
    from pipeline.recipe.load import load_recipe

    again = build(load_recipe("default", smoke=True), out=smoke_build.root, log=lambda s: None)
    assert again.stages_run == []
    assert again.summary.devices == smoke_build.summary.devices
    assert again.summary.variants == smoke_build.summary.variants


def test_a_build_without_devices_checks_no_device_budget(smoke_build, tmp_path):
    # The default recipe's device budgets have nothing to be measured on: neither met nor missed.
    out = tmp_path / "b"
    shutil.copytree(smoke_build.root, out)
    res = CliRunner().invoke(main, ["build", str(smoke_build.root / "recipe.yaml"), "--out", str(out), "--no-devices"])
    assert res.exit_code == 0, res.output
    assert ("[budgets] device budgets not checked (no device runs): max_latency_ms, max_minstructions, "
            "max_memory_mb") in res.output
    assert "max_latency_ms" not in repr(json.loads((out / "summary.json").read_text())["budgets"])


def test_impossible_budget_fails_with_table_and_keeps_artifacts(smoke_build, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(smoke_build.root, out)
    recipe = yaml.safe_load((smoke_build.root / "recipe.yaml").read_text())
    recipe.update(smoke_form=False, budgets={"max_size_kb": {"int8-qat": 1}, "max_top1_drop": {"*": 100}})
    rfile = tmp_path / "r.yaml"
    rfile.write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(main, ["build", str(rfile), "--out", str(out), "-q", "--no-devices"])
    assert res.exit_code == 1, res.output
    assert "| max_size_kb | int8-qat | <= 1 KiB |" in res.output and "MISSED" in res.output
    assert "error: budget missed: max_size_kb[int8-qat]" in res.output
    assert (out / "tflite" / "int8-qat.tflite").exists() and (out / "summary.json").exists()


def test_evaluate_command_matches_build(smoke_build, smoke_tflite):
    res = CliRunner().invoke(main, ["evaluate", str(smoke_tflite["int8-qat"]), "--recipe", "default",
                                    "--smoke", "--json"])
    assert res.exit_code == 0, res.output
    top1 = json.loads(res.output)["top1"]
    assert top1 == pytest.approx(smoke_build.summary.variants["int8-qat"].top1)


def test_inspect_shows_ops_and_quantization(smoke_tflite):
    res = CliRunner().invoke(main, ["inspect", str(smoke_tflite["int8-ptq"]), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert any(k.startswith("CONV_2D:v") for k in d["ops"])
    assert d["inputs"][0]["shape"] == [1, 32, 32, 1] and d["outputs"][0]["shape"][-1] == 10
    assert d["tensor_dtypes"]["int8"] > 10
    text = CliRunner().invoke(main, ["inspect", str(smoke_tflite["int8-ptq"])]).output
    assert "DEPTHWISE_CONV_2D:v" in text and "input  " in text


def test_zero_fraction_counts_real_zeros(smoke_tflite):
    from pipeline.tflite.reader import PRUNABLE_OPS, weight_kernels, zero_fraction

    model = read_tflite(smoke_tflite["float32"])
    kernels = [a for op, _, a in weight_kernels(model) if op == "CONV_2D"]
    assert kernels and all(a.dtype == np.float32 for a in kernels)
    prunable = [a for op, _, a in weight_kernels(model) if op in PRUNABLE_OPS]
    by_hand = sum(int((a == 0).sum()) for a in prunable) / sum(a.size for a in prunable)
    assert zero_fraction(model) == pytest.approx(by_hand)
    assert 0.45 <= by_hand <= 0.55  # the default recipe prunes conv/dense kernels to 50%


def test_a_failed_rebuild_keeps_the_last_summary_aside(tmp_path):
    """The last finished build's summary is never read as that of a rebuild that did not finish."""
    from pipeline.build import build
    from pipeline.recipe.schema import Recipe
    from pipeline.errors import DataError

    out = tmp_path / "b"
    out.mkdir()
    (out / "summary.json").write_text('{"recipe": "earlier"}')
    recipe = Recipe.from_dict({"name": "gone", "data": {"dataset": "folder", "path": str(tmp_path / "nowhere")}})
    with pytest.raises(DataError, match="data directory not found"):
        build(recipe, out=out, log=lambda _: None)
    assert not (out / "summary.json").exists()
    assert json.loads((out / "summary.previous.json").read_text()) == {"recipe": "earlier"}

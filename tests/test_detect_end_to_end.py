"""A whole detection build through ``mobile-model build``, on the embedded set written as
COCO files: every stage, devices, bundle and report. (That the COCO files give back the
embedded set exactly is ``test_detect_build.py``'s; the build is deterministic.)"""

import json

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main

#: A tiny detection recipe: 64x64, one epoch per stage, two variants, one device.
TINY = {"name": "detect-tiny", "task": "detection", "seed": 0,
        "model": {"family": "mobilenet_v1", "alpha": 0.25, "input_size": 64},
        "train": {"epochs": 1, "batch_size": 16}, "prune": {"epochs": 1}, "qat": {"epochs": 1},
        "convert": {"variants": ["float32", "int8-qat"]}, "devices": {"targets": ["pixel4"], "samples": 2},
        "budgets": {"min_map": None, "max_map_drop": None}}
COUNTS = {"train": 32, "val": 8, "test": 8}


def _build(tmp_path, name, data):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "data": data}))
    out = tmp_path / name
    res = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--json", "-q"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.output[res.output.index("{"):])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A build of the embedded set written as COCO files (the three splits' annotation files)."""
    from pipeline.detection.synthetic import load_synthetic
    from tests.test_detect_build import write_coco_splits

    tmp = tmp_path_factory.mktemp("detect")
    return _build(tmp, "coco", write_coco_splits(load_synthetic((64, 64, 3), 0, COUNTS), tmp / "coco"))


@pytest.mark.integration
@pytest.mark.device
def test_the_build_runs_every_stage_and_writes_its_files(built):
    out, summary = built
    assert summary["counts"] == COUNTS and "coco/train.json" in summary["data_source"]
    assert list(summary["stage_seconds"]) == ["data", "train", "prune", "qat", "export", "evaluate", "devices",
                                              "bundle", "report"]
    for v in summary["variants"]:
        device = v["devices"]["pixel4"]
        assert device["loaded"] and device["samples"] == 2 and device["instructions"] > 0
        # (A one-epoch 64x64 detector scores nothing >= 0.5, so this agreement is over no host
        # detections; the 224x224 preset's build is where it counts. The bundle check below
        # compares every detection.)
        assert device["agreement"] == 1.0 and (out / "devices" / "pixel4" / f"{v['name']}.json").exists()
        assert (out / "variants" / f"{v['name']}.tflite").stat().st_size == v["size_bytes"]
    assert summary["variants"][1]["sparsity"] >= 0.49  # the int8 deploy variant keeps the pruning
    bundle = summary["bundle"]
    assert bundle["variant"] == "int8-qat" and (out / bundle["path"]).stat().st_size == bundle["size_bytes"]
    assert (out / "bundle" / "labels.txt").read_text().splitlines() == summary["labels"]
    # MediaPipe's ObjectDetector reports every detection of ours, low scores included, and no other.
    assert bundle["detections"] > 0 and bundle["agreement"] == bundle["reverse_agreement"] == 1.0
    report = (out / "report.md").read_text()
    assert "## Bundle" in report and report.count("](pictures/") == 4
    assert all((out / "pictures" / f"{i:02d}_float32_vs_int8-qat.png").exists() for i in range(4))
    assert yaml.safe_load((out / "recipe.yaml").read_text())["task"] == "detection"


def test_a_detection_recipe_refuses_the_data_option_in_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "data": {"dataset": "synthetic"}}))
    res = CliRunner().invoke(main, ["build", str(recipe), "--data", str(tmp_path)])
    assert res.exit_code == 2 and "--data takes a folder of class sub-folders" in res.output
    assert not (tmp_path / "build").exists()

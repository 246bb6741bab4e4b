"""The detection build's config, budgets and report (no training: the demo runs the build)."""

import json

import pytest

from pipeline.build.detect import (DetectConfig, DetectResult, DeviceFigures, VariantFigures, budget_failures,
                                   report_markdown, variant_table)
from pipeline.errors import BudgetExceededError, ConfigError, DataError


def test_defaults_follow_the_brief():
    cfg = DetectConfig.from_dict({})
    assert cfg.input_shape == (224, 224, 3)
    assert (cfg.family, cfg.alpha, cfg.prune_sparsity) == ("mobilenet_v2", 0.35, 0.5)
    assert cfg.variants == ("float32", "float16", "dynamic", "int8-ptq", "int8-qat")
    assert cfg.target_devices() == ("pixel4", "rpi4", "camera-a53")


def test_config_round_trips_through_json():
    cfg = DetectConfig.from_dict({"data": {"dataset": "synthetic", "train": 60}, "input_size": 96,
                                  "devices": ["pixel4"], "postprocess": {"max_detections": 10}, "min_map": 0.5})
    again = DetectConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.postprocess.max_detections == 10


@pytest.mark.parametrize("data, message", [
    ({"epochz": 3}, "detect: unknown key 'epochz'; valid keys: data, input_size"),
    ({"data": {"dataset": "imagenet"}},
     "detect.data.dataset: unknown data set 'imagenet'; valid: synthetic, coco, voc"),
    ({"data": {"dataset": "coco", "path": "images"}}, "detect.data.annotations: the coco data set needs"),
    ({"data": {"dataset": "voc"}}, "detect.data.path: the voc data set needs a path"),
    ({"data": {"dataset": "synthetic", "size": 3}}, "detect.data: unknown key 'size'"),
    ({"input_size": 32}, "input_size must be >= 64"),
    ({"family": "resnet"}, "detect.family: unknown family 'resnet'"),
    ({"epochs": 0}, "detect.epochs: must be >= 1, got 0"),
    ({"epochs": "ten"}, "detect.epochs: expected an integer, got 'ten'"),
    ({"prune_sparsity": 1.0}, "detect.prune_sparsity: must be in (0, 1)"),
    ({"variants": ["float32", "int4"]}, "detect.variants: unknown variant 'int4'"),
    ({"variants": ["int8-qat"]}, "detect.variants: float32 must be built"),
    ({"devices": ["toaster"]}, "toaster"),
    ({"min_map": 85}, "detect.min_map: an mAP@0.5 in [0, 1], got 85"),
    ({"postprocess": {"nms": 1}}, "postprocess: unknown key 'nms'"),
])
def test_bad_config_is_one_clear_error(data, message):
    with pytest.raises(ConfigError) as err:
        DetectConfig.from_dict(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def _variant(name, map_50, devices=None):
    return VariantFigures(name, 300_000 if name.startswith("float") else 120_000, 0.5, map_50 * 0.6, map_50,
                          devices or {})


def test_budgets_min_map_and_drop_of_the_int8_variants():
    cfg = DetectConfig.from_dict({"min_map": 0.8, "max_map_drop": 0.02})
    variants = (_variant("float32", 0.90), _variant("float16", 0.90), _variant("dynamic", 0.85),
                _variant("int8-ptq", 0.87), _variant("int8-qat", 0.79))
    assert budget_failures(cfg, variants) == (
        "int8-ptq: mAP@0.5 0.870 is 0.030 under float32's 0.900 (max_map_drop 0.020)",
        "int8-qat: mAP@0.5 0.790 < min_map 0.800",
        "int8-qat: mAP@0.5 0.790 is 0.110 under float32's 0.900 (max_map_drop 0.020)")
    # The dynamic variant's weights are int8 but it computes in float: no drop budget.
    assert budget_failures(DetectConfig.from_dict({"min_map": None, "max_map_drop": None}), variants) == ()


def _result(failures=()):
    cfg = DetectConfig.from_dict({"input_size": 96, "devices": ["pixel4", "rpi4"], "device_samples": 2})
    loads = DeviceFigures(True, "loads", 2, 1_234_567, 0.85, 1.0, 0.95, 0.6, 0.9, 7)
    refused = DeviceFigures(False, "does not load: custom op TFLite_Detection_PostProcess", 2)
    variants = (_variant("float32", 0.9, {"pixel4": loads, "rpi4": refused}),
                _variant("int8-qat", 0.89, {"pixel4": loads, "rpi4": loads}))
    return DetectResult(cfg, ("disc", "ring"), "synthetic shapes", {"train": 6, "val": 2, "test": 2}, 0.91,
                        variants, {"data": 0.5, "train": 10.0}, failures)


def test_report_table_from_a_hand_made_result():
    lines = variant_table(_result()).markdown()
    assert lines[0].startswith("| variant | KiB | sparsity | mAP | mAP@0.5 | pixel4 loads | pixel4 M instr |")
    assert lines[2] == ("| float32 | 293.0 | 50.0% | 0.540 | 0.900 | yes | 1.23 | 0.85 | 100.0% of 7 | 0.900 "
                        "| **no** | - | - | - | - |")
    assert lines[3].startswith("| int8-qat | 117.2 | 50.0% | 0.534 | 0.890 | yes |")
    text = report_markdown(_result(), ("pictures/00_float32_vs_int8-qat.png",))
    assert "| total | 10.5 |" in text and "- all met" in text
    assert "![pictures/00_float32_vs_int8-qat.png](pictures/00_float32_vs_int8-qat.png)" in text


def test_result_round_trips_and_missed_budgets_raise():
    result = _result(("int8-qat: mAP@0.5 0.890 < min_map 0.950",))
    again = DetectResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert "- missed: int8-qat: mAP@0.5 0.890 < min_map 0.950" in report_markdown(again)
    with pytest.raises(BudgetExceededError, match="detection budgets missed: int8-qat"):
        again.check_budgets()
    _result().check_budgets()
    with pytest.raises(DataError, match="detect summary: missing key 'labels'"):
        DetectResult.from_dict({k: v for k, v in result.to_dict().items() if k != "labels"})


def test_demo_rejects_a_bad_option_in_one_line(capsys, tmp_path):
    from benchmarks.detection_demo import main

    assert main(["--out", str(tmp_path), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: detect: input_size must be >= 64") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_data_stage_splits_a_coco_folder_and_names_a_missing_file(tmp_path):
    from pipeline.build.detect_stages import Work, data_stage
    from pipeline.detection.coco import write_coco
    from pipeline.detection.synthetic import load_synthetic

    written = load_synthetic((64, 64, 3), counts={"train": 10, "val": 1, "test": 1}).train
    annotations = write_coco(written, tmp_path / "coco")
    cfg = DetectConfig.from_dict({"data": {"dataset": "coco", "path": str(annotations.parent / "images"),
                                           "annotations": str(annotations)}, "input_size": 64})
    work = Work(cfg, tmp_path / "out", log=lambda line: None)
    data_stage(work)
    assert work.items["counts"] == {"train": 7, "val": 1, "test": 2}
    assert json.loads((tmp_path / "out" / "data.json").read_text())["labels"] == list(written.labels)
    missing = DetectConfig.from_dict({"data": {"dataset": "coco", "path": str(tmp_path),
                                               "annotations": str(tmp_path / "none.json")}, "input_size": 64})
    with pytest.raises(DataError, match="none.json"):
        data_stage(Work(missing, tmp_path / "out2", log=lambda line: None))
    assert not (tmp_path / "out2").exists()

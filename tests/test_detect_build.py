"""The detection recipe, budgets and report; its data stage on coco files (no training:
``test_detect_end_to_end.py`` runs whole builds)."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.build.detect import (BundleFigures, DetectResult, DeviceFigures, VariantFigures, budget_failures,
                                   deploy_table, report_markdown, variant_table)
from pipeline.build.detect_config import DetectConfig, load_detect_recipe
from pipeline.errors import BudgetExceededError, ConfigError, DataError


def test_defaults_follow_the_brief():
    cfg = DetectConfig.from_dict({})
    assert cfg.input_shape == (224, 224, 3)
    assert (cfg.model.family, cfg.model.alpha, cfg.prune.sparsity) == ("mobilenet_v2", 0.35, 0.5)
    assert cfg.convert.variants == ("float32", "float16", "dynamic", "int8-ptq", "int8-qat")
    assert cfg.target_devices() == ("pixel4", "rpi4", "camera-a53")


def test_config_round_trips_through_json():
    cfg = DetectConfig.from_dict({"data": {"dataset": "synthetic", "train": 60}, "model": {"input_size": 96},
                                  "devices": {"targets": ["pixel4"]},
                                  "convert": {"postprocess": {"max_detections": 10}}, "budgets": {"min_map": 0.5}})
    again = DetectConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.convert.postprocess.max_detections == 10


@pytest.mark.parametrize("data, message", [
    ({"epochz": 3}, "recipe: unknown key 'epochz'; valid keys: name, task, seed, data, model"),
    ({"task": "classification"}, "recipe.task: expected 'detection' here, got 'classification'"),
    ({"data": {"dataset": "imagenet"}},
     "recipe.data.dataset: expected one of synthetic, coco, voc; got 'imagenet'"),
    ({"data": {"dataset": "coco", "path": "images"}}, "recipe.data.annotations: the coco data set needs"),
    ({"data": {"dataset": "coco", "path": "i", "annotations": "a.json", "val_annotations": "v.json"}},
     "recipe.data: val_annotations and test_annotations go together"),
    ({"data": {"dataset": "voc"}}, "recipe.data.path: the voc data set needs a path"),
    ({"data": {"dataset": "synthetic", "size": 3}}, "recipe.data: unknown key 'size'"),
    ({"model": {"input_size": 32}}, "input_size must be >= 64"),
    ({"model": {"family": "resnet"}}, "recipe.model.family: unknown family 'resnet'"),
    ({"train": {"epochs": 0}}, "recipe.train.epochs: expected a positive integer, got 0"),
    ({"train": {"epochs": "ten"}}, "recipe.train.epochs: expected an integer, got 'ten'"),
    ({"train": {"learning_rate": 0}}, "recipe.train.learning_rate: expected a positive number, got 0"),
    ({"prune": {"sparsity": 1.0}}, "recipe.prune.sparsity: must be in (0, 1)"),
    ({"convert": {"variants": ["float32", "int4"]}},
     "recipe.convert.variants: expected one of float32, float16, dynamic, int8-ptq, int8-qat; got 'int4'"),
    ({"convert": {"variants": ["float32", "float32"]}}, "recipe.convert.variants: duplicate entries"),
    ({"convert": {"variants": ["int8-qat"]}}, "recipe.convert.variants: float32 must be built"),
    ({"convert": {"variants": ["float32"]}}, "recipe.deploy_variant: 'int8-qat' is not built"),
    ({"devices": {"targets": ["toaster"]}}, "toaster"),
    ({"devices": {"targets": ["pixel4"], "deploy_targets": ["pixel4", "rpi4"]}},
     "recipe.devices.deploy_targets: pixel4 already in targets"),
    ({"budgets": {"min_map": 85}}, "recipe.budgets.min_map: an mAP@0.5 in [0, 1], got 85"),
    ({"convert": {"postprocess": {"nms": 1}}}, "postprocess: unknown key 'nms'"),
])
def test_bad_config_is_one_clear_error(data, message):
    with pytest.raises(ConfigError) as err:
        DetectConfig.from_dict(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def _variant(name, map_50, devices=None):
    return VariantFigures(name, 300_000 if name.startswith("float") else 120_000, 0.5, map_50 * 0.6, map_50,
                          devices or {})


def test_budgets_min_map_and_drop_of_the_int8_variants():
    cfg = DetectConfig.from_dict({"budgets": {"min_map": 0.8, "max_map_drop": 0.02}})
    variants = (_variant("float32", 0.90), _variant("float16", 0.90), _variant("dynamic", 0.85),
                _variant("int8-ptq", 0.87), _variant("int8-qat", 0.79))
    assert budget_failures(cfg, variants) == (
        "int8-ptq: mAP@0.5 0.870 is 0.030 under float32's 0.900 (max_map_drop 0.020)",
        "int8-qat: mAP@0.5 0.790 < min_map 0.800",
        "int8-qat: mAP@0.5 0.790 is 0.110 under float32's 0.900 (max_map_drop 0.020)")
    # The dynamic variant's weights are int8 but it computes in float: no drop budget.
    assert budget_failures(DetectConfig.from_dict({"budgets": {"min_map": None, "max_map_drop": None}}),
                           variants) == ()


def _result(failures=()):
    cfg = DetectConfig.from_dict({"model": {"input_size": 96}, "devices": {"targets": ["pixel4", "rpi4"],
                                                                           "samples": 2}})
    loads = DeviceFigures(True, "loads", 2, 1_234_567, 0.85, 1.0, 0.95, 0.6, 0.9, 7)
    refused = DeviceFigures(False, "does not load: custom op TFLite_Detection_PostProcess", 2)
    variants = (_variant("float32", 0.9, {"pixel4": loads, "rpi4": refused}),
                _variant("int8-qat", 0.89, {"pixel4": loads, "rpi4": loads}))
    bundle = BundleFigures("bundle/model.tflite", "int8-qat", 125_000, "ab" * 32, 8, 20, 1.0, 0.95)
    return DetectResult(cfg, ("disc", "ring"), "synthetic shapes", {"train": 6, "val": 2, "test": 2}, 0.91,
                        variants, {"data": 0.5, "train": 10.0}, failures, bundle)


def test_report_table_from_a_hand_made_result():
    lines = variant_table(_result()).markdown()
    assert lines[0].startswith("| variant | KiB | sparsity | mAP | mAP@0.5 | pixel4 loads | pixel4 M instr |")
    assert lines[2] == ("| float32 | 293.0 | 50.0% | 0.540 | 0.900 | yes | 1.23 | 0.85 | 100.0% of 7 | 0.900 "
                        "| **no** | - | - | - | - |")
    assert lines[3].startswith("| int8-qat | 117.2 | 50.0% | 0.534 | 0.890 | yes |")
    assert deploy_table(_result()).markdown()[2:] == ["| pixel4 | yes | 1.23 | 0.85 | 100.0% of 7 | 0.900 |",
                                                     "| rpi4 | yes | 1.23 | 0.85 | 100.0% of 7 | 0.900 |"]
    text = report_markdown(_result(), ("pictures/00_float32_vs_int8-qat.png",))
    assert "| total | 10.5 |" in text and "- all met" in text
    assert "![pictures/00_float32_vs_int8-qat.png](pictures/00_float32_vs_int8-qat.png)" in text
    assert ("MediaPipe Tasks' ObjectDetector on 8 test images reports 100.0% of our 20 detections with the same "
            "class, score and box (to a pixel), and 95.0% of its detections are ours.") in text


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
    assert err.startswith("error: recipe.model: input_size must be >= 64") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_data_stage_splits_a_coco_folder_and_names_a_missing_file(tmp_path):
    from pipeline.build.detect_stages import Work, data_stage
    from pipeline.detection.coco import write_coco
    from pipeline.detection.synthetic import load_synthetic

    written = load_synthetic((64, 64, 3), counts={"train": 10, "val": 1, "test": 1}).train
    annotations = write_coco(written, tmp_path / "coco")
    cfg = DetectConfig.from_dict({"data": {"dataset": "coco", "path": str(annotations.parent / "images"),
                                           "annotations": str(annotations)}, "model": {"input_size": 64}})
    work = Work(cfg, tmp_path / "out", log=lambda line: None)
    data_stage(work)
    assert work.items["counts"] == {"train": 7, "val": 1, "test": 2}
    assert json.loads((tmp_path / "out" / "data.json").read_text())["labels"] == list(written.labels)
    missing = DetectConfig.from_dict({"data": {"dataset": "coco", "path": str(tmp_path),
                                               "annotations": str(tmp_path / "none.json")},
                                      "model": {"input_size": 64}})
    with pytest.raises(DataError, match="none.json"):
        data_stage(Work(missing, tmp_path / "out2", log=lambda line: None))
    assert not (tmp_path / "out2").exists()


def test_the_preset_is_a_224_detection_recipe_that_only_build_takes(tmp_path):
    from pipeline.recipe.load import load_recipe, recipe_task

    cfg = load_detect_recipe("detect-shapes")
    assert (recipe_task("detect-shapes"), cfg.input_shape, cfg.deploy_variant) == ("detection", (224, 224, 3),
                                                                                    "int8-qat")
    assert (cfg.budgets.min_map, cfg.budgets.max_map_drop, cfg.prune.sparsity) == (0.85, 0.02, 0.5)
    assert cfg.target_devices() == ("pixel4", "rpi4", "camera-a53")
    from pipeline.devices.profiles import DEVICES

    assert sorted(cfg.deploy_devices()) == sorted(DEVICES.names())  # the deploy variant on every profile
    smoke = load_detect_recipe("detect-shapes", smoke=True)
    assert (smoke.input_shape, smoke.train.epochs, smoke.budgets.min_map, smoke.build_name) == (
        (64, 64, 3), 1, None, "detect-shapes-smoke")
    with pytest.raises(ConfigError, match="a detection recipe .* only `mobile-model build` takes it"):
        load_recipe("detect-shapes")
    assert recipe_task("default") == "classification"
    other = tmp_path / "seg.yaml"
    other.write_text("name: seg\ntask: segmentation\n")
    with pytest.raises(ConfigError, match="recipe.task: expected one of classification, detection; got "
                                          "'segmentation'"):
        load_recipe(other)


def write_coco_splits(splits, folder):
    """The three splits of a set as COCO files sharing one images folder."""
    from pipeline.detection.coco import write_coco

    files = {name: write_coco(splits.split(name), folder, f"{name}.json") for name in ("train", "val", "test")}
    return {"dataset": "coco", "path": str(folder / "images"), "annotations": str(files["train"]),
            "val_annotations": str(files["val"]), "test_annotations": str(files["test"])}


def test_coco_split_files_give_the_embedded_set_back_exactly(tmp_path):
    from pipeline.build.detect_stages import Work, data_stage
    from pipeline.detection.synthetic import load_synthetic

    counts = {"train": 6, "val": 2, "test": 3}
    data = write_coco_splits(load_synthetic((64, 64, 3), 0, counts), tmp_path / "coco")
    works = [Work(DetectConfig.from_dict({"data": d, "model": {"input_size": 64}}), tmp_path / name, log=print)
             for name, d in (("embedded", {"dataset": "synthetic", **counts}), ("coco", data))]
    for w in works:
        data_stage(w)
    embedded, coco = (w.items["splits"] for w in works)
    assert coco.labels == embedded.labels and works[1].items["counts"] == counts
    for name in ("train", "val", "test"):
        a, b = embedded.split(name), coco.split(name)
        assert np.array_equal(a.images, b.images)
        assert all(np.abs(x - y).max() <= 1e-6 for x, y in zip(a.boxes, b.boxes) if len(x))
        assert all(np.array_equal(x, y) for x, y in zip(a.classes, b.classes))
    # Splits whose categories differ are one error naming the file.
    doc = json.loads(Path(data["test_annotations"]).read_text())
    doc["categories"] = doc["categories"][:-1]
    doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] <= len(doc["categories"])]
    Path(data["test_annotations"]).write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"test.json.*categories .* differ from the training split's"):
        data_stage(Work(DetectConfig.from_dict({"data": data, "model": {"input_size": 64}}), tmp_path / "x",
                        log=print))


def test_the_build_seeds_tensorflow_before_it_builds_the_detector(tmp_path, monkeypatch):
    import pipeline.build.detect_stages as stages
    from pipeline.native import import_tensorflow

    tf = import_tensorflow()
    initial = []

    def first_weights(w, model, *args, **kwargs):  # stands in for training: the weights it starts from
        initial.append([v.numpy().copy() for v in model.weights[:4]])
        raise StopIteration

    monkeypatch.setattr(stages, "_train", first_weights)
    cfg = DetectConfig.from_dict({"data": {"dataset": "synthetic", "train": 2, "val": 1, "test": 1},
                                  "model": {"family": "mobilenet_v1", "alpha": 0.25, "input_size": 64}})
    for run in range(2):
        tf.random.uniform((7,))  # the global generator moves on between builds
        work = stages.Work(cfg, tmp_path / str(run), log=lambda line: None)
        stages.data_stage(work)
        with pytest.raises(StopIteration):
            stages.train_stage(work)
    assert all(np.array_equal(a, b) for a, b in zip(*initial))

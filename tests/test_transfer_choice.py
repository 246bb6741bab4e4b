"""Transfer against scratch (``transfer.choose``) and the fine-tune candidates.

A build from ``model.init`` with few images per class also trains the model from
scratch and keeps whichever validates higher; the fine-tune tries each (learning
rate, blocks) candidate and keeps the best on validation.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest

import models
from pipeline.recipe.schema import Recipe


def _splits(per_class, classes=10):
    return SimpleNamespace(y_train=np.repeat(np.arange(classes), per_class), num_classes=classes)


@pytest.mark.parametrize("choose, per_class, expected", [
    ("auto", 10, "best"), ("auto", 100, "best"), ("auto", 101, "transfer"),
    ("best", 500, "best"), ("transfer", 3, "transfer"), ("scratch", 3, "scratch"),
])
def test_auto_trains_both_only_at_few_images_per_class(choose, per_class, expected):
    from pipeline.build.stages import float_mode

    recipe = Recipe.from_dict({"model": {"init": "build/x"}, "transfer": {"choose": choose}})
    assert recipe.transfer.few_per_class == 100
    assert float_mode(recipe, _splits(per_class)) == expected
    # The smallest class decides: one class of 3 among classes of 500 is few.
    uneven = SimpleNamespace(y_train=np.concatenate([np.repeat(np.arange(9), 500), np.full(3, 9)]), num_classes=10)
    assert float_mode(Recipe.from_dict({"model": {"init": "build/x"}}), uneven) == "best"
    assert float_mode(Recipe(), _splits(3)) == "scratch"  # no start file


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("transfer_val, scratch_val, kept", [(60.0, 59.9, "transfer"), (60.0, 60.0, "transfer"),
                                                            (59.0, 61.5, "scratch")])
def test_the_higher_validation_top1_is_kept_ties_to_transfer(tmp_path, transfer_val, scratch_val, kept):
    from pipeline.train.transfer import keep_better

    files = {m: {"model": tmp_path / f"{m}.h5", "test_pred": tmp_path / f"{m}_test_pred.npy"}
             for m in ("transfer", "scratch", "float")}
    for m in ("transfer", "scratch"):
        for path in files[m].values():
            _write(path, f"{m} {path.name}")
    transferred = {"val_top1": transfer_val, "test_top1": 70.0, "epochs": 5, "init": {"path": "x"}, "head": {}}
    scratch = {"val_top1": scratch_val, "test_top1": 65.0, "epochs": 9}
    lines = []
    figures = keep_better(transferred, scratch, files, lines.append)
    assert figures["choice"]["kept"] == kept
    assert files["float"]["model"].read_text() == f"{kept} {kept}.h5"
    assert files["float"]["test_pred"].read_text() == f"{kept} {kept}_test_pred.npy"
    assert figures["epochs"] == (5 if kept == "transfer" else 9)
    assert ("init" in figures) == (kept == "transfer")  # a scratch model did not start from the file
    other = "scratch" if kept == "transfer" else "transfer"
    assert f"against {other}'s" in lines[0] and f"{abs(transfer_val - scratch_val):+.2f} points" in lines[0]


@pytest.mark.integration
def test_a_start_file_that_does_not_help_loses_to_scratch_and_the_build_says_so(tmp_path):
    """The start file is an untrained network and the transfer phases barely train (tiny
    learning rates), so the transferred model stays near chance on validation while the
    scratch model learns the digits: the build must deploy the scratch model."""
    from pipeline.build import build
    from pipeline.train.keras_io import save_keras

    root = tmp_path / "previous"
    save_keras(models.build_model("mobilenet_v1", 0.25, (32, 32, 1), 10, first_stride=1), root / "keras" / "float.h5")
    (root / "manifest.json").write_text(json.dumps({"stages": {}, "data": {"labels": list("abcdefghij")}}))
    recipe = Recipe.from_dict({
        "name": "choice-smoke", "data": {"dataset": "digits", "train_per_class": 20, "val_samples": 60,
                                         "test_samples": 60},
        "model": {"family": "mobilenet_v1", "alpha": 0.25, "input_size": 32, "channels": 1, "init": str(root)},
        "train": {"epochs": 8, "batch_size": 16, "learning_rate": 0.003},
        "transfer": {"head_epochs": 1, "head_learning_rate": 1e-7, "finetune_epochs": 1,
                     "finetune_learning_rate": [1e-7, 2e-7], "finetune_blocks": "all"},
        "qat": {"enabled": False}, "convert": {"variants": ["float32"]}, "deploy_variant": "float32"})
    out = tmp_path / "b"
    result = build(recipe, out=out, log=lambda _: None, run_devices=False)
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert {"transfer-head", "transfer-finetune", "train", "float-choice"} <= set(stages)
    tuned = stages["transfer-finetune"]["metrics"]
    vals = [c["val_top1"] for c in tuned["candidates"]]
    assert [c["learning_rate"] for c in tuned["candidates"]] == [1e-7, 2e-7]
    assert tuned["val_top1"] == max(vals) and vals[tuned["kept_candidate"]] == max(vals)

    choice = result.summary.float_choice
    scratch = stages["train"]["metrics"]
    assert choice.kept == "scratch", choice
    assert choice.scratch_val_top1 == scratch["val_top1"] > choice.transfer_val_top1 == tuned["val_top1"]
    assert (out / "keras" / "float.h5").read_bytes() == (out / "keras" / "scratch.h5").read_bytes()
    assert result.summary.float_top1 == pytest.approx(scratch["test_top1"])
    assert result.summary.init is None  # the deployed model did not start from the file
    assert choice.line() in (out / "report.md").read_text()
    assert choice.line() in (out / "bundle" / "MODEL_CARD.md").read_text()
    assert json.loads((out / "bundle" / "metadata.json").read_text())["float_choice"]["kept"] == "scratch"
    # The float variant converts the kept model, judged against the choice's figures.
    assert result.summary.variants["float32"].source_top1 == pytest.approx(scratch["test_top1"])
    assert build(recipe, out=out, log=lambda _: None, run_devices=False).stages_run == []

"""Training schedules: auto epochs (early stopping, best-weight restore), fine-tune lengths,
warm-up + cosine, and what the manifest and the report show of them."""

import dataclasses
import json

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.publish.records import BuildRecord, Confusion, StageCurve, most_confused
from pipeline.publish.sections import under_trained_warning
from pipeline.summary import still_learning
from pipeline.recipe.schema import AUTO, SHAPES_EPOCHS, Recipe
from pipeline.train.schedule import Plan, finetune_epochs, float_plan, warmup_steps
from tests.helpers.stages import TINY_GENOTYPE


# matplotlib 3.10 still calls pyparsing names that pyparsing 3.3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated - use:DeprecationWarning")


def quiet(msg):
    pass


# -- the recipe ------------------------------------------------------------------


def test_epochs_unset_is_auto_except_on_shapes():
    assert float_plan(Recipe()) == Plan(SHAPES_EPOCHS, False, 0, 1, None, 1)
    digits = Recipe.from_dict({"data": {"dataset": "digits"}})
    plan = float_plan(digits)
    assert plan.auto and plan.epochs == digits.train.max_epochs and plan.patience == digits.train.patience
    assert float_plan(Recipe.from_dict({"train": {"epochs": "auto", "max_epochs": 7}})).epochs == 7
    assert not float_plan(Recipe.from_dict({"data": {"dataset": "digits"}, "train": {"epochs": 5}})).auto


@pytest.mark.parametrize("train, message", [
    ({"epochs": "forever"}, "recipe.train.epochs: expected a positive integer or 'auto', got 'forever'"),
    ({"max_epochs": 0}, "recipe.train.max_epochs: expected a positive integer, got 0"),
    ({"patience": -1}, "recipe.train.patience: expected a positive integer, got -1"),
    ({"time_budget_s": 0}, "recipe.train.time_budget_s: expected a positive number, got 0"),
    ({"label_smoothing": 1.0}, "recipe.train.label_smoothing: expected a number from 0 to below 1, got 1.0"),
    ({"class_weight": "inverse"}, "recipe.train.class_weight: expected one of none, balanced; got 'inverse'"),
])
def test_recipe_rejects_bad_schedules(train, message):
    with pytest.raises(ConfigError) as exc:
        Recipe.from_dict({"train": train})
    assert message in str(exc.value)


def test_finetune_lengths_follow_the_float_epochs():
    assert finetune_epochs(3, 40, "prune") == 3  # a number is kept
    assert finetune_epochs(AUTO, None, "prune") == 4 and finetune_epochs(AUTO, None, "qat") == 1
    assert [finetune_epochs(AUTO, n, "prune") for n in (1, 4, 13, 20, 40)] == [4, 4, 5, 7, 10]
    assert [finetune_epochs(AUTO, n, "qat") for n in (1, 10, 11, 25, 40)] == [1, 1, 2, 3, 3]


def test_prune_finishes_its_schedule_with_epochs_to_spare():
    from pipeline.compress.prune import pruning_steps

    for float_epochs in (1, 5, 17, 40):
        epochs = finetune_epochs(AUTO, float_epochs, "prune")
        total = epochs * 47  # the default recipe: 3000 images, batch 64
        end, _ = pruning_steps(total)
        assert end <= total - 47 // 2  # the target is reached with at least half an epoch left


def test_compress_stages_key_on_the_resolved_lengths(tmp_path):
    from pipeline.build import compress_stages

    seen = {}

    def stage(name, config, inputs, outputs, fn):
        seen[name] = config
        return {}

    recipe = Recipe.from_dict({"data": {"dataset": "digits"}, "prune": {"enabled": True, "epochs": "auto"},
                               "qat": {"epochs": "auto"}})
    compress_stages(recipe, None, stage, tmp_path / "float.h5", tmp_path, quiet, float_epochs=21)
    assert seen["prune"]["prune"]["epochs"] == 7 and seen["qat"]["qat"]["epochs"] == 3
    assert seen["prune"]["augment"] == recipe.to_dict()["train"]["augment"]


@pytest.mark.parametrize("change, expected", [
    ({}, {"float": "prune", "qat": "qat"}),  # the default recipe: prune, then PQAT
    ({"prune": {"enabled": False}}, {"float": "train", "qat": "qat"}),
    ({"prune": {"structure": "channels+unstructured", "target_macs": 0.8}}, {"float": "prune", "qat": "qat"}),
    ({"prune": {"structure": "channels", "target_macs": 0.8}}, {"float": "channels", "qat": "qat"}),
    ({"convert": {"variants": ["float32", "int8-cqat", "int8-pcqat"]}, "cluster": {"enabled": True},
      "deploy_variant": "int8-cqat"},
     {"float": "prune", "cqat": "cqat", "pcqat": "pcqat"}),
])
def test_each_variant_source_is_judged_against_the_stage_that_made_it(change, expected):
    """source_top1 reads the test top-1 of the stage whose model a variant converts."""
    from pipeline.build.stages import source_stages
    from pipeline.recipe.load import load_recipe

    data = load_recipe("default").to_dict()
    data["budgets"] = {}
    for section, values in change.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) else values
    assert source_stages(Recipe.from_dict(data), "train") == expected
    # The float model of a transfer build comes from the stage the float step names.
    if expected["float"] == "train":
        assert source_stages(Recipe.from_dict(data), "float-choice")["float"] == "float-choice"


def test_balanced_class_weights():
    from pipeline.train.fit import class_weights

    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w == {0: pytest.approx(4 / 9), 1: pytest.approx(4 / 3), 2: 1.0}


def test_warmup_then_cosine():
    from pipeline.train.schedule import warmup_cosine

    assert warmup_steps(1000, 50, 1) == 50 and warmup_steps(100, 50, 1) == 20 and warmup_steps(100, 50, 0) == 0
    lr = warmup_cosine(1e-2, 100, 10)
    values = [float(lr(s)) for s in (0, 5, 10, 55, 100, 150)]
    assert values[0] == 0 and values[1] == pytest.approx(5e-3) and values[2] == pytest.approx(1e-2)
    assert values[3] == pytest.approx(5e-3, rel=1e-3) and values[4] == pytest.approx(0, abs=1e-9)
    assert values[5] == pytest.approx(0, abs=1e-9)
    assert float(warmup_cosine(1e-2, 100, 0)(0)) == pytest.approx(1e-2)  # no warm-up: starts at the peak


def test_a_budget_brings_the_cosine_end_forward():
    from pipeline.train.schedule import epochs_that_fit, warmup_cosine

    # 1 epoch of 10 s run, 35 s budget: 2 more fit (the fit stops before an epoch
    # that would end past the budget), never past the cap, never before what ran.
    assert epochs_that_fit(1, 10.0, 10.0, 35.0, 20) == 3
    assert epochs_that_fit(1, 10.0, 10.0, 1000.0, 20) == 20
    assert epochs_that_fit(4, 50.0, 10.0, 35.0, 20) == 4
    lr = warmup_cosine(1e-2, 100, 10)
    assert lr.end_at(50) and float(lr(50)) == pytest.approx(0, abs=1e-9)
    assert float(lr(30)) == pytest.approx(5e-3, rel=1e-3)  # halfway from step 10 to 50
    assert not lr.end_at(80) and float(lr(50)) == pytest.approx(0, abs=1e-9)  # never later
    assert float(lr(5)) == pytest.approx(5e-3)  # the warm-up is untouched
    assert lr.get_config() == {"peak": 1e-2, "total": 50, "warm": 10}


# -- the report ------------------------------------------------------------------


def _curve(val, stage="train"):
    n = len(val)
    return StageCurve(stage, (1.0,) * n, (0.5,) * n, (1.0,) * n, tuple(val), int(np.argmax(val)) + 1,
                      "max_epochs", True, False)


def test_warning_when_validation_top1_was_still_rising_at_the_end():
    record = BuildRecord(counts={}, prune=None, stages=(), versions={}, curves=(_curve([0.5, 0.6, 0.7]),))
    assert "validation top-1 was still rising in its last epoch (3); it is probably under-trained" in \
        under_trained_warning(record)
    budget = dataclasses.replace(_curve([0.5, 0.6, 0.7]), stopped="time_budget")
    assert "(3), where `train.time_budget_s` stopped training" in under_trained_warning(
        dataclasses.replace(record, curves=(budget,)))
    record = dataclasses.replace(record, curves=(_curve([0.5, 0.8, 0.7]), _curve([0.1, 0.2], "prune")))
    assert under_trained_warning(record) is None
    # A fixed schedule: the plateau of its decaying learning rate is not under-training;
    # a last epoch that still gains half a point or more is.
    plateau = dataclasses.replace(_curve([0.5, 0.962, 0.964]), stopped="fixed")
    assert under_trained_warning(dataclasses.replace(record, curves=(plateau,))) is None
    rising = dataclasses.replace(_curve([0.5, 0.892, 0.9]), stopped="fixed")
    assert "still rising in its last epoch (3)" in under_trained_warning(dataclasses.replace(record, curves=(rising,)))
    # Early stopping cut short by max_epochs on its best epoch: any gain counts.
    assert "still rising" in under_trained_warning(dataclasses.replace(record, curves=(_curve([0.5, 0.962, 0.964]),)))


@pytest.mark.parametrize("history, fixed, expected", [
    ([0.9], False, False),                    # one epoch tells nothing
    ([0.5, 0.9, 0.9], False, False),          # a tie is not a rise
    ([0.5, 0.9, 0.904], True, False),         # 0.4 points: the plateau
    ([0.5, 0.9, 0.905], True, True),          # 0.5 points: still learning
    ([0.5, 0.9, 0.901], False, True),         # cut short by max_epochs or the time budget
    ([0.5, 0.95, 0.9], True, False),          # the best was earlier
])
def test_still_learning(history, fixed, expected):
    assert still_learning(history, fixed) is expected


def test_most_confused_pairs():
    cm = np.array([[8, 2, 0], [0, 10, 0], [5, 1, 4]])
    pairs = most_confused(Confusion(cm, 73.3), ["a", "b", "c"], top=2)
    assert pairs == [("c", "a", 5, 0.5), ("a", "b", 2, 0.2)]


# -- training --------------------------------------------------------------------


@pytest.mark.integration
def test_early_stopping_restores_the_best_epoch():
    """The weights after fit are those of the best validation epoch, not the last (trained
    here with label smoothing and balanced class weights, the recipe's other loss options)."""
    import tf_keras as keras

    from pipeline.data import load_dataset
    from pipeline.train.fit import class_weights, compile_model, fit, setup_tensorflow
    from models import genotype

    recipe = Recipe.from_dict({"data": {"dataset": "digits", "train_samples": 400, "val_samples": 100}})
    splits = load_dataset(recipe.data, (32, 32, 1), 0)
    setup_tensorflow(0)
    model = genotype.build(TINY_GENOTYPE, (32, 32, 1), 10)
    compile_model(model, 3e-3, 6 * 25, label_smoothing=0.1)
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    snapshots = []

    class BreakAfterThree(keras.callbacks.Callback):
        """From the fourth epoch on, zero every weight: the model can only get worse."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch >= 3:
                self.model.set_weights([np.zeros_like(w) for w in self.model.get_weights()])

        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(self.model.get_weights())

    run = fit(model, splits, plan=Plan(6, auto=True, patience=2, min_epochs=1), batch_size=16, label="t",
              one_hot=True, class_weight=class_weights(splits.y_train, 10), callbacks=[BreakAfterThree()],
              log=quiet)
    val = run["history"]["val_accuracy"]
    assert run["best_epoch"] == int(np.argmax(val)) + 1 <= 3 < run["epochs"]
    assert max(val[:3]) > max(val[3:])  # it learnt something before the break
    assert run["restored"] and run["stopped"] in ("patience", "max_epochs")
    for now, best in zip(model.get_weights(), snapshots[run["best_epoch"] - 1]):
        assert np.array_equal(now, best)
    _, acc = model.evaluate(np.asarray(splits.x_val), keras.utils.to_categorical(splits.y_val, 10), verbose=0)
    assert acc == pytest.approx(val[run["best_epoch"] - 1], abs=1e-6)


@pytest.mark.integration
def test_a_time_budget_ends_training_on_a_low_learning_rate(monkeypatch):
    """Each epoch takes 10 s of a fake clock (the first 20 s: tracing); with a 45 s
    budget three of ten run, and the learning rate reaches 0 at the end of the
    third, not of the tenth."""
    import tf_keras as keras

    from pipeline.data import load_dataset
    from pipeline.train import callbacks as callbacks_module
    from pipeline.train.fit import compile_model, fit, setup_tensorflow, steps_per_epoch
    from models import genotype

    recipe = Recipe.from_dict({"data": {"dataset": "digits", "train_samples": 64, "val_samples": 32}})
    splits = load_dataset(recipe.data, (32, 32, 1), 0)
    setup_tensorflow(0)
    model = genotype.build(TINY_GENOTYPE, (32, 32, 1), 10)
    per_epoch = steps_per_epoch(splits, 16)
    schedule = compile_model(model, 1e-2, 10 * per_epoch)
    clock = [0.0]
    monkeypatch.setattr(callbacks_module.time, "perf_counter", lambda: clock[0])

    class Tick(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clock[0] += 20.0 if epoch == 0 else 10.0

    run = fit(model, splits, plan=Plan(10, time_budget_s=45.0), batch_size=16, label="t", callbacks=[Tick()],
              lr_schedule=schedule, log=quiet)
    assert run["epochs"] == 3 and run["stopped"] == "time_budget" and run["lr_end_epoch"] == 3
    assert float(schedule(3 * per_epoch)) == pytest.approx(0, abs=1e-9)
    assert float(model.optimizer.learning_rate) < 1e-2 * 0.05  # the last step's rate: near the end
    assert run["history"]["lr"][2] < 0.5 * 1e-2  # unbudgeted, epoch 3 would start at ~0.9 of the peak
    # A budget that leaves room for more epochs than the cosine spans: none runs past its end.
    model = genotype.build(TINY_GENOTYPE, (32, 32, 1), 10)
    schedule = compile_model(model, 1e-2, 4 * per_epoch)
    clock[0] = 0.0
    run = fit(model, splits, plan=Plan(4, time_budget_s=1e6), batch_size=16, label="t", callbacks=[Tick()],
              lr_schedule=schedule, log=quiet)
    assert run["epochs"] == 4 and run["stopped"] == "fixed" and run["lr_end_epoch"] == 4


@pytest.mark.integration
def test_auto_on_a_tiny_set_stops_early_caches_and_reports_its_curves(tmp_path):
    """A real build with ``epochs: auto``: it stops on patience well before max_epochs,
    the manifest records the epochs it chose, a rerun trains nothing, the report shows the curves."""
    from pipeline.build import build

    recipe = Recipe.from_dict({
        "name": "tiny-auto",
        "data": {"dataset": "shapes", "train_samples": 256, "val_samples": 64, "test_samples": 64},
        "model": {"family": "mbconv", "alpha": 1.0, "input_size": 32, "genotype": TINY_GENOTYPE},
        "train": {"epochs": "auto", "max_epochs": 40, "min_epochs": 2, "patience": 2, "batch_size": 32},
        "prune": {"enabled": False}, "convert": {"variants": ["float32"]}, "deploy_variant": "float32"})
    first = build(recipe, out=tmp_path, log=quiet, run_devices=False)
    assert "train" in first.stages_run
    train = json.loads((tmp_path / "manifest.json").read_text())["stages"]["train"]
    m = train["metrics"]
    assert m["plan"]["epochs"] == "auto" and m["stopped"] == "patience"
    assert m["epochs"] < 40 and m["epochs"] == len(m["history"]["val_accuracy"])
    assert m["epochs"] - m["best_epoch"] >= 2
    assert build(recipe, out=tmp_path, log=quiet, run_devices=False).stages_run == []
    md = (tmp_path / "report.md").read_text()
    assert "## Training" in md and "![learning curves](plots/learning_curves.png)" in md
    assert f"| train | {m['epochs']} | auto | {m['best_epoch']} | no improvement (patience) |" in md
    assert (tmp_path / "plots" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "### Images per class" in md


@pytest.mark.integration
def test_smoke_report_shows_a_curve_per_training_stage(smoke_build):
    md = (smoke_build.root / "report.md").read_text()
    for stage in ("train", "prune", "qat"):
        assert f"| {stage} | 1 | " in md
    assert "Most confused pairs (true -> predicted):" in md or "No test image was misclassified." in md
    assert (smoke_build.root / "plots" / "learning_curves.png").is_file()


@pytest.mark.integration
def test_a_build_on_real_handwritten_digits_beats_chance_by_a_wide_margin(tmp_path):
    """scikit-learn's digits (1,797 real 8x8 scans of handwritten digits, 10 classes):
    chance is 10%; a short real build (float, QAT, int8 conversion) must reach 80% on the
    held-out test split, float and int8 alike. The accuracy paths cannot pass on a model
    that did not learn."""
    from pipeline.build import build

    recipe = Recipe.from_dict({
        "name": "digits-check",
        "data": {"dataset": "digits", "train_samples": None, "val_samples": 200, "test_samples": 300},
        # The tiny block genotype (28 layers): 93% float, 94% int8-qat here, in 44 s where
        # MobileNetV1-0.25 took 111 s for 92% / 91%.
        "model": {"family": "mbconv", "alpha": 1.0, "input_size": 32, "genotype": TINY_GENOTYPE},
        "train": {"epochs": 10, "batch_size": 32, "learning_rate": 0.003, "augment": {"enabled": False}},
        "prune": {"enabled": False}, "qat": {"enabled": True, "epochs": 1},
        "convert": {"variants": ["float32", "int8-qat"]}, "deploy_variant": "int8-qat"})
    res = build(recipe, out=tmp_path, log=quiet, run_devices=False)
    summary = res.summary
    print(f"digits: float {summary.float_top1:.1f}%, " + ", ".join(
        f"{name} {summary.variants[name].top1:.1f}%" for name in ("float32", "int8-qat")))
    assert summary.float_top1 >= 80.0, summary.float_top1
    for name in ("float32", "int8-qat"):
        assert summary.variants[name].top1 >= 80.0, (name, summary.variants[name].top1)


@pytest.mark.parametrize("n, replicas, expected", [
    (32, 1, 256),    # one replica: the usual batch
    (32, 2, 62),     # 256 would give replica 1 nothing (filled 128 at a time); 62: 31 and 1
    (300, 2, 199),   # 300 % 256 = 44 <= 128 would leave replica 1 empty; 300 % 199 = 101 > 99
    (512, 2, 256),   # divides
    (385, 2, 256),   # last batch 129 > 128: both replicas get images
    (3, 4, 256),     # fewer images than replicas: no batch can do it
    (4, 4, 4),       # one full batch, one image each
])
def test_evaluation_batches_leave_no_replica_empty(n, replicas, expected):
    """A MirroredStrategy fills replicas in turn, batch // replicas images each; an empty
    replica batch fails in oneDNN's depthwise convolution (seen on an AVX-512 CPU), so the
    validation batch is the largest whose last batch reaches every replica."""
    from pipeline.train.stream import eval_batch_size, fills_every_replica

    b = eval_batch_size(n, replicas)
    assert b == expected
    if n >= replicas:
        assert b >= replicas and fills_every_replica(n % b, b, replicas)
        assert all(not fills_every_replica(n % larger, larger, replicas) for larger in range(b + 1, 257))


def test_an_epoch_under_two_replicas_leaves_out_a_last_batch_one_replica_would_miss():
    from pipeline.train.stream import epoch_dataset

    x = np.zeros((70, 4, 4, 1), np.float32)
    y = np.arange(70) % 10
    sizes = lambda ds: [int(b[0].shape[0]) for b in ds]  # noqa: E731
    assert sizes(epoch_dataset(x, y, 32, 0, "t", 0)) == [32, 32, 6]
    assert sizes(epoch_dataset(x, y, 32, 0, "t", 0, replicas=2)) == [32, 32]   # 6 <= 16: left out
    x, y = x[:50], y[:50]
    assert sizes(epoch_dataset(x, y, 32, 0, "t", 0, replicas=2)) == [32, 18]   # 18 > 16: kept

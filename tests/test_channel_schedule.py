"""The channel-pruning schedule lands on its target and is repeatable; the thinned
model's fine-tune (``prune.epochs: auto``) is chosen on validation.

Tiny block genotype, MACs targets: the schedule's logic is the same as with a device
latency target, without an emulated run per architecture."""

import math
from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.compress.netadapt import GRANULARITY, ScheduleConfig, Target, bisect_width, run_schedule
from tests.helpers.stages import TINY_GENOTYPE, ArraySplits, make_recipe, quiet

# The head conv: 64 channels, each 8 of them about 2.4% of the model's MACs, so whole
# multiples of 8 can land within 3% of a budget.
HEAD = "head_conv"


def _splits():
    rng = np.random.default_rng(0)
    x = rng.random((96, 32, 32, 1), dtype=np.float32)
    y = (x[:, :16].mean(axis=(1, 2, 3)) > 0.5).astype(np.int64) + 2 * (x[:, :, :16].mean(axis=(1, 2, 3)) > .5)
    return ArraySplits(x[:64], y[:64], x[64:], y[64:])


def _tiny(seed=0):
    from models import genotype
    from pipeline.train.fit import setup_tensorflow

    setup_tensorflow(seed)
    return genotype.build(TINY_GENOTYPE, (32, 32, 1), 10, first_stride=1)


def _config(macs0, layers=(HEAD,), fraction=0.9, step=0.05):
    return ScheduleConfig(Target("macs", fraction * macs0), "l1_bn", step=step, seed=0, recover_batches=2,
                          batch_size=16, eval_images=32, layers=layers)


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    """The tiny genotype, its MACs, the config and one run of the schedule (model, result)."""
    from models.macs import count_macs

    m = _tiny()
    macs0 = count_macs(m)
    cfg = _config(macs0)
    thinned, res = run_schedule(m, _splits(), cfg, tmp_path_factory.mktemp("steps"), "src", quiet)
    return m, macs0, cfg, thinned, res


def test_bisection_finds_the_widest_width_that_meets_the_budget():
    """On a stand-in cost (10 per channel): the widest multiple of 8 under the budget,
    in at most log2(candidates + 1) probes; the proposal when none is wider."""
    probed = []

    def cost_of(width):
        probed.append(width)
        return 10.0 * width

    width, probes = bisect_width(128, 8, cost_of, 555.0)
    assert width == 48 and [p["channels"] for p in probes] == probed
    assert len(probes) <= math.ceil(math.log2(len(range(16, 128, GRANULARITY)) + 1))
    assert all(p["meets"] == (p["cost"] <= 555.0) for p in probes)
    assert bisect_width(128, 8, cost_of, 85.0) == (8, [{"channels": c, "cost": 10.0 * c, "meets": False}
                                                       for c in (64, 32, 16)])
    assert bisect_width(128, 8, cost_of, 1275.0)[0] == 120
    assert bisect_width(16, 8, cost_of, 100.0) == (8, [])  # no width between the two: no probe


def test_last_step_lands_within_3_percent_of_a_macs_target(scheduled):
    """Whole steps would overshoot the budget by more than 3%; the last step's width is
    bisected to the widest multiple of 8 that meets it, and lands within 3%."""
    from models.macs import count_macs
    from pipeline.compress.channels import thin_by_scores

    m, macs0, cfg, thinned, res = scheduled
    budget = cfg.target.budget
    last = res["steps"][-1]
    proposed = next(p for p in last["proposals"] if p["layer"] == last["layer"])
    assert proposed["cost"] < 0.97 * budget  # the whole step would have overshot
    assert last["channels_proposed"] == proposed["channels_after"] < last["channels_after"] < last["channels_before"]
    assert last["probes"] and last["channels_after"] in [p["channels"] for p in last["probes"] if p["meets"]]
    assert len(last["probes"]) <= math.ceil(math.log2((last["channels_before"] - proposed["channels_after"])
                                                      // GRANULARITY))
    assert 0.97 * budget <= last["cost"] <= budget
    assert count_macs(thinned) == last["cost"] == res["end"]["cost"]
    assert thinned.get_layer(HEAD).filters == last["channels_after"]
    # 8 channels more would have missed the budget: the thinnest cut that meets it.
    wider = thin_by_scores(m, {HEAD: last["channels_after"] + GRANULARITY}, "l1_bn")
    assert count_macs(wider) > budget
    # Steps that did not reach the budget are not bisected.
    assert all(not s["probes"] and s["channels_after"] == s["channels_proposed"] for s in res["steps"][:-1])


def test_same_seed_gives_the_same_widths_and_steps(scheduled, tmp_path):
    """A second run in a fresh folder (after other work moved every generator) thins to the
    same widths through identical step records."""
    from pipeline.compress.channels import widths

    m, macs0, cfg, thinned, res = scheduled
    np.random.default_rng().random()  # other work in between
    np.random.random(7)
    again, res2 = run_schedule(m, _splits(), cfg, tmp_path, "src", quiet)
    assert res2["steps_run"] == len(res["steps"]) >= 2
    assert widths(again) == widths(thinned)
    assert res2["steps"] == res["steps"] and res2["end"] == res["end"]


def test_prune_epochs_auto_is_the_channels_fine_tunes_own(tmp_path):
    """``prune.epochs: auto``: the channels row keys and runs an early-stopping plan, while
    magnitude pruning on top still gets the length that follows the float epochs; an
    unknown value is one error naming what is allowed."""
    import dataclasses

    from pipeline.build.stages import compress_stages
    from pipeline.errors import ConfigError
    from pipeline.recipe.schema import Recipe
    from pipeline.train.schedule import RECOVERY_MAX_EPOCHS, RECOVERY_PATIENCE, recovery_plan

    r = dataclasses.replace
    base = make_recipe("mbconv")
    recipe = r(base, prune=r(base.prune, structure="channels+unstructured", target_macs=0.8, epochs="auto"))
    keys = {}
    compress_stages(recipe.validate(), None, lambda name, config, i, o, fn: keys.setdefault(name, config) and {},
                    tmp_path / "float.h5", tmp_path, quiet, float_epochs=30)
    assert keys["channels"]["recovery"] == {"epochs": "auto", "max_epochs": RECOVERY_MAX_EPOCHS,
                                            "patience": RECOVERY_PATIENCE, "min_epochs": 1, "time_budget_s": None,
                                            "warmup_epochs": 0}
    assert keys["channels"]["prune"]["epochs"] == "auto" and keys["prune"]["prune"]["epochs"] == 10
    assert recovery_plan(3).to_dict()["epochs"] == 3 and not recovery_plan(3).auto
    with pytest.raises(ConfigError, match=r"recipe.prune.epochs: expected a positive integer or 'auto', "
                                          r"got 'forever'"):
        Recipe.from_dict({"name": "x", "prune": {"enabled": True, "structure": "channels", "target_macs": 0.5,
                                                 "epochs": "forever"}})


def test_auto_fine_tune_stops_on_patience_and_restores_the_best(tmp_path):
    """``prune.epochs: auto`` on the thinned model: once validation top-1 falls (here the
    classifier is switched to a wrong class after the first epoch), training stops after
    the patience, and the saved model has the best epoch's weights and top-1."""
    import tf_keras as keras

    from pipeline.compress.runner import fine_tune
    from pipeline.compress.structured import ThinnedFineTune, architecture
    from pipeline.train.keras_io import load_keras, save_keras
    from pipeline.train.schedule import recovery_plan

    def predict_class(model, c):
        logits = model.get_layer("logits")
        k, b = logits.get_weights()
        logits.set_weights([np.zeros_like(k), np.where(np.arange(len(b)) == c, 10.0, 0.0)])

    m = _tiny()
    predict_class(m, 0)  # every image is class 0, and the model starts out right on all
    src = tmp_path / "src.h5"
    save_keras(m, src)
    x = np.random.default_rng(1).random((96, 32, 32, 1), dtype=np.float32)
    y = np.zeros(96, np.int64)
    splits = ArraySplits(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:])

    class WrongFromEpoch2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                predict_class(self.model, 1)

    @dataclass(frozen=True)
    class Worsening(ThinnedFineTune):
        def callbacks(self):
            return (WrongFromEpoch2(),)

    plan = recovery_plan("auto")
    technique = Worsening(epochs=plan.epochs, learning_rate=1e-6, before=architecture(m), auto=True,
                          patience=plan.patience)
    metrics = fine_tune(make_recipe("mbconv"), splits, src, tmp_path / "out.h5", technique, quiet)
    val = metrics["history"]["val_accuracy"]
    assert metrics["epochs"] == len(val) == 1 + plan.patience < plan.epochs
    assert metrics["stopped"] == "patience" and metrics["restored"] and metrics["best_epoch"] == 1
    assert val == [1.0] + [0.0] * plan.patience
    assert metrics["val_top1"] == metrics["test_top1"] == 100.0
    assert np.argmax(load_keras(tmp_path / "out.h5").get_layer("logits").get_weights()[1]) == 0


def test_report_names_the_bisected_step(tmp_path):
    """The report's step table shows a bisected step's width with the proposal's, and says why."""
    import json

    from pipeline.publish.report import write_report
    from tests.helpers.fake_builds import fake_build

    recipe, summary = fake_build(tmp_path)
    step = {"layer": HEAD, "macs": 0, "proposals": [], "score": 0.1, "loss_oneshot": 0.5, "top1_oneshot": 80.0,
            "loss": 0.4, "top1": 85.0}
    steps = [dict(step, step=1, channels_before=64, channels_after=40, channels_proposed=40, cost_before=1000,
                  cost=900, probes=[]),
             dict(step, step=2, channels_before=40, channels_after=24, channels_proposed=16, cost_before=900,
                  cost=880, probes=[{"channels": 24, "cost": 880, "meets": True}])]
    metrics = {"target": {"kind": "macs", "budget": 890, "device": None, "threads": 1}, "criterion": "l1_bn",
               "schedule_s": 3.0, "float_macs": 1000, "macs": 880, "layers": [], "steps": steps,
               "start": {"cost": 1000, "macs": 1000, "loss": .4, "top1": 86.0}, "end": dict(steps[-1])}
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"channels": {"wall_s": 4.0, "metrics": metrics}}}))
    write_report(recipe, tmp_path, summary, quiet)
    section = (tmp_path / "report.md").read_text().split("## Channel pruning")[1].split("\n## ")[0]
    assert f"| 1 | {HEAD} | 64 -> 40 |" in section
    assert f"| 2 | {HEAD} | 40 -> 24 (proposed 16) |" in section
    assert "its width was bisected (multiples of 8 channels) to the widest that meets the budget" in section

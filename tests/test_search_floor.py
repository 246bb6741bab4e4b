"""The block space's floor (pipeline.search.floor) and the constrained sampler, with a stand-in price.

The emulated costs are replaced by a multiply-accumulate count (what a part computes,
in millions, as milliseconds), summed by the real per-block table
(:func:`pipeline.search.blocktable.predict`) with a per-model overhead that falls
with the number of parts, as the calibrated one does. So the floor, the stop before
training and the sampler's response to rejections are checked in seconds.
"""

import itertools
import json
import random

import optuna
import pytest
import yaml
from click.testing import CliRunner

from pipeline.search import blockspace as bsp
from pipeline.search import blockstudy as bs
from pipeline.search import blocktable
from pipeline.search import floor as fl
from pipeline.search import space as ss
from pipeline.search import study as se

RECIPE = {
    "name": "blocks",
    "data": {"dataset": "shapes", "train_samples": 256, "val_samples": 64, "test_samples": 128},
    "model": {"family": "mobilenet_v2", "alpha": 0.35, "input_size": 32, "channels": 1, "first_stride": 1},
    "convert": {"variants": ["float32", "int8-qat"]},
    "devices": {"targets": ["camera-a53"]},
    "search": {"space": "blocks", "families": ["mobilenet_v2"], "alphas": [0.35], "input_sizes": [48, 32],
               "trials": 4, "proxy_epochs": 1, "rungs": 1, "reduction": 3, "finalists": 1},
}
#: The stand-in per-model overhead: fixed, and per part (negative: one invocation, not one per part).
OVERHEAD = {"fixed": {k: 0.05 for k in blocktable.FIGURES}, "per_part": {k: -0.01 for k in blocktable.FIGURES}}


def _macs(part) -> float:
    """Multiply-accumulates of one part (the stand-in of its emulated cost)."""
    s, (h, w, c) = dict(part.spec), part.input_shape
    if part.kind == "stem":
        oh = -(-h // s["stride"])
        return oh * oh * 9 * c * s["filters"]
    if part.kind == "block":
        oh, e = -(-h // s["stride"]), s["expanded"]
        act = 2 if s["act"] == "hswish" else 1  # hard-swish is an op of its own, ReLU is fused
        return ((h * w * c * e * act if e != c else 0) + oh * oh * (s["kernel"] ** 2 + act) * e
                + 2 * e * s["se"] + oh * oh * e * s["filters"])
    return h * w * c * s["filters"] + s["filters"] * s["fc"] + (s["fc"] or s["filters"]) * s["classes"]


def _part_cost(part, device, log=None):
    ms = 0.02 + _macs(part) / 1e6
    return {"instructions": ms * 1e6, "latency_cycles": ms * 1e6, "latency_ms": ms, "cached": True}


@pytest.fixture
def stand_in_table(monkeypatch):
    """The real table's sums over stand-in part costs; no calibration emulated."""
    monkeypatch.setattr(blocktable, "part_cost", _part_cost)
    monkeypatch.setattr(blocktable, "calibrate", lambda *a, **k: OVERHEAD)
    monkeypatch.setattr(blocktable, "missing_parts", lambda *a, **k: 0)


def _price(genotype, size=32) -> float:
    return blocktable.predict(genotype, blocktable.Geometry(size), "camera-a53", OVERHEAD)["latency_ms"]


def _recipe(tmp_path, **search):
    from pipeline.recipe.load import load_recipe

    p = tmp_path / "blocks.yaml"
    p.write_text(yaml.safe_dump({**RECIPE, "search": {**RECIPE["search"], **search}}))
    return load_recipe(p)


def test_least_work_is_the_cheapest_of_a_small_space_by_brute_force(stand_in_table):
    stages, hswish, frame = bsp.least_work()
    floor = bsp.genotype_of(stages, hswish, frame)
    assert floor.stem == 4 and floor.head_fc == 0 and len(floor.stages) == len(bsp.SKELETON) - 1
    # Per stage: the least choice, a wider, a deeper and a bigger-kernel one with
    # expansion and SE; hard-swish from stage 3 or nowhere; the frame's options each way: 3**5 x 16.
    options = [lambda c: c, lambda c: bsp.StageChoice(c.kernel, c.expand, c.depth, 1.0, c.se),
               lambda c: bsp.StageChoice(5, 6, 2, c.width_mult, True)]
    frames = [bsp.Frame(s, h, f) for s in (4, 16) for h in (288, 576) for f in (0, 1024)]
    best = min(((_price(bsp.genotype_of([o(c) for o, c in zip(opts, stages)], hs, fr)), i)
                for i, (opts, hs, fr) in enumerate(itertools.product(
                    itertools.product(options, repeat=len(stages)), (hswish, 2), frames))))
    assert best[1] == 0 and best[0] == pytest.approx(_price(floor))


def test_no_sampled_genotype_is_cheaper_than_the_floor(stand_in_table):
    g, size, params = fl.least_work_point([48, 32])
    assert size == 32 and params["input_size"] == 32 and params["s3_depth"] == bsp.DROP_DEPTH
    floor = _price(g)
    rng = random.Random(0)
    prices = [_price(bsp.sample(rng, bsp.SPACE)) for _ in range(300)]
    assert min(prices) > floor
    assert _price(g, 48) > floor  # the smallest input size is the floor's


def test_a_budget_under_the_floor_stops_before_training(tmp_path, monkeypatch, stand_in_table):
    """The one line with the figure, exit code 1, one emulation, no proposal, no training;
    --json prints the outcome with the floor and the reason."""
    def never(*a, **k):
        raise AssertionError("nothing is emulated whole or trained under the floor")

    emulated = []

    def floor_cost(recipe, genotype, input_size, device, variant, classes, log):
        emulated.append(variant)
        return {"loaded": True, "latency_ms": _price(genotype, input_size), "memory_mb": 1.0, "size_kb": 10.0}

    monkeypatch.setattr(fl, "genotype_cost", floor_cost)
    monkeypatch.setattr(bs, "genotype_cost", never)
    monkeypatch.setattr(bs, "proxy_accuracy", never)
    monkeypatch.setattr(se, "proxy_accuracy", never)
    from pipeline.cli import main

    g, _, _ = fl.least_work_point([32])
    floor = _price(g)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    res = CliRunner(mix_stderr=False).invoke(main, [
        "search", str(recipe), "--device", "camera-a53", "--latency-ms", f"{floor / 2:.4f}", "--json",
        "--out", str(tmp_path / "s")])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    line = (f"the fastest genotype of this space is {floor:.3f} ms on camera-a53 (latency budget "
            f"{floor / 2:.4f} ms)")
    assert out["reason"].startswith(line) and out["chosen"] is None and out["rows"] == []
    assert out["floor"]["latency_ms"] == pytest.approx(floor) and emulated == ["int8-ptq"]  # one emulation
    assert out["floor"]["priced_by"] == "emulation of its int8-ptq graph (a lower bound of the QAT graph's)"
    assert res.stderr.strip().splitlines() == [f"error: {out['reason']}"]
    assert not (tmp_path / "s" / "study.db").exists()  # no proposal was made


def test_a_budget_near_the_floor_starts_at_the_floor(tmp_path, stand_in_table):
    recipe = _recipe(tmp_path)
    logs = []
    g, _, _ = fl.least_work_point([32])
    floor = fl.Floor(f"{g.key()}-32", g.text(), 32, _price(g), "emulation of its int8-ptq graph")
    budget = ss.Budget(1.5 * floor.latency_ms)
    assert fl.below_floor(floor, budget, "camera-a53", "int8-qat", tmp_path) is None
    study = optuna.create_study(direction="maximize", sampler=se.make_sampler(recipe))
    assert fl.warm_start(study, floor, budget, [32], logs.append)
    proposed, size = bs.suggest(study.ask(), [32])
    assert proposed == g and size == 32
    # A generous budget, or a study that already has trials: no warm start.
    assert not fl.warm_start(study, floor, budget, [32], logs.append)
    # A floor the device does not load neither stops the search nor starts it.
    unloaded = fl.Floor(floor.candidate, floor.text, 32, float("inf"), "emulation (the device does not load it)")
    assert fl.below_floor(unloaded, budget, "camera-a53", "int8-qat", tmp_path) is None
    generous = ss.Budget(3 * floor.latency_ms)
    empty = optuna.create_study(direction="maximize", sampler=se.make_sampler(recipe))
    assert not fl.warm_start(empty, floor, generous, [32], logs.append) and not empty.trials
    assert not fl.warm_start(empty, unloaded, budget, [32], logs.append) and not empty.trials


def test_rejected_proposals_move_the_sampler_toward_cheaper_genotypes(tmp_path, monkeypatch, stand_in_table):
    """With a budget only ~1% of uniform proposals meet, every rejection is stored with how
    far over budget it was (Trial.set_constraint), which TPE ranks by: after the
    random start-up, proposals are much cheaper and some fit."""
    def fake_cost(recipe, genotype, input_size, device, variant, classes, log):
        return {"loaded": True, "latency_ms": _price(genotype), "memory_mb": 1.0, "size_kb": 10.0, "cached": True}

    monkeypatch.setattr(bs, "genotype_cost", fake_cost)
    monkeypatch.setattr(bs, "proxy_accuracy", lambda recipe, arch, root, log, epochs=None: {"proxy_val_top1": 50.0})
    recipe = _recipe(tmp_path, input_sizes=[32], trials=100)
    rng = random.Random(1)
    uniform = sorted(_price(bsp.sample(rng, bsp.SPACE)) for _ in range(400))
    budget = ss.Budget(uniform[4])
    logs = []
    # The search's sampler on an in-memory study (SQLite commits would take most of the time).
    study = optuna.create_study(direction="maximize", sampler=se.make_sampler(recipe))
    screen = bs.TableScreen(recipe, "camera-a53", "int8-qat", 10, budget, logs.append)
    phase = bs.BlockPhase(study, recipe, "camera-a53", "int8-qat", budget, 10, tmp_path, logs.append,
                          screen=screen)
    prices = []
    for _ in range(40):
        trial = study.ask()
        phase.propose(trial)
        prices.append(_price(bsp.genotype_of(*_choices(study.trials[trial.number].params))))
    start, later = prices[:se.TPE_STARTUP], prices[20:]
    assert sum(later) / len(later) < 0.8 * sum(start) / len(start)
    assert sum(p <= budget.latency_ms for p in later) > sum(p <= budget.latency_ms for p in start)


def _choices(params):
    stages = [bsp.StageChoice(params[f"s{i}_kernel"], params[f"s{i}_expand"], params[f"s{i}_depth"],
                              params[f"s{i}_width"], params[f"s{i}_se"]) for i in range(len(bsp.SKELETON))]
    return stages, params["hswish_from"], bsp.Frame(params["stem"], params["head"], params["head_fc"])


def test_the_floor_is_at_the_smallest_input_size_and_cheaper_there(stand_in_table):
    g, size, params = fl.least_work_point([32, 28, 24])
    assert size == params["input_size"] == 24
    assert _price(g, 24) < _price(g, 28) < _price(g, 32)


#: The floor of the space at 32x32x1, stem stride 1, 10 classes on camera-a53, emulated
#: (docs/search.md, "The floor"; the search-blocks preset's comment).
FLOOR_AT_32_MS = 1.325


@pytest.mark.device
def test_the_emulated_floor_at_the_smallest_input_is_cheaper_than_at_32(tmp_path):
    from models import MIN_INPUT_SIZE

    recipe = _recipe(tmp_path, input_sizes=[32, MIN_INPUT_SIZE])
    floor = fl.space_floor(recipe, "camera-a53", "int8-qat", 10, lambda m: None)  # one emulation (cached)
    assert floor.input_size == MIN_INPUT_SIZE and floor.candidate.endswith(f"-{MIN_INPUT_SIZE}")
    assert floor.latency_ms < FLOOR_AT_32_MS

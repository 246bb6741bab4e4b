"""Tests of the device-aware model search.

Unit tests (Pareto front, budgets, study keys, recipes, CLI errors) need neither
TensorFlow training nor qemu. The integration test runs a real search on a tiny
space (MobileNetV1 at two widths, 32x32x1, 128 training images) on pixel4: emulated
cost runs, proxy training, one finalist built with devices, then a resumed run.
"""

import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.search import cost as sc
from pipeline.search import pareto as sp
from pipeline.search import recipes as sr
from pipeline.search import space as ss
from pipeline.search import study as se
from pipeline.recipe.load import load_recipe
from pipeline.errors import BudgetExceededError, ConfigError

TINY = {
    "name": "tiny",
    "data": {"dataset": "shapes", "train_samples": 128, "val_samples": 32, "test_samples": 32},
    "model": {"family": "mobilenet_v2", "alpha": 0.35, "input_size": 32, "channels": 1, "first_stride": 1},
    "train": {"epochs": 1, "batch_size": 32},
    "qat": {"enabled": True, "epochs": 1},
    "convert": {"variants": ["float32", "int8-qat"], "calibration_samples": 16, "validation_samples": 8},
    "devices": {"samples": 4},
    "search": {"families": ["mobilenet_v2"], "alphas": [0.35, 0.75], "input_sizes": [32], "trials": 2,
               "proxy_epochs": 1, "finalists": 1},
}


#: The real search's space: MobileNetV1 (about half the layers of V2, so half the graph
#: building); what that test checks belongs to no family. Its builds convert only the
#: searched variant, int8-qat: every figure the test checks is that variant's (the proxy
#: builds float32 whatever the recipe says), and a float32 file beside it would add a
#: conversion and an emulated device run to the finalist.
TINY_V1 = {**TINY, "model": {**TINY["model"], "family": "mobilenet_v1", "alpha": 0.25},
           "convert": {**TINY["convert"], "variants": ["int8-qat"]},
           "search": {**TINY["search"], "families": ["mobilenet_v1"], "alphas": [0.25, 0.75]}}


def _write(tmp_path, data=TINY, name="tiny.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture
def tiny(tmp_path):
    return load_recipe(_write(tmp_path))


# -- Pareto ----------------------------------------------------------------------------

@pytest.mark.parametrize("points, front", [
    ([], []),
    ([(1.0, 90.0)], [0]),
    # (latency, accuracy): 4 is fastest; 0 beats 2 (faster and more accurate); 1 and 3 tie
    # on accuracy, 1 is faster; so 2 and 3 are dominated.
    ([(1.0, 90.0), (2.0, 95.0), (1.5, 89.0), (3.0, 95.0), (0.5, 80.0)], [4, 0, 1]),
    # Same latency: only the more accurate one.
    ([(1.0, 80.0), (1.0, 85.0)], [1]),
    # Exact duplicates: the first only.
    ([(1.0, 80.0), (1.0, 80.0)], [0]),
    # Slower but more accurate at every step: all on the front, in latency order.
    ([(3.0, 93.0), (1.0, 91.0), (2.0, 92.0)], [1, 2, 0]),
])
def test_pareto_front(points, front):
    assert sp.pareto_front(points) == front


def test_pareto_front_no_member_is_dominated():
    import random

    rng = random.Random(0)
    pts = [(rng.uniform(0.1, 5), rng.uniform(50, 99)) for _ in range(200)]
    front = sp.pareto_front(pts)
    for i in front:
        assert not any(p[0] <= pts[i][0] and p[1] >= pts[i][1] and p != pts[i] for p in pts)
    rest = set(range(len(pts))) - set(front)
    for j in rest:  # every point off the front is dominated by (or equal to) one on it
        assert any(pts[i][0] <= pts[j][0] and pts[i][1] >= pts[j][1] for i in front)


# -- budgets, keys, recipes ---------------------------------------------------------------

def _cost(latency=1.0, memory=1.0, size=100.0, loaded=True):
    return {"loaded": loaded, "latency_ms": latency, "memory_mb": memory, "size_kb": size,
            "load_error_op": None if loaded else "HARD_SWISH", "load_error": None}


def test_budget_misses_names_each_missed_limit():
    b = ss.Budget(2.0, memory_mb=1.5, size_kb=200)
    assert b.misses(_cost()) == []
    assert b.misses(_cost(latency=2.5)) == ["latency 2.500 ms > 2 ms"]
    assert b.misses(_cost(latency=3, memory=2, size=300)) == [
        "latency 3.000 ms > 2 ms", "memory 2.000 MiB > 1.5 MiB", "size 300.0 KiB > 200 KiB"]
    assert b.misses(_cost(loaded=False)) == ["does not load on the device (HARD_SWISH)"]
    # No memory/size limit: only latency counts.
    assert ss.Budget(2.0).misses(_cost(memory=1e6, size=1e9)) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(latency_ms=0), "latency budget (ms) must be a positive number, got 0"),
    (dict(latency_ms=1, memory_mb=-1), "memory budget (MiB) must be a positive number, got -1"),
    (dict(latency_ms=1, size_kb=math.nan), "size budget (KiB) must be a positive number, got nan"),
])
def test_budget_validation(kwargs, message):
    with pytest.raises(ConfigError) as e:
        ss.Budget(**kwargs)
    assert message in str(e.value)
    assert "--" not in str(e.value)  # the library speaks of budgets, not of flags


def test_budget_text():
    assert ss.Budget(2.0, memory_mb=1.5, size_kb=200).text() == "2 ms, 1.5 MiB, 200 KiB"
    assert ss.Budget(0.5).text() == "0.5 ms"


def test_space_is_every_combination(tiny):
    names = [c.name for c in ss.space(load_recipe("search-default"))]
    assert len(names) == len(set(names)) == 3 * 4 * 2
    assert [c.name for c in ss.space(tiny)] == ["mobilenet_v2-0.35-32", "mobilenet_v2-0.75-32"]


def test_study_key_tracks_budget_and_space_not_trials(tiny):
    import dataclasses as dc

    k = se.study_key(tiny, "pixel4", "int8-qat", ss.Budget(1.0))
    assert k == se.study_key(tiny, "pixel4", "int8-qat", ss.Budget(1.0))
    more = dc.replace(tiny, search=dc.replace(tiny.search, trials=9, finalists=2))
    assert se.study_key(more, "pixel4", "int8-qat", ss.Budget(1.0)) == k
    assert se.study_key(tiny, "pixel4", "int8-qat", ss.Budget(2.0)) != k
    assert se.study_key(tiny, "pixel4", "int8-qat", ss.Budget(1.0, size_kb=500)) != k
    assert se.study_key(tiny, "rpi4", "int8-qat", ss.Budget(1.0)) != k
    wider = dc.replace(tiny, search=dc.replace(tiny.search, alphas=(0.35, 0.5, 0.75)))
    assert se.study_key(wider, "pixel4", "int8-qat", ss.Budget(1.0)) != k


def test_chosen_recipe_round_trips_through_yaml(tiny, tmp_path):
    cand = ss.Candidate("mobilenet_v3_small", 0.75, 48)
    r = sr.chosen_recipe(tiny, cand, "camera-a53", "int8-qat", ss.Budget(4.0, 1.0, 300))
    p = tmp_path / "chosen.yaml"
    p.write_text(sr.recipe_yaml(r, "mobile-model build chosen.yaml\nsecond line"))
    assert p.read_text().startswith("# mobile-model build chosen.yaml\n# second line\n")
    back = load_recipe(p)
    assert back == r
    assert (back.model.family, back.model.alpha, back.model.input_size) == ("mobilenet_v3_small", 0.75, 48)
    assert (back.model.channels, back.model.first_stride) == (1, 1)  # kept from the recipe
    assert back.devices.targets == ("camera-a53",) and back.deploy_variant == "int8-qat"
    assert back.budgets["max_latency_ms"] == {"camera-a53": 4.0}
    assert back.budgets["max_memory_mb"] == {"camera-a53": 1.0}
    assert back.budgets["max_size_kb"] == {"int8-qat": 300}


def test_chosen_recipe_rejects_a_variant_the_recipe_does_not_build(tiny):
    with pytest.raises(ConfigError, match="'int8-ptq' is not a variant recipe tiny builds; valid: float32, int8-qat"):
        sr.chosen_recipe(tiny, ss.Candidate("mobilenet_v2", 0.35, 32), "pixel4", "int8-ptq", ss.Budget(1))


def test_library_variant_errors_speak_of_the_domain(tiny, tmp_path):
    with pytest.raises(ConfigError) as e:
        se.search(tiny, "pixel4", ss.Budget(1.0), variant="int8-ptq", out=tmp_path / "s")
    assert str(e.value) == "variant 'int8-ptq' is not a variant recipe tiny builds; valid: float32, int8-qat"
    with pytest.raises(ConfigError) as e:
        sc.candidate_cost(tiny, ss.Candidate("mobilenet_v2", 0.35, 32), "pixel4", "float16", 10)
    assert str(e.value) == "search variant 'float16' is unknown; valid: int8-qat, int8-ptq, float32"


def test_search_command_repeats_the_budgets(tiny):
    assert se.search_command(tiny, "pixel4", ss.Budget(2.0, 1.5, 300), "int8-qat") == (
        "mobile-model search tiny --device pixel4 --latency-ms 2 --memory-mb 1.5 --size-kb 300 "
        "--variant int8-qat")
    assert se.search_command(tiny, "rpi4", ss.Budget(0.5), "float32") == (
        "mobile-model search tiny --device rpi4 --latency-ms 0.5 --variant float32")


def test_proxy_recipe_is_short_float_only():
    import dataclasses as dc

    r = load_recipe("search-default")
    p = sr.proxy_recipe(r, ss.Candidate("mobilenet_v1", 0.5, 48))
    assert (p.model.family, p.model.alpha, p.model.input_size) == ("mobilenet_v1", 0.5, 48)
    assert p.train.epochs == r.search.proxy_epochs == 2
    assert r.search.proxy_train_samples == 0 and p.data.train_samples == r.data.train_samples
    fewer = dc.replace(r, search=dc.replace(r.search, proxy_train_samples=500))
    assert sr.proxy_recipe(fewer, ss.Candidate("mobilenet_v1", 0.5, 48)).data.train_samples == 500
    assert p.data.val_samples == r.data.val_samples  # the proxy ranks on the full validation split
    assert not p.prune.enabled and not p.qat.enabled and not p.cluster.enabled
    assert p.convert.variants == ("float32",) and p.devices.targets == () and p.budgets == {}


@pytest.mark.parametrize("change, message", [
    ({"proxy_train_samples": -1}, "recipe.search.proxy_train_samples: expected an integer >= 0"),
    ({"alphas": [0.5, 0.5]}, "recipe.search.alphas: duplicate entries in [0.5, 0.5]"),
    ({"families": ["resnet"]}, "recipe.search.families: expected one of"),
    ({"input_sizes": [24, 23]}, "recipe.search.input_sizes: expected integers >= 24 (the smallest input every "
                                "model family takes), got 23"),
    ({"budget": 3}, "recipe.search: unknown key 'budget'; valid keys: families, alphas"),
])
def test_search_config_validation(tmp_path, change, message):
    data = json.loads(json.dumps(TINY))
    data["search"].update(change)
    with pytest.raises(ConfigError) as e:
        load_recipe(_write(tmp_path, data))
    assert message in str(e.value)


# -- CLI errors ------------------------------------------------------------------------

def _cli(*args):
    from pipeline.cli import main

    return CliRunner().invoke(main, ["search", *args])


def test_cli_help_is_listed_and_names_devices():
    from pipeline.cli import main

    assert "search" in CliRunner().invoke(main, ["--help"]).output
    out = _cli("--help").output
    assert "--latency-ms" in out and "camera-a53" in out and "int8-qat" in out


@pytest.mark.parametrize("args, code, message", [
    (["tiny", "--device", "iphone", "--latency-ms", "3"], 2,
     "error: --device: unknown device 'iphone'; valid: camera-a53, graviton2, pixel1"),
    (["tiny", "--device", "pixel4", "--latency-ms", "-3"], 2,
     "error: --latency-ms: expected a positive number, got -3.0"),
    (["tiny", "--device", "pixel4", "--latency-ms", "3", "--variant", "float16"], 2,
     "'float16' is not one of 'int8-qat', 'int8-ptq', 'float32'"),
    (["tiny", "--device", "pixel4", "--latency-ms", "3", "--trials", "0"], 2,
     "Invalid value for '--trials': 0 is not in the range x>=1"),
    (["no-such-recipe.yaml", "--device", "pixel4", "--latency-ms", "3"], 2,
     "error: recipe file not found: no-such-recipe.yaml (embedded recipes:"),
    (["tiny", "--device", "pixel4"], 2, "Missing option '--latency-ms'"),
])
def test_cli_errors(tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path)
    args = [str(tmp_path / "tiny.yaml") if a == "tiny" else a for a in args]
    res = _cli(*args)
    assert res.exit_code == code, res.output
    assert message in res.output


def test_cli_bad_recipe_names_the_key(tmp_path):
    data = json.loads(json.dumps(TINY))
    data["model"]["familly"] = "mobilenet_v2"
    res = _cli(str(_write(tmp_path, data)), "--device", "pixel4", "--latency-ms", "3")
    assert res.exit_code == 2 and "recipe.model: unknown key 'familly'" in res.output


def test_cli_variant_the_recipe_does_not_build(tmp_path):
    res = _cli(str(_write(tmp_path)), "--device", "pixel4", "--latency-ms", "3", "--variant", "int8-ptq",
               "--out", str(tmp_path / "s"))
    assert res.exit_code == 2
    assert "error: --variant 'int8-ptq' is not a variant recipe tiny builds; valid: float32, int8-qat" in res.output


# -- a real search on a tiny space --------------------------------------------------------

@pytest.fixture(scope="module")
def latency_cache(tmp_path_factory):
    """A fresh latency cache for this module (the ARM runtime cache stays where it is)."""
    from pipeline.latency import reference

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("latency-cache")
    mp.setattr(reference, "cache_root", lambda: root)
    yield root
    mp.undo()


@pytest.mark.integration
@pytest.mark.device
def test_search_on_a_tiny_space(tmp_path, latency_cache, monkeypatch):
    tiny = load_recipe(_write(tmp_path, TINY_V1))
    cands = ss.space(tiny)
    # Tier 1, cold then cached: the second call never emulates.
    cold = [sc.candidate_cost(tiny, c, "pixel4", "int8-qat", 10) for c in cands]
    assert [c["cached"] for c in cold] == [False, False]
    small, big = cold
    assert 0 < small["latency_ms"] < big["latency_ms"]
    assert 0 < small["memory_mb"] < big["memory_mb"] and 0 < small["size_kb"] < big["size_kb"]
    assert small["instructions"] == sum(small["instructions_by_class"].values())

    def no_emulation(*a, **k):
        raise AssertionError("the cost tier ran an emulation for a cached architecture")

    monkeypatch.setattr(sc, "measure_cost", no_emulation)
    warm = sc.candidate_cost(tiny, cands[0], "pixel4", "int8-qat", 10)
    assert warm["cached"] and warm["latency_ms"] == small["latency_ms"]

    # Tier 2: a budget between the two: only the small one is trained.
    budget = ss.Budget((small["latency_ms"] + big["latency_ms"]) / 2)
    out = tmp_path / "search"
    logs = []
    res = se.search(tiny, "pixel4", budget, out=out, log=logs.append)
    by = {r["candidate"]: r for r in res.rows}
    assert set(by) == {"mobilenet_v1-0.25-32", "mobilenet_v1-0.75-32"}
    assert by["mobilenet_v1-0.75-32"]["fits"] is False
    assert by["mobilenet_v1-0.75-32"]["misses"][0].startswith("latency ")
    assert by["mobilenet_v1-0.75-32"].get("proxy_val_top1") is None
    assert not (out / "proxy" / "mobilenet_v1-0.75-32").exists()  # never trained
    assert not (out / "finalists" / "mobilenet_v1-0.75-32").exists()
    assert by["mobilenet_v1-0.75-32"]["latency_ms"] == pytest.approx(big["latency_ms"])
    assert 0 <= by["mobilenet_v1-0.25-32"]["proxy_val_top1"] <= 100
    assert res.front == ["mobilenet_v1-0.25-32"]
    assert res.chosen["candidate"] == "mobilenet_v1-0.25-32" and res.trials_run == 2

    # Outputs: table, plot, JSON, and a chosen recipe ready for `mobile-model build`.
    assert "| mobilenet_v1-0.75-32 |" in (out / "pareto.md").read_text()
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "search.json").read_text())["chosen"]["candidate"] == "mobilenet_v1-0.25-32"
    chosen = load_recipe(res.chosen_recipe)
    assert (chosen.model.family, chosen.model.alpha, chosen.model.input_size) == ("mobilenet_v1", 0.25, 32)
    assert chosen.devices.targets == ("pixel4",) and chosen.budgets["max_latency_ms"] == {"pixel4": budget.latency_ms}
    # Its full build ran the device check on the trained model and met the budget.
    assert res.final["budgets_ok"], res.final["budgets"]
    assert res.final["latency_ms"] <= budget.latency_ms
    # The trained int8 file executes what the random-weight one did, within 1%.
    assert res.final["instructions"] == pytest.approx(small["instructions"], rel=0.01)

    # Resumed: the stored trials are not re-run, no proxy training, no emulation.
    logs.clear()
    again = se.search(tiny, "pixel4", budget, out=out, log=logs.append)
    assert again.trials_run == 0 and again.trials_stored == res.trials_stored == 2
    assert again.chosen["candidate"] == res.chosen["candidate"]
    assert not any("[train] epoch" in m for m in logs)
    assert any("resuming" in m for m in logs)

    # A budget nothing meets: a clear error naming the cheapest candidate (costs cached).
    with pytest.raises(BudgetExceededError) as e:
        se.search(tiny, "pixel4", ss.Budget(0.001), out=tmp_path / "none")
    assert (f"no candidate fits 0.001 ms on pixel4: 2 looked at; the cheapest, mobilenet_v1-0.25-32, "
            f"needs {small['latency_ms']:.3f} ms") in str(e.value)
    assert not (tmp_path / "none" / "proxy").exists()


def test_model_spec_channels_and_stride_keep_reference_keys():
    from pipeline.latency.reference import ModelSpec

    ref = ModelSpec("mobilenet_v2", 0.35, 32, 10, "int8")
    assert ref.label == "mobilenet_v2-0.35-32x32-10c-int8"
    # Entries cached for 3-channel, stride-2 reference models keep their key.
    assert ref.key()["spec"] == {"family": "mobilenet_v2", "alpha": 0.35, "input_size": 32, "classes": 10,
                                 "variant": "int8"}
    grey = ModelSpec("mobilenet_v2", 0.35, 32, 10, "int8", channels=1, first_stride=1)
    assert grey.label == "mobilenet_v2-0.35-32x32-10c-int8-1ch-s1"
    assert grey.input_shape == (32, 32, 1)
    assert grey.key()["spec"] == {**ref.key()["spec"], "channels": 1, "first_stride": 1}
    with pytest.raises(ConfigError, match="channels must be 1 or 3, got 2"):
        ModelSpec("mobilenet_v2", channels=2)
    with pytest.raises(ConfigError, match="first_stride must be 1 or 2, got 3"):
        ModelSpec("mobilenet_v2", first_stride=3)


def test_trials_resume_and_changed_budget_is_its_own_study(tmp_path, tiny, monkeypatch):
    """The study logic alone, with stand-ins for the emulated cost and the proxy training."""
    import optuna
    from optuna.trial import TrialState

    costs, trained = [], []

    def fake_cost(recipe, cand, device, variant, classes, log):
        costs.append(cand.name)
        return {"candidate": cand.name, "loaded": True, "memory_mb": 1.0, "size_kb": 100.0, "cached": False,
                "latency_ms": {"mobilenet_v2-0.35-32": 0.7, "mobilenet_v2-0.75-32": 1.5}[cand.name]}

    def fake_proxy(recipe, cand, root, log):
        trained.append(cand.name)
        return {"proxy_val_top1": 90.0}

    monkeypatch.setattr(se, "candidate_cost", fake_cost)
    monkeypatch.setattr(se, "proxy_accuracy", fake_proxy)
    budget = ss.Budget(1.0)
    # A search killed during a trial leaves it RUNNING in the storage.
    name = f"tiny-pixel4-int8-qat-{se.study_key(tiny, 'pixel4', 'int8-qat', budget)}"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    stale = optuna.create_study(study_name=name, storage=storage, direction="maximize").ask()

    logs = []
    study, ran = se.run_trials(tiny, "pixel4", "int8-qat", budget, 10, tmp_path, logs.append)
    assert study.trials[stale.number].state == TrialState.FAIL
    assert any(f"trial {stale.number} was interrupted" in m for m in logs)
    assert ran == 2 and sorted(costs) == ["mobilenet_v2-0.35-32", "mobilenet_v2-0.75-32"]
    assert trained == ["mobilenet_v2-0.35-32"]  # the one over budget is never trained
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert [t.user_attrs["candidate"] for t in pruned] == ["mobilenet_v2-0.75-32"]
    assert pruned[0].user_attrs["misses"] == ["latency 1.500 ms > 1 ms"]

    # The same command again: nothing to run.
    study, ran = se.run_trials(tiny, "pixel4", "int8-qat", budget, 10, tmp_path, logs.append)
    assert ran == 0 and len(costs) == 2 and len(trained) == 1

    # Another budget: its own study; the stored one is left as it was.
    study2, ran = se.run_trials(tiny, "pixel4", "int8-qat", ss.Budget(2.0), 10, tmp_path, logs.append)
    assert ran == 2 and study2.study_name != study.study_name
    assert sorted(trained) == ["mobilenet_v2-0.35-32", "mobilenet_v2-0.35-32", "mobilenet_v2-0.75-32"]
    assert len(optuna.get_all_study_names(storage)) == 2
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 3


def test_search_json_prints_the_outcome_when_nothing_fits(tmp_path, monkeypatch):
    """--json: a script reads stdout whatever happens; with no candidate within budget
    it gets the rows, chosen null and the reason, and the exit code is 1."""
    def over_budget(recipe, cand, device, variant, classes, log):
        return {"candidate": cand.name, "loaded": True, "memory_mb": 1.0, "size_kb": 100.0, "cached": True,
                "latency_ms": {"mobilenet_v2-0.35-32": 0.7, "mobilenet_v2-0.75-32": 1.5}[cand.name]}

    def never_trained(recipe, cand, root, log):
        raise AssertionError("a candidate over budget was trained")

    monkeypatch.setattr(se, "candidate_cost", over_budget)
    monkeypatch.setattr(se, "proxy_accuracy", never_trained)
    from pipeline.cli import main

    res = CliRunner(mix_stderr=False).invoke(main, ["search", str(_write(tmp_path)), "--device", "pixel4",
                                                    "--latency-ms", "0.5", "--json", "--out", str(tmp_path / "s")])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    assert out["chosen"] is None and out["device"] == "pixel4"
    assert sorted(r["candidate"] for r in out["rows"]) == ["mobilenet_v2-0.35-32", "mobilenet_v2-0.75-32"]
    assert out["reason"].startswith("no candidate fits 0.5 ms on pixel4: 2 looked at; the cheapest, "
                                    "mobilenet_v2-0.35-32, needs 0.700 ms")
    assert "error: no candidate fits" in res.stderr

"""The block-level search's trial phase (pipeline.search.blockstudy), with stand-ins.

The per-block table, the emulated cost and the proxy training are replaced by
stand-ins that record their calls, so the gates can be checked in seconds: a
proposal the table prices over budget is never emulated nor trained; one the
emulation prices over budget is never trained; ``trials`` counts trained
candidates; successive halving trains the promoted ones longer.
"""

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.recipe.load import load_recipe
from pipeline.search import blockstudy as bs
from pipeline.search import space as ss
from pipeline.search import study as se

RECIPE = {
    "name": "blocks",
    "data": {"dataset": "shapes", "train_samples": 256, "val_samples": 64, "test_samples": 128},
    "model": {"family": "mobilenet_v2", "alpha": 0.35, "input_size": 32, "channels": 1, "first_stride": 1},
    "convert": {"variants": ["float32", "int8-qat"]},
    "search": {"space": "blocks", "input_sizes": [32], "trials": 4, "proxy_epochs": 1, "rungs": 2,
               "reduction": 3, "finalists": 1},
}


def _recipe(tmp_path, **search):
    data = {**RECIPE, "search": {**RECIPE["search"], **search}}
    p = tmp_path / "blocks.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_recipe(p)


def _ms(genotype) -> float:
    """The stand-in latency: 0.1 ms per block (5 to 15 blocks in the space)."""
    return 0.1 * genotype.blocks


class StandInTable(bs.TableScreen):
    """The table's prediction replaced by :func:`_ms`; its verdict (``rejects``) is the real one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.applies = True
        self.predicted = []

    def predict(self, genotype, input_size):
        self.predicted.append(bs.genotype_arch(genotype, input_size).name)
        return {"latency_ms": _ms(genotype), "latency_cycles": 1e6 * _ms(genotype), "parts": genotype.blocks + 2}


@pytest.fixture
def stand_ins(monkeypatch):
    calls = {"emulated": [], "trained": [], "ptq": []}

    def fake_cost(recipe, genotype, input_size, device, variant, classes, log):
        name = bs.genotype_arch(genotype, input_size).name
        if variant == "int8-ptq":  # the QAT graph's lower bound: the table's figure
            calls["ptq"].append((name, _ms(genotype)))
            return {"loaded": True, "latency_ms": _ms(genotype), "memory_mb": 1.0, "size_kb": 100.0,
                    "cached": False}
        calls["emulated"].append((name, _ms(genotype)))
        # The QAT graph's emulation is 1.5% slower than the table: proposals just under
        # the table's margin are caught here.
        return {"loaded": True, "latency_ms": _ms(genotype) * 1.015, "memory_mb": 1.0, "size_kb": 100.0,
                "cached": False}

    def fake_proxy(recipe, arch, root, log, epochs=None):
        calls["trained"].append((arch.name, epochs))
        # More accurate with fewer blocks and with more epochs (deterministic).
        top1 = 50.0 + 2 * int(arch.name[1:3], 16) % 40 + epochs
        return {"proxy_val_top1": float(top1), "proxy_test_top1": float(top1)}

    monkeypatch.setattr(bs, "genotype_cost", fake_cost)
    monkeypatch.setattr(bs, "proxy_accuracy", fake_proxy)
    return calls


def _phase(recipe, budget, root, logs):
    study = se.open_study(recipe, "camera-a53", "int8-qat", budget, root, logs.append)
    screen = StandInTable(recipe, "camera-a53", "int8-qat", 10, budget, logs.append)
    return study, screen, bs.BlockPhase(study, recipe, "camera-a53", "int8-qat", budget, 10, root,
                                        logs.append, screen=screen)


LIMIT = 0.81  # ms


def test_cost_screen_rejects_over_budget_candidates_without_training_them(tmp_path, stand_ins):
    from optuna.trial import TrialState

    recipe = _recipe(tmp_path)
    # 9+ blocks (0.9 ms) the table rejects; 8 blocks pass its margin (0.8 <= 0.826) but
    # emulate at 0.812 ms, over budget; 7 or fewer are trained.
    budget = ss.Budget(LIMIT)
    logs = []
    study, screen, phase = _phase(recipe, budget, tmp_path, logs)
    counts = phase.run(0.0)

    emulated = dict(stand_ins["emulated"])
    trained = {name for name, _ in stand_ins["trained"]}
    assert counts["trained"] == 4 == len(trained)  # trials counts trained candidates only
    assert counts["proposals"] > 4  # ... and the rejected proposals are not counted
    by_name = {t.user_attrs["candidate"]: t for t in study.trials}
    table_rejected = [n for n, t in by_name.items() if t.user_attrs.get("rejected_by") == "table"]
    assert table_rejected, "the uniform start-up proposals include genotypes of more than 9 blocks"
    for name in table_rejected:
        t = by_name[name]
        assert name not in emulated and name not in trained  # neither emulated nor trained
        assert t.state == TrialState.PRUNED and t.user_attrs["excess"] > 0
        assert t.constraints["budget"] > 0  # the sampler sees it as infeasible
        assert t.user_attrs["predicted"]["latency_ms"] > LIMIT * (1 + bs.SCREEN_MARGIN)
        assert "per-block table" in t.user_attrs["misses"][0]
    for name, ms in emulated.items():  # every emulated proposal passed the table
        assert ms <= LIMIT * (1 + bs.SCREEN_MARGIN)
    assert not stand_ins["ptq"]  # the table priced every proposal's PTQ graph: not emulated again
    for name in trained:  # no infeasible candidate trained
        assert emulated[name] * 1.015 <= LIMIT
        assert by_name[name].user_attrs["excess"] <= 0 and by_name[name].constraints["budget"] <= 0
    caught = [n for n, ms in emulated.items() if ms * 1.015 > LIMIT]
    assert caught, "8-block proposals pass the table's margin and are caught by emulation"
    for name in caught:
        assert name not in trained and by_name[name].user_attrs["rejected_by"] == "emulation"
    # Successive halving: every trained candidate got rung 0 (1 epoch); the promoted
    # ones rung 1 (3 epochs), and not all were promoted.
    epochs = {}
    for name, e in stand_ins["trained"]:
        epochs.setdefault(name, []).append(e)
    assert all(e[0] == 1 for e in epochs.values())
    promoted = [n for n, e in epochs.items() if e == [1, 3]]
    assert promoted and len(promoted) < len(epochs)
    for name in promoted:
        assert by_name[name].state == TrialState.COMPLETE and set(by_name[name].user_attrs["rungs"]) == {"1", "3"}

    # The rows of the study: emulated candidates only, fastest first, rung figures kept.
    rows = se.rows_of(study)
    assert {r["candidate"] for r in rows} == set(emulated)
    assert all(r["kind"] == "searched" and r["family"] == "mbconv" for r in rows)
    assert {r["candidate"] for r in rows if r.get("rung") == 1} == set(promoted)

    # The same phase again: the stored trials count, nothing is trained again.
    before = len(stand_ins["trained"])
    counts = bs.BlockPhase(study, recipe, "camera-a53", "int8-qat", budget, 10, tmp_path, logs.append,
                           screen=screen).run(0.0)
    assert counts["trained"] == 0 and len(stand_ins["trained"]) == before
    assert any("4 candidate(s) trained" in m for m in logs)


def test_time_budget_stops_the_phase(tmp_path, stand_ins):
    import time

    recipe = _recipe(tmp_path, time_budget_s=5)
    logs = []
    _, _, phase = _phase(recipe, ss.Budget(0.85), tmp_path, logs)
    counts = phase.run(time.perf_counter() - 10)  # started 10 s ago: the budget is spent
    assert counts == {"proposals": 0, "trained": 0, "out_of_time": True}
    assert not stand_ins["emulated"] and not stand_ins["trained"]
    assert any("time budget of 5 s: 10 s spent" in m for m in logs)


def test_a_budget_nothing_meets_gives_up(tmp_path, stand_ins):
    recipe = _recipe(tmp_path, trials=1)
    logs = []
    _, _, phase = _phase(recipe, ss.Budget(0.3), tmp_path, logs)  # below the smallest genotype (5 blocks)
    counts = phase.run(0.0)
    assert counts["trained"] == 0 and counts["proposals"] == bs.PROPOSALS_PER_TRIAL
    assert not stand_ins["emulated"] and not stand_ins["trained"]
    assert any("giving up" in m for m in logs)


def test_genotype_arch_is_a_buildable_recipe_model(tmp_path):
    from models.genotype import Genotype
    from pipeline.search.blockspace import sample_distinct
    from pipeline.search.recipes import proxy_recipe

    g = sample_distinct(3, 1)[0]
    arch = bs.genotype_arch(g.to_dict(), 32)
    assert arch.name == f"{g.key()}-32"
    p = proxy_recipe(_recipe(tmp_path), arch, epochs=3)
    assert p.model.family == "mbconv" and Genotype.from_dict(p.model.genotype) == g
    assert p.train.epochs == 3 and p.convert.variants == ("float32",)


def test_time_budget_keeps_time_for_the_finalists(tmp_path, monkeypatch, stand_ins):
    import time

    walls = []

    def slow_proxy(recipe, arch, root, log, epochs=None):
        walls.append(epochs)
        return {"proxy_val_top1": 90.0, "proxy_wall_s": 10.0 * epochs}

    monkeypatch.setattr(bs, "proxy_accuracy", slow_proxy)
    recipe = _recipe(tmp_path, time_budget_s=100)
    logs = []
    _, _, phase = _phase(recipe, ss.Budget(0.85), tmp_path, logs)
    counts = phase.run(time.perf_counter())
    # 10 s per proxy epoch: one finalist's full recipe is kept
    # full_recipe_epochs x 10 s, plus the chosen build's report and bundle and its
    # variants' device runs.
    from pipeline.search import reserve as sr

    final = sr.FINAL_BUILD_S + sr.DEVICE_RUN_S * len(recipe.convert.variants) * recipe.devices.samples / 100
    assert sr.final_build_s(recipe) == pytest.approx(final) and final > sr.FINAL_BUILD_S
    reserve = sr.full_recipe_epochs(recipe) * 10.0 + final
    assert phase.reserve_s() == pytest.approx(reserve) and reserve > 70
    # So after the first trained candidate, neither its rung 1 (30 s) nor another
    # trial (10 s) fits in 100 s.
    assert counts["trained"] == 1 and counts["out_of_time"] and walls == [1]
    assert any("rung 1 would not leave the finalists their time" in m for m in logs)
    assert any("kept for the finalists and the chosen build" in m for m in logs)


@pytest.mark.parametrize("search, message", [
    ({"space": "cells"}, "search.space"),
    ({"space": "grid", "time_budget_s": 60}, "search.time_budget_s: applies to space: blocks"),
    ({"time_budget_s": -1}, "search.time_budget_s"),
    ({"reduction": 1}, "search.reduction"),
    ({"rungs": 0}, "search.rungs"),
])
def test_bad_block_search_settings_are_named(tmp_path, search, message):
    with pytest.raises(ConfigError, match=message):
        _recipe(tmp_path, **search)


def test_excess_is_the_worst_budget_ratio():
    b = ss.Budget(2.0, memory_mb=1.0, size_kb=100.0)
    assert bs.excess({"loaded": True, "latency_ms": 1.0, "memory_mb": 1.5, "size_kb": 50.0}, b) == pytest.approx(0.5)
    assert bs.excess({"loaded": True, "latency_ms": 1.0, "memory_mb": 0.5, "size_kb": 50.0}, b) == pytest.approx(-0.5)
    assert bs.excess({"loaded": False}, b) == 1.0


class NoTable(StandInTable):
    """A table that lacks every proposal's parts: all go to emulation."""

    def predict(self, genotype, input_size):
        return None


def test_ptq_lower_bound_rejects_before_the_qat_conversion(tmp_path, stand_ins):
    recipe = _recipe(tmp_path, trials=2, rungs=1)
    budget, logs = ss.Budget(LIMIT), []
    study = se.open_study(recipe, "camera-a53", "int8-qat", budget, tmp_path, logs.append)
    phase = bs.BlockPhase(study, recipe, "camera-a53", "int8-qat", budget, 10, tmp_path, logs.append,
                          screen=NoTable(recipe, "camera-a53", "int8-qat", 10, budget, logs.append))
    phase.run(0.0)
    ptq, qat = dict(stand_ins["ptq"]), dict(stand_ins["emulated"])
    trained = {name for name, _ in stand_ins["trained"]}
    over = [n for n, ms in ptq.items() if ms > LIMIT * (1 + bs.SCREEN_MARGIN)]
    assert over, "the uniform start-up proposals include genotypes of 9 blocks or more"
    by_name = {t.user_attrs["candidate"]: t for t in study.trials}
    for name in over:  # rejected on the PTQ graph: the QAT graph never converted, nothing trained
        t = by_name[name]
        assert name not in qat and name not in trained
        assert t.user_attrs["rejected_by"] == "emulation" and t.constraints["budget"] > 0
        assert "int8 PTQ graph" in t.user_attrs["misses"][0]
    assert set(qat) == set(ptq) - set(over)  # the others are priced on their QAT graph
    assert trained and all(qat[n] * 1.015 <= LIMIT for n in trained)
    assert any("QAT graph not converted" in m for m in logs)


def test_table_sends_a_genotype_it_mostly_lacks_to_full_emulation(tmp_path, monkeypatch):
    from pipeline.search import blocktable
    from pipeline.search.blockspace import sample_distinct

    recipe = _recipe(tmp_path)
    logs, predicted = [], []
    monkeypatch.setattr(blocktable, "missing_parts", lambda g, geometry, device: bs.MEASURE_MISSING + 1)
    monkeypatch.setattr(blocktable, "predict", lambda *a, **k: predicted.append(a) or {"latency_ms": 1.0})
    screen = bs.TableScreen(recipe, "camera-a53", "int8-qat", 10, ss.Budget(0.85), logs.append)
    assert screen.predict(sample_distinct(0, 1)[0], 32) is None and not predicted
    assert any("lacks 3 parts" in m and "emulating it whole" in m for m in logs)
    # Threads > 1: the table (one thread) does not apply at all.
    import dataclasses
    threaded = dataclasses.replace(recipe, devices=dataclasses.replace(recipe.devices, threads=2))
    assert not bs.TableScreen(threaded, "camera-a53", "int8-qat", 10, ss.Budget(0.85), logs.append).applies
    assert not bs.TableScreen(recipe, "camera-a53", "float32", 10, ss.Budget(0.85), logs.append).applies


def test_the_reference_grid_stays_within_the_time_budget(tmp_path, monkeypatch):
    """Past the deadline, uncached reference costs are left out and a fitting reference
    is not trained; cached costs are still listed. Before it, everything is priced and
    the fitting ones are trained."""
    import time

    from pipeline.search import cost as search_cost

    recipe = _recipe(tmp_path)
    names = [c.name for c in ss.space(recipe)]
    cached = set(names[::2])
    priced, trained = [], []
    monkeypatch.setattr(search_cost, "candidate_cost_cached", lambda r, cand, *a: cand.name in cached)
    monkeypatch.setattr(bs, "candidate_cost", lambda r, cand, *a: priced.append(cand.name) or
                        {"loaded": True, "latency_ms": 0.5, "memory_mb": 1.0, "size_kb": 10.0})
    monkeypatch.setattr(bs, "proxy_accuracy", lambda r, arch, root, log: trained.append(arch.name) or
                        {"proxy_val_top1": 90.0, "proxy_test_top1": 90.0})
    logs = []
    rows = bs.reference_rows(recipe, "pixel4", "int8-qat", ss.Budget(1.0), 10, tmp_path, logs.append,
                             deadline=time.perf_counter() - 1)
    assert [r["candidate"] for r in rows] == sorted(cached, key=names.index) == priced
    assert not trained and all("proxy" not in r for r in rows)
    skipped = [n for n in names if n not in cached]
    assert any(f"{len(skipped)} hand-designed reference(s) not priced" in m and skipped[0] in m for m in logs)
    priced.clear()
    rows = bs.reference_rows(recipe, "pixel4", "int8-qat", ss.Budget(1.0), 10, tmp_path, logs.append,
                             deadline=time.perf_counter() + 600)
    assert priced == names and len(trained) == len(names) and all(r["proxy"] for r in rows)


def test_table_sends_a_genotype_with_a_part_the_device_does_not_load_to_full_emulation(tmp_path, monkeypatch):
    """A part alone can fail where its network loads: LiteRT 2.3's XNNPACK does not prepare
    ``tests/data/xnnpack_unprepared_part.tflite`` (a stride-2 squeeze-excite block of
    ``sample_distinct(12063, 2, SPACE)``), yet loads the whole genotype. The screen then
    emulates the genotype whole instead of ending the search."""
    from pipeline.errors import RuntimeIncompatibleError
    from pipeline.search import blocktable
    from pipeline.search.blockspace import sample_distinct

    def refuse(*a, **k):
        raise RuntimeIncompatibleError("pixel4 does not load part p: failed to prepare")

    logs = []
    monkeypatch.setattr(blocktable, "missing_parts", lambda g, geometry, device: 0)
    monkeypatch.setattr(blocktable, "predict", refuse)
    screen = bs.TableScreen(_recipe(tmp_path), "pixel4", "int8-qat", 10, ss.Budget(0.85), logs.append)
    screen._overhead[32] = {}  # calibrated
    g = sample_distinct(0, 1)[0]
    assert screen.predict(g, 32) is None
    assert any(f"cannot price {g.key()}" in m and "emulating it whole" in m for m in logs), logs
    calibrations = []
    monkeypatch.setattr(blocktable, "calibrate",  # a calibration genotype's part, likewise
                        lambda *a, **k: calibrations.append(a) or refuse())
    assert screen.predict(g, 24) is None and screen._overhead[24] is None
    assert any("cannot be calibrated at input 24" in m and "emulated whole" in m for m in logs), logs
    assert screen.predict(g, 24) is None and len(calibrations) == 1  # asked once per size

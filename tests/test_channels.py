"""Channel pruning on tiny models: thinning is exact, residual and SE groups stay
consistent, and the schedule stops at its budget and resumes without re-running."""


import numpy as np
import pytest

from models import build_model
from pipeline.compress.channels import find_groups, importance, keep_top, thin, thin_by_scores
from pipeline.compress.netadapt import ScheduleConfig, Target, proposal_width, run_schedule
from pipeline.errors import BudgetExceededError
from tests.helpers.stages import TINY_GENOTYPE, ArraySplits

FAMILIES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


def _model(family, seed=0):
    from pipeline.train.fit import setup_tensorflow

    setup_tensorflow(seed)
    return _randomize_bn(build_model(family, 0.35, (32, 32, 1), 10, first_stride=1), seed)


def _randomize_bn(m, seed):
    """``m`` with non-trivial BN statistics, so that a wrongly sliced BN shows in the outputs
    (and BN scales rank channels)."""
    rng = np.random.default_rng(seed)
    for layer in m.layers:
        if type(layer).__name__ == "BatchNormalization":
            g, b, mean, var = layer.get_weights()
            layer.set_weights([g + rng.normal(0, .2, g.shape), b + rng.normal(0, .2, b.shape),
                               mean + rng.normal(0, .2, mean.shape), var + rng.uniform(0, .5, var.shape)])
    return m


def _tiny_genotype(seed=0):
    from models import genotype
    from pipeline.train.fit import setup_tensorflow

    setup_tensorflow(seed)
    return genotype.build(TINY_GENOTYPE, (32, 32, 1), 10, first_stride=1)


def _tiny(seed=0):
    """The tiny block genotype with non-trivial BN statistics. The schedule and criteria tests
    use it: its groups are those a family has (a plain pointwise conv, an expansion with
    squeeze-excite, a head feeding the classifier), about 30 layers instead of 90, and
    building, thinning and tracing it several times, not arithmetic, is what they cost."""
    return _randomize_bn(_tiny_genotype(seed), seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_channels_nobody_reads_changes_no_output(family):
    """Channels whose consumers ignore them (zero input weights) can go: the thinned model
    computes exactly what the full one does, through every group at once."""
    m = _model(family)
    rng = np.random.default_rng(1)
    keep = {}
    for g in find_groups(m):
        idx = np.sort(rng.choice(g.channels, g.channels // 2, replace=False))
        keep[g.producer] = idx
        drop = np.setdiff1d(np.arange(g.channels), idx)
        for c in g.consumers:
            w = m.get_layer(c).get_weights()
            if w[0].ndim == 4:
                w[0][:, :, drop, :] = 0
            else:
                w[0][drop, :] = 0
            m.get_layer(c).set_weights(w)
    x = rng.random((4, 32, 32, 1), dtype=np.float32)
    t = thin(m, keep)
    assert t.count_params() < 0.7 * m.count_params()
    np.testing.assert_allclose(t(x, training=False).numpy(), m(x, training=False).numpy(), atol=2e-6)
    assert [layer.name for layer in t.layers] == [layer.name for layer in m.layers]


def test_residual_groups_are_left_whole():
    """No group reaches an Add: every residual sum keeps its width when every group is halved."""
    m = _model("mobilenet_v2")
    groups = find_groups(m)
    producers = {g.producer for g in groups}
    assert {f"block{i}_expand_conv" for i in range(2, 18)} <= producers
    members = {n for g in groups for n in g.members}
    adds = [layer for layer in m.layers if layer.name.endswith("_add")]
    assert adds and not members & {a.name for a in adds}
    t = thin_by_scores(m, {g.producer: g.channels // 2 for g in groups}, "l1_bn")
    for a in adds:
        assert t.get_layer(a.name).output_shape == a.output_shape
        # The projections that feed a residual sum are never producers.
        assert f"{a.name[:-4]}_project_conv" not in producers


def test_squeeze_excite_follows_its_channels():
    m = _model("mobilenet_v3_small")
    g = next(g for g in find_groups(m) if g.producer == "block4_expand_conv")
    assert g.coproducers == ("block4_se_excite",)
    assert {"block4_se_squeeze", "block4_project_conv"} == set(g.consumers)
    t = thin_by_scores(m, {"block4_expand_conv": 16}, "l1")
    assert t.get_layer("block4_se_excite").filters == 16
    assert t.get_layer("block4_se_squeeze").get_weights()[0].shape[2] == 16
    # The excite conv is not its own group: it has the same channels.
    assert "block4_se_excite" not in {x.producer for x in find_groups(m)}


def test_importance_ranks_and_errors():
    m = _model("mobilenet_v1")
    g = find_groups(m)[1]
    for criterion in ("l1", "bn_scale", "l1_bn"):
        s = importance(m, g, criterion)
        assert s.shape == (g.channels,) and np.all(s >= 0)
    assert keep_top(np.array([1., 3., 3., 0.]), 2).tolist() == [1, 2]
    with pytest.raises(ValueError, match="criterion must be one of l1, bn_scale, l1_bn; got 'taylor'"):
        importance(m, g, "taylor")
    with pytest.raises(ValueError, match="'pool' is not a prunable channel group"):
        thin(m, {"pool": [0]})
    with pytest.raises(ValueError, match=r"distinct indices in \[0, "):
        thin(m, {g.producer: [0, 0]})


def test_proposal_width_rounds_to_packed_channels():
    assert proposal_width(64, 100.0, 1000.0) == 48   # 10 channels -> next multiple of 8 below 54
    assert proposal_width(64, 100.0, 1.0) == 56      # at least one step of 8
    assert proposal_width(8, 100.0, 1000.0) == 8     # never below the floor: cannot shrink


def _splits():
    rng = np.random.default_rng(0)
    x = rng.random((96, 32, 32, 1), dtype=np.float32)
    y = (x[:, :16].mean(axis=(1, 2, 3)) > 0.5).astype(np.int64) + 2 * (x[:, :, :16].mean(axis=(1, 2, 3)) > .5)
    return ArraySplits(x[:64], y[:64], x[64:], y[64:])


def test_macs_target_stops_at_budget_and_resumes(tmp_path):
    from models.macs import count_macs

    m = _tiny()
    macs0 = count_macs(m)
    # Three groups: the expansion (with squeeze-excite) at 16x16 holds most MACs.
    cfg = ScheduleConfig(Target("macs", 0.85 * macs0), "l1_bn", step=0.05, seed=0, recover_batches=1,
                         batch_size=16, layers=("block1_project_conv", "block2_expand_conv", "head_conv"))
    logs = []
    thinned, res = run_schedule(m, _splits(), cfg, tmp_path, "src", logs.append)
    assert count_macs(thinned) <= 0.85 * macs0 < res["steps"][-1]["cost_before"]
    assert res["steps_run"] == len(res["steps"]) >= 2
    assert [s["step"] for s in res["steps"]] == list(range(1, len(res["steps"]) + 1))
    for s in res["steps"]:
        assert s["cost"] < s["cost_before"] and s["channels_after"] % 8 == 0
        assert min(p["score"] for p in s["proposals"]) == s["score"]
    again, res2 = run_schedule(m, _splits(), cfg, tmp_path, "src", logs.append)
    assert res2["steps_run"] == 0 and res2["steps"] == res["steps"]
    assert again.get_config() == thinned.get_config()
    with pytest.raises(BudgetExceededError, match="every layer is at its narrowest"):
        run_schedule(m, _splits(), ScheduleConfig(Target("macs", 0.001 * macs0), "l1", 0.5, 0, recover_batches=0,
                                                  layers=("block2_project_conv",)),
                     tmp_path / "b", "src", logs.append)


@pytest.mark.integration
@pytest.mark.device
def test_latency_target_stops_at_the_device_budget(tmp_path, monkeypatch):
    """A pixel4 latency target: each proposal's int8 file loads and runs on the emulated
    core (device_cost raises if not), the schedule stops once the estimate is within
    budget, and a cached architecture is never emulated again."""
    from pipeline.compress import netadapt
    from pipeline.latency import reference

    monkeypatch.setattr(reference, "cache_root", lambda: tmp_path / "cache")
    m = _model("mobilenet_v1")
    start = netadapt.device_cost(m, "pixel4", log=lambda s: None)
    assert start["loaded"] and not start["cached"] and start["instructions"] > 0
    budget = 0.97 * start["latency_ms"]
    # One group keeps the emulations to a few (each ~10 s).
    cfg = ScheduleConfig(Target("latency_ms", budget, "pixel4"), "l1_bn", step=0.05, seed=0, recover_batches=1,
                         batch_size=16, layers=("block1_pointwise_conv",))
    thinned, res = run_schedule(m, _splits(), cfg, tmp_path / "steps", "src", lambda s: None)
    assert res["start"]["cost"] == start["latency_ms"]
    assert res["steps"][-1]["cost"] <= budget < res["steps"][-1]["cost_before"]
    assert all(s["instructions"] < start["instructions"] for s in res["steps"])
    assert thinned.get_layer("block1_pointwise_conv").filters < m.get_layer("block1_pointwise_conv").filters
    again = netadapt.device_cost(thinned, "pixel4", log=lambda s: None)
    assert again["cached"] and again["latency_ms"] == res["steps"][-1]["cost"]


@pytest.mark.integration
def test_unstructured_pruning_on_top_of_channels(tmp_path):
    """``structure: channels+unstructured``: the thinned model is magnitude-pruned, QAT keeps
    its zeros (PQAT) and the int8 file is both thinner and sparse."""
    from models.macs import count_macs
    from pipeline.build import compress_stages
    from pipeline.data import load_dataset
    from pipeline.export.convert import convert_variant
    from pipeline.recipe.schema import Recipe
    from pipeline.tflite.reader import read_tflite, weight_kernels
    from pipeline.train.keras_io import load_keras, save_keras

    recipe = Recipe.from_dict({
        "name": "tiny", "data": {"dataset": "shapes"},
        # The tiny block genotype: thinning and pruning act on its pointwise, SE and head
        # convs as on a family's, and it builds and traces several times faster.
        "model": {"family": "mbconv", "alpha": 1.0, "first_stride": 1, "genotype": TINY_GENOTYPE},
        "prune": {"enabled": True, "structure": "channels+unstructured", "target_macs": 0.8, "step": 0.2,
                  "target_sparsity": 0.5},
        "convert": {"variants": ["int8-qat"]}}).smoke()
    splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed)
    float_h5 = tmp_path / "keras" / "float.h5"
    full = _tiny_genotype()
    save_keras(full, float_h5)
    ran = []

    def stage(name, config, inputs, outputs, fn):
        ran.append((name, config, {k: p.name for k, p in inputs.items()}))
        return fn()

    sources = compress_stages(recipe, splits, stage, float_h5, tmp_path / "keras", lambda s: None, float_epochs=1)
    assert [(n, i) for n, _, i in ran] == [("channels", {"keras": "float.h5"}), ("prune", {"keras": "channels.h5"}),
                                           ("qat", {"keras": "pruned.h5"})]
    assert ran[2][1]["preserve_sparsity"] is True
    pruned = load_keras(sources["float"]["keras"])
    assert count_macs(pruned) <= 0.8 * count_macs(full)
    kernels = [w for layer in pruned.layers if type(layer).__name__ in ("Conv2D", "Dense")
               for w in layer.get_weights()[:1]]
    assert np.mean([np.mean(k == 0) for k in kernels]) == pytest.approx(0.5, abs=0.05)
    tfl = tmp_path / "int8-qat.tflite"
    convert_variant(recipe, "int8-qat", sources["qat"]["keras"], splits, tfl, lambda s: None)
    convs = [(arr, op) for op, name, arr in weight_kernels(read_tflite(tfl)) if op != "DEPTHWISE_CONV_2D"]
    zeros = sum(int(np.count_nonzero(a == 0)) for a, _ in convs) / sum(a.size for a, _ in convs)
    assert zeros > 0.4  # PQAT kept most of the zeros through QAT and int8
    narrower = [layer.name for layer in pruned.layers
                if type(layer).__name__ == "Conv2D" and layer.filters < full.get_layer(layer.name).filters]
    assert narrower  # thinner, not only sparse


def test_tables_name_the_channel_pruning_chain():
    from pipeline.variants import chain_of

    assert chain_of("qat", True, "channels") == "channels -> QAT"
    assert chain_of("float", True, "channels") == "channels"
    assert chain_of("qat", True, "channels+unstructured") == "channels -> prune -> PQAT"
    assert chain_of("qat", True) == "prune -> PQAT" and chain_of("qat", False, "channels") == "QAT"


def test_criteria_comparison_thins_to_the_same_widths_and_ranks_inversely():
    """The criteria measurement: halved widths are packed multiples of 8; every criterion
    and control thins to exactly those widths; the inverse control keeps the channels
    l1_bn ranks lowest; the table has a row per criterion."""
    from pipeline.compress.channels import CRITERIA
    from benchmarks.channel_criteria import CONTROLS, keep_indices, compare, format_rows, halved_widths

    m = _tiny()
    widths = halved_widths(m)
    assert widths and all(w >= 8 and w % 8 == 0 for w in widths.values())
    g = next(g for g in find_groups(m) if g.producer in widths and widths[g.producer] < g.channels)
    scores = importance(m, g, "l1_bn")
    inverse = keep_indices(m, widths, "inverse", 0)[g.producer]
    top = keep_indices(m, widths, "l1_bn", 0)[g.producer]
    assert scores[inverse].max() <= scores[top].min()
    rows = compare(m, _splits(), widths, recover_batches=2, batch_size=8, eval_images=16, log=lambda s: None)
    assert [r["criterion"] for r in rows] == ["unpruned", *CRITERIA, *CONTROLS]
    assert all(0.0 <= r["top1_oneshot"] <= 100.0 for r in rows)
    assert "| inverse |" in format_rows(rows, 2)


def test_layer_cost_splits_the_model_at_every_conv_and_differences_add_up():
    """Per-segment device cost: a cut after each Conv2D's BN/activation, the head last;
    the segment costs (prefix differences) add up to the whole model's cost."""
    from benchmarks.layer_cost import cut_points, format_table, segment_costs

    m = _model("mobilenet_v1")
    cuts = cut_points(m)
    assert cuts[0] == ("stem_conv", "stem_relu6") and cuts[-1][0] == "block13_pointwise_conv"
    assert all(type(m.get_layer(end)).__name__ == "ReLU" for _, end in cuts)

    def fake_cost(prefix):  # cost grows with the prefix: its parameters, plus a fixed part
        n = float(prefix.count_params())
        return {"instructions": 1000.0 + n, "latency_ms": 0.1 + n / 1e6}

    rows = segment_costs(m, fake_cost)
    assert [r["segment"] for r in rows] == [c[0] for c in cuts] + ["head"]
    assert sum(r["instructions"] for r in rows) == pytest.approx(1000.0 + m.count_params())
    assert sum(r["latency_share"] for r in rows) == pytest.approx(1.0)
    assert rows[-1]["instructions"] == pytest.approx(m.get_layer("logits").count_params())
    table = format_table(["a"], [rows], "pixel4")
    assert "| head |" in table and "| **total** |" in table


def test_measurement_tools_refuse_bad_input_clearly(tmp_path, capsys):
    """layer_cost and criteria: a missing file exits 2, a corrupt model file exits 1,
    each with one line naming the file (no traceback)."""
    from benchmarks import channel_criteria as criteria, layer_cost

    assert layer_cost.main([str(tmp_path / "nope.h5")]) == 2
    assert "no such model file" in capsys.readouterr().err
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    assert layer_cost.main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "Traceback" not in err
    assert criteria.main([str(tmp_path)]) == 2
    assert "recipe.yaml does not exist" in capsys.readouterr().err

"""Block-level genotypes (models/genotype.py) and the block search space
(pipeline/search/blockspace.py): named points, the recipe round trip, bad genotypes,
and sampled genotypes through QAT, int8 conversion and an emulated device."""

import random

import numpy as np
import pytest
import yaml

from models.genotype import Genotype, Stage, build, named
from pipeline.errors import ConfigError
from pipeline.recipe.schema import Recipe
from pipeline.search import blockspace


@pytest.fixture(scope="module")
def latency_root(tmp_path_factory):
    """One latency cache for this module's emulating tests: what one test prices (the
    pipeline analyses of hot blocks, parts that compute the same thing) another reuses,
    as runs of a search share the user cache. No test asserts on an entry another makes."""
    return tmp_path_factory.mktemp("latency")


def _layers(model):
    return [(type(x).__name__, x.name, tuple(tuple(w.shape) for w in x.weights)) for x in model.layers]


@pytest.mark.parametrize("family", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"])
@pytest.mark.parametrize("alpha", [0.35, 0.75, 1.0])
def test_hand_designed_families_are_named_points(family, alpha):
    """The named genotype builds the family's own layers, names and weight shapes."""
    import models

    g = named(family, alpha)
    own = models.build_model(family, alpha, (32, 32, 1), 10, first_stride=1)
    assert _layers(build(g, (32, 32, 1), 10, first_stride=1)) == _layers(own)


def test_mobilenet_v1_is_not_a_point():
    with pytest.raises(ValueError, match="'mobilenet_v1' is not a named point.*valid: mobilenet_v2"):
        named("mobilenet_v1", 1.0)


def _recipe(genotype, **model):
    return Recipe.from_dict({"name": "g", "model": {"family": "mbconv", "alpha": 1.0, "genotype": genotype,
                                                    **model}})


def test_genotype_round_trips_through_the_recipe():
    for g in blockspace.sample_distinct(3, 5) + [named("mobilenet_v3_small", 0.75)]:
        recipe = _recipe(g.to_dict())
        again = Recipe.from_dict(yaml.safe_load(yaml.safe_dump(recipe.to_dict())))
        assert again == recipe and Genotype.from_dict(again.model.genotype) == g
        assert again.fingerprint() == recipe.fingerprint()
    a, b = blockspace.sample_distinct(3, 2)
    assert _recipe(a.to_dict()).fingerprint() != _recipe(b.to_dict()).fingerprint()  # stage caches differ
    assert a.key() != b.key() and a.key() == Genotype.from_dict(a.to_dict()).key()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["stages"][1].update(kernel=4), r"recipe.model.genotype: genotype stage 2: kernel must be one of"),
    (lambda d: d["stages"][0].update(depth=0), r"genotype stage 1: depth must be an integer from 1 to 8; got 0"),
    (lambda d: d["stages"][2].update(act="gelu"), r"genotype stage 3: act must be one of relu, relu6, hswish"),
    (lambda d: d["stages"][0].update(colour=1), r"genotype stage 1: unknown key\(s\) colour"),
    (lambda d: d["stages"][4].pop("width"), r"genotype stage 5: missing width"),
    (lambda d: d.update(stages=[]), r"genotype: stages must be a non-empty list"),
    (lambda d: d.pop("head"), r"genotype: missing head"),
    (lambda d: d.update(size=3), r"genotype: unknown key\(s\) size"),
])
def test_a_bad_genotype_is_named_in_the_error(edit, message):
    d = blockspace.sample_distinct(0, 1)[0].to_dict()
    edit(d)
    with pytest.raises(ConfigError, match=message):
        _recipe(d)


def test_genotype_family_rules():
    g = blockspace.sample_distinct(0, 1)[0].to_dict()
    with pytest.raises(ConfigError, match="recipe.model.genotype: family mbconv needs a genotype"):
        Recipe.from_dict({"model": {"family": "mbconv", "alpha": 1.0}})
    with pytest.raises(ConfigError, match="recipe.model.alpha: a genotype's widths are absolute; set alpha to 1"):
        _recipe(g, alpha=0.5)
    with pytest.raises(ConfigError, match="only family mbconv takes a genotype .family is mobilenet_v2"):
        Recipe.from_dict({"model": {"family": "mobilenet_v2", "genotype": g}})


def test_block_space_choices():
    rng = random.Random(0)
    for _ in range(50):
        g = blockspace.sample(rng)
        assert len(g.stages) == len(blockspace.SKELETON) and g.downsampling == 16
        for slot, stage in zip(blockspace.SKELETON, g.stages):
            assert stage.stride == slot.stride and stage.kernel in blockspace.KERNELS
            assert stage.expand in blockspace.EXPANSIONS and stage.depth in blockspace.DEPTHS
        acts = [s.act for s in g.stages]
        assert acts == sorted(acts, key=lambda a: a == "hswish")  # relu stages, then hard-swish ones
        assert g.stem in blockspace.STEMS and g.head in blockspace.HEADS and g.head_fc in blockspace.HEAD_FCS
    frames = {(g.stem, g.head, g.head_fc) for g in blockspace.sample_distinct(0, 60)}
    assert len(frames) == 12  # every stem x head x dense choice is drawn
    assert blockspace.space_size(blockspace.FIRST) == 144 ** 5 * 3 * 12
    # The search's space: expansion 1, a 4-channel stem, and the stride-1 stage may be dropped.
    assert blockspace.space_size() == 192 ** 4 * 256 * 3 * 18
    assert len({g.key() for g in blockspace.sample_distinct(1, 30)}) == 30
    assert [g.key() for g in blockspace.sample_distinct(1, 5)] == [g.key() for g in blockspace.sample_distinct(1, 5)]
    with pytest.raises(ValueError, match="stage 2 expand must be one of"):
        blockspace.genotype_of([blockspace.StageChoice(3, 4, 1, 1.0, False),
                                blockspace.StageChoice(3, 5, 1, 1.0, False)] + [
                                   blockspace.StageChoice(3, 4, 1, 1.0, False)] * 3, 2)
    with pytest.raises(ValueError, match="head_fc must be one of"):
        blockspace.genotype_of([blockspace.StageChoice(3, 4, 1, 1.0, False)] * 5, 2, blockspace.Frame(head_fc=100))


def test_a_genotype_without_a_feature_map_is_rejected():
    g = Genotype(stem=16, stages=tuple(Stage(3, 4, 1, 16, stride=2) for _ in range(6)), head=64)
    with pytest.raises(ValueError, match="leaves no feature map"):
        build(g, (32, 32, 1), 10, first_stride=2)


def test_the_space_at_the_smallest_input_ends_at_1x1_with_stem_stride_2():
    # "Same" padding: 24 -> 12 -> 6 -> 3 -> 2 -> 1, so four stride-2 stages still fit.
    from models import MIN_INPUT_SIZE

    stages, hswish, frame = blockspace.least_work()
    model = build(blockspace.genotype_of(stages, hswish, frame), (MIN_INPUT_SIZE, MIN_INPUT_SIZE, 1), 10,
                  first_stride=2)
    assert model.get_layer("pool").input_shape[1:3] == (1, 1)


@pytest.mark.integration
@pytest.mark.device
def test_sampled_genotypes_qat_convert_to_int8_and_load_on_a_device(tmp_path):
    """Each of a seeded sample builds, takes QAT (and one training step), converts
    to full int8 with no float compute op, and runs on the emulated camera-a53
    (its tflite-runtime 2.14: the oldest runtime of the profiles) agreeing with the host."""
    import tf_keras as keras

    from models.quantize import quantize_model
    from pipeline.devices.check import run_device_check
    from pipeline.devices.runtime import ensure_runtime
    from pipeline.export.convert import convert_keras
    from pipeline.variants import VARIANTS
    from pipeline.tflite.reader import float_compute_ops, parse_tflite
    from pipeline.train.fit import setup_tensorflow

    setup_tensorflow(0)
    runtime = ensure_runtime()
    rng = np.random.default_rng(0)
    shape = (32, 32, 1)
    x = rng.random((8, *shape), dtype=np.float32)
    # 22 blocks in all, yet every kernel, expansion, depth, stem, head and dense width, and
    # squeeze-excite with and without hard-swish, is in the sample.
    for g in blockspace.sample_distinct(1822, 3):
        qat = quantize_model(build(g, shape, 10, first_stride=1), "default")
        qat.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy", run_eagerly=True)
        qat.train_on_batch(x[:4], rng.integers(0, 10, 4))
        tflite = convert_keras(qat, VARIANTS.get("int8-qat"), x, int8_io=False)
        assert float_compute_ops(parse_tflite(tflite, g.key())) == [], g.text()
        path = tmp_path / f"{g.key()}.tflite"
        path.write_bytes(tflite)
        result = run_device_check(path, "camera-a53", x, runtime=runtime)
        assert result.loaded, f"{g.text()}: {result.load_error}"
        assert result.agreement is not None and result.agreement.top1_agreement == 1.0, g.text()


@pytest.mark.integration
@pytest.mark.device
def test_a_named_genotype_costs_what_its_family_costs(latency_root, monkeypatch):
    """The cost tier measures a genotype by one emulated run, like a family x width
    candidate: MobileNetV3-Small-0.5 as a genotype executes exactly the family's
    instructions on pixel4, and a second call is served from the cache."""
    from pipeline.latency import reference
    from pipeline.search import cost as sc
    from pipeline.search.space import Candidate

    monkeypatch.setattr(reference, "cache_root", lambda: latency_root)
    recipe = Recipe.from_dict({"name": "g", "model": {"channels": 1, "first_stride": 1}})
    family = sc.candidate_cost(recipe, Candidate("mobilenet_v3_small", 0.5, 32), "pixel4", "int8-qat", 10)
    g = named("mobilenet_v3_small", 0.5)
    point = sc.genotype_cost(recipe, g, 32, "pixel4", "int8-qat", 10)
    assert point["candidate"] == f"{g.key()}-32" and not point["cached"] and point["loaded"]
    assert point["instructions"] == family["instructions"] > 0
    assert point["latency_ms"] == pytest.approx(family["latency_ms"])

    def no_emulation(*a, **k):
        raise AssertionError("the cost tier ran an emulation for a cached genotype")

    monkeypatch.setattr(sc, "measure_cost", no_emulation)
    again = sc.genotype_cost(recipe, Genotype.from_dict(g.to_dict()), 32, "pixel4", "int8-qat", 10)
    assert again["cached"] and again["instructions"] == point["instructions"]


def test_reference_model_spec_of_a_genotype():
    from pipeline.latency.reference import ModelSpec

    g = named("mobilenet_v3_small", 0.5)
    spec = ModelSpec("mbconv", 1.0, 32, 10, "int8", channels=1, first_stride=1, genotype=g.json())
    assert spec.label == f"mbconv-{g.key()}-32x32-10c-int8-1ch-s1" and spec.genotype_obj() == g
    assert spec.key()["spec"]["genotype"] == Genotype.from_dict(g.to_dict()).json()
    assert "genotype" not in ModelSpec("mobilenet_v2", 0.35, 32, 10).key()["spec"]  # old cache keys unchanged
    for kwargs in ({"family": "mbconv"}, {"family": "mobilenet_v2", "genotype": g.json()},
                   {"family": "mbconv", "alpha": 0.5, "genotype": g.json()}):
        with pytest.raises(ConfigError, match="a genotype goes with family mbconv at alpha 1"):
            ModelSpec(**kwargs)
    with pytest.raises(ConfigError, match="bad genotype: genotype stage 1: kernel"):
        ModelSpec("mbconv", genotype='{"stem": 16, "head": 64, "stages": [{"kernel": 2, "expand": 1, '
                                     '"depth": 1, "width": 16}]}')


# -- the per-block table ---------------------------------------------------------------

def test_a_network_is_its_parts_in_order():
    from models.genotype import parts

    g = blockspace.sample_distinct(2, 1)[0]
    ps = parts(g, (32, 32, 1), 10, first_stride=1)
    assert [p.kind for p in ps] == ["stem"] + ["block"] * g.blocks + ["head"]
    assert ps[0].input_shape == (32, 32, 1) and ps[1].input_shape == (32, 32, 16)
    assert ps[-1].input_shape == (2, 2, g.stages[-1].width) and ps[-1].get("classes") == 10
    for a, b in zip(ps[1:-1], ps[2:]):  # each part reads what the one before writes
        side = -(-a.input_shape[0] // a.get("stride"))
        assert b.input_shape == (side, side, a.get("filters"))
    # A part's key is what it computes, not where: the same block in two networks shares an entry.
    other = Genotype(g.stem, g.stages[:1], head=64)
    assert parts(other, (32, 32, 1), 10, 1)[1].key() == ps[1].key()
    # ... and parts that compute different things (shape or spec) have different keys.
    assert len({p.key() for p in ps}) == len({(p.kind, p.input_shape, p.spec) for p in ps})


def test_prediction_sums_the_parts_and_adds_the_overhead(monkeypatch):
    from models.genotype import parts
    from pipeline.search import blocktable as bt

    seen = []

    def fake_part_cost(part, device, log=None):
        seen.append(part.key())
        return {"instructions": 1000.0, "latency_cycles": 500.0, "latency_ms": 0.25, "cached": len(seen) > 3}

    monkeypatch.setattr(bt, "part_cost", fake_part_cost)
    g = blockspace.sample_distinct(2, 1)[0]
    geometry = bt.Geometry(32, 1, 1, 10)
    n = len(parts(g, geometry.input_shape, 10, 1))
    overhead = {"fixed": {"instructions": -50.0, "latency_cycles": 10.0, "latency_ms": 0.0},
                "per_part": {"instructions": -2.0, "latency_cycles": 0.0, "latency_ms": 0.0}}
    pred = bt.predict(g, geometry, "pixel4", overhead)
    assert pred == {"instructions": 998.0 * n - 50, "latency_cycles": 500.0 * n + 10, "latency_ms": 0.25 * n,
                    "parts": n, "parts_measured": 3}


def test_the_overhead_is_fitted_to_the_number_of_parts(monkeypatch):
    from pipeline.search import blocktable as bt

    # Stand-ins: a network of n parts costs 100 n summed, 100 n + 40 - 7 n in full.
    genotypes = blockspace.sample_distinct(4, 3)
    counts = {g.key(): g.blocks + 2 for g in genotypes}
    assert len(set(counts.values())) > 1
    monkeypatch.setattr(bt, "sum_of_parts", lambda g, *a, **k: {**{f: 100.0 * counts[g.key()] for f in bt.FIGURES},
                                                                "parts": counts[g.key()], "parts_measured": 0})
    monkeypatch.setattr(bt, "full_cost", lambda g, *a, **k: {f: 93.0 * counts[g.key()] + 40 for f in bt.FIGURES})
    overhead = bt.calibrate(genotypes, bt.Geometry(32), "pixel4")
    for f in bt.FIGURES:
        assert overhead["fixed"][f] == pytest.approx(40) and overhead["per_part"][f] == pytest.approx(-7)
    same = [genotypes[0]] * 2  # one part count: the mean difference, nothing per part
    overhead = bt.calibrate(same, bt.Geometry(32), "pixel4")
    assert overhead["per_part"]["instructions"] == 0.0
    assert overhead["fixed"]["instructions"] == pytest.approx(40 - 7 * counts[genotypes[0].key()])


@pytest.mark.integration
@pytest.mark.device
@pytest.mark.parametrize("size", [32, 24])  # the usual input and the smallest
def test_the_block_table_predicts_a_held_out_genotype(latency_root, monkeypatch, size):
    """One calibration genotype fixes the overhead; a held-out one's predicted cycles
    and instructions on pixel4 are within 5% of its full emulation, and a second
    prediction measures no part again: at 32 and at the input sizes under it.

    Both sizes use one latency cache (``latency_root``), as a search over sizes does:
    the parts that read the same 2x2 map at both (the head, the last stage's
    repeats) are measured once, and the hot blocks of the int8 kernels priced once."""
    from pipeline.latency import reference
    from pipeline.search import blocktable as bt

    monkeypatch.setattr(reference, "cache_root", lambda: latency_root)
    # 6 and 5 blocks (14 parts at 32, 11 more at 24): among the seeded pairs with fewest
    # parts to emulate, and the held-out one has squeeze-excite and hard-swish blocks.
    calibration, held = blockspace.sample_distinct(9036, 2)
    result = bt.validate([calibration], [held], bt.Geometry(size, 1, 1, 10), "pixel4")
    [row] = result["rows"]
    assert abs(row["latency_cycles"]["error_pct"]) < 5 and abs(row["instructions"]["error_pct"]) < 5, row
    again = bt.predict(held, bt.Geometry(size, 1, 1, 10), "pixel4", result["overhead"])
    assert again["parts_measured"] == 0
    assert again["latency_cycles"] == pytest.approx(row["latency_cycles"]["predicted"])
    assert "| " + held.key() + " |" in bt.markdown(result)


def test_the_block_table_command_names_an_unknown_device(capsys):
    from pipeline.search import blocktable as bt

    assert bt.main(["--device", "nope", "--calibrate", "1", "--held-out", "1"]) == 2
    assert "error: unknown device 'nope'; valid: camera-a53" in capsys.readouterr().err

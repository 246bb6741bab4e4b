"""Pruning and (prune-preserving) QAT stages on tiny models.

The chain float -> prune (50%, 1 epoch) -> PQAT (1 epoch) -> full-int8 TFLite runs once
per module (``chain``) on ``EVERY_KIND_GENOTYPE``, a block genotype built from the
families' own blocks; the tests then check sparsity at every step: Keras kernels after
pruning, the reloaded QAT ``.h5``, and the int8 flatbuffer. It holds every layer kind of
every registered family (``test_the_chained_genotype_holds_every_layer_kind``), which is
what pruning and quantization act on (each layer is wrapped by its kind), in about 45
layers: MobileNetV1 and V3-Small, which together hold the same kinds, trace 85 and 150.
The default recipe's MobileNetV2 runs the same chain in the session smoke build
(``tests/test_build.py``).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models import FAMILIES
from pipeline.recipe.training import GENOTYPE_FAMILY
from tests.helpers.stages import DATA, EVERY_KIND_GENOTYPE, FAMILY_CASES, KEPT, TARGET, make_recipe, quiet

ROOT = Path(__file__).resolve().parents[1]



# -- shared artifacts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def splits(shapes_splits):
    return shapes_splits(DATA)


@pytest.fixture(scope="module")
def float_model(workdir, splits):
    """``float_model(family, genotype=None)`` -> path of an (untrained) float model, built once
    per model (``genotype``: that of family "mbconv", default the tiny one)."""
    from pipeline.train.keras_io import save_keras
    from pipeline.train.stage import build_float_model
    from pipeline.train.fit import setup_tensorflow

    cache = {}

    def get(family, genotype=None):
        name = "every-kind" if genotype is EVERY_KIND_GENOTYPE else family
        if name not in cache:
            recipe = make_recipe(family, genotype=genotype)
            setup_tensorflow(recipe.seed)
            path = workdir / name / "float.h5"
            save_keras(build_float_model(recipe, splits.num_classes), path)
            cache[name] = path
        return cache[name]

    return get


@pytest.fixture(scope="module")
def chain(workdir, splits, float_model):
    """prune -> PQAT -> int8 of ``EVERY_KIND_GENOTYPE``: artifacts and metrics, run once."""
    from pipeline.export.convert import convert_keras
    from pipeline.train.keras_io import load_keras
    from pipeline.compress.prune import prune_model
    from pipeline.compress.qat import qat_model
    from pipeline.tflite.reader import parse_tflite
    from pipeline.variants import VARIANTS

    recipe = make_recipe(GENOTYPE_FAMILY, genotype=EVERY_KIND_GENOTYPE)
    src = float_model(GENOTYPE_FAMILY, EVERY_KIND_GENOTYPE)
    pruned, qat = src.parent / "pruned.h5", src.parent / "qat.h5"
    prune_m = prune_model(recipe, splits, src, pruned, quiet)
    qat_m = qat_model(recipe, splits, pruned, qat, quiet)
    reloaded = load_keras(qat, quantized=True)
    tflite = convert_keras(reloaded, VARIANTS.get("int8-qat"), splits.x_train[:32], int8_io=False)
    return SimpleNamespace(recipe=recipe, float=src, pruned=pruned, qat=qat, prune=prune_m, qat_metrics=qat_m,
                           qat_reloaded=reloaded, tflite=parse_tflite(tflite, "every-kind genotype int8"))


def _kernels(model):
    """(name, kind, kernel) of every Conv2D/DepthwiseConv2D/Dense of a plain Keras model."""
    import tf_keras as keras

    out = []
    for layer in model.layers:
        if type(layer) is keras.layers.DepthwiseConv2D:
            out.append((layer.name, "DepthwiseConv2D", layer.depthwise_kernel.numpy()))
        elif type(layer) in (keras.layers.Conv2D, keras.layers.Dense):
            out.append((layer.name, type(layer).__name__, layer.kernel.numpy()))
    return out


# -- unit ------------------------------------------------------------------------------


def test_every_family_has_a_case():
    missing = sorted(set(list(FAMILIES)) - set(FAMILY_CASES))
    stale = sorted(set(FAMILY_CASES) - set(list(FAMILIES)))
    assert not missing, f"registered families without a test case: {missing}"
    assert not stale, f"test cases for unregistered families: {stale}"


def _layer_kinds(model):
    """(layer class, activation) of every layer: what pruning and quantization act on (a ReLU
    layer's "activation" is its cap: ReLU6 and ReLU are quantized differently)."""
    kinds = set()
    for layer in model.layers:
        config = layer.get_config()
        activation = config.get("activation")
        if type(layer).__name__ == "ReLU":
            activation = f"max_value={config.get('max_value')}"
        kinds.add((type(layer).__name__, activation if isinstance(activation, str) else None))
    return kinds


def test_the_chained_genotype_holds_every_layer_kind():
    """The prune -> PQAT -> int8 tests run on ``EVERY_KIND_GENOTYPE`` only: every layer kind
    of every registered family occurs in it, so no family has a layer they skip."""
    from models import build_model, genotype

    kinds = {f: _layer_kinds(build_model(f, FAMILY_CASES[f]["alpha"], (32, 32, 1), 10, first_stride=1))
             for f in FAMILIES}
    chained = _layer_kinds(genotype.build(EVERY_KIND_GENOTYPE, (32, 32, 1), 10, first_stride=1))
    for family in FAMILIES:
        missing = kinds[family] - chained
        assert not missing, f"{family} has layer kinds the chained genotype lacks: {sorted(missing)}"
    assert {("DepthwiseConv2D", "linear"), ("Dense", "linear"), ("HardSwish", None), ("Multiply", None),
            ("Add", None)} <= chained


@pytest.mark.parametrize("total", [1, 2, 3, 4, 7, 10, 94, 999, 12345])
def test_pruning_steps_reach_the_target_before_the_end(total):
    from pipeline.compress.prune import pruning_steps

    end, frequency = pruning_steps(total)
    assert 1 <= end <= total          # tfmot's first step is 1: the target is reached in this run
    assert end % frequency == 0       # the mask is updated at end_step itself
    assert 1 <= frequency <= 100
    assert end >= int(0.8 * total) - frequency


def test_pruning_steps_examples():
    from pipeline.compress.prune import pruning_steps

    assert pruning_steps(4) == (3, 1)
    assert pruning_steps(94) == (70, 7)
    assert pruning_steps(100_000) == (80_000, 100)


def test_kernel_table_lists_depthwise_as_never_pruned():
    import tf_keras as keras

    from pipeline.compress.kernels import kernel_table, prunable_sparsity

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="c")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, name="d")(x)
    model = keras.Model(inputs, outputs)
    conv = model.get_layer("c")
    k = conv.kernel.numpy()
    k.reshape(-1)[: k.size // 2] = 0.0  # 18 of 36 zero
    conv.kernel.assign(k)

    rows = {r["layer"]: r for r in kernel_table(model, pruned=True)}
    assert list(rows) == ["c", "dw", "d"]
    assert rows["c"]["zeros"] == 0.5 and rows["c"]["pruned"] and rows["c"]["kind"] == "Conv2D"
    assert rows["dw"]["kind"] == "DepthwiseConv2D" and not rows["dw"]["pruned"]
    assert "never prunes DepthwiseConv2D" in rows["dw"]["note"]
    assert rows["d"]["zeros"] == 0.0 and rows["d"]["params"] == 8
    assert prunable_sparsity(list(rows.values())) == pytest.approx(18 / (36 + 8))
    assert not any(r["pruned"] for r in kernel_table(model, pruned=False))


# -- every layer kind: prune -> PQAT -> int8 ---------------------------------------------------


@pytest.mark.integration
def test_prune_reaches_target_in_conv_and_dense_only(chain):
    from pipeline.train.keras_io import load_keras

    result = chain
    kernels = _kernels(load_keras(result.pruned))
    rows = {r["layer"]: r for r in result.prune["layers"]}
    assert set(rows) == {name for name, _, _ in kernels}, "the metrics table must list every kernel"
    for name, kind, kernel in kernels:
        zeros = float(np.mean(kernel == 0))
        assert rows[name]["zeros"] == pytest.approx(zeros)
        if kind == "DepthwiseConv2D":
            assert zeros == 0.0, f"{name}: tfmot should leave depthwise kernels dense"
            assert not rows[name]["pruned"] and rows[name]["note"]
        else:
            assert abs(zeros - TARGET) <= 0.02, f"{name} ({kind}, {kernel.shape}): {zeros:.1%} zeros"
            assert rows[name]["pruned"]
    assert result.prune["sparsity"] == pytest.approx(TARGET, abs=0.01)
    assert result.prune["sparsity_all_kernels"] < result.prune["sparsity"]
    assert 0.0 <= result.prune["test_top1"] <= 100.0
    assert len(result.prune["history"]["loss"]) == 1
    json.dumps(result.prune)  # metrics go into manifest.json


@pytest.mark.integration
def test_pqat_keeps_sparsity_and_reloads(chain):
    from pipeline.compress.kernels import kernel_table, prunable_sparsity

    result = chain
    m = result.qat_metrics
    assert m["scheme"] == "pqat" and m["scheme_class"] == "Default8BitPrunePreserveQuantizeScheme"
    assert m["sparsity"] >= KEPT and m["sparsity_in"] >= KEPT
    assert m["reload_max_abs_diff"] <= 1e-5
    reloaded = result.qat_reloaded  # load_keras(qat.h5, quantized=True) in the fixture
    assert any(type(layer).__name__.startswith("QuantizeWrapper") for layer in reloaded.layers)
    assert prunable_sparsity(kernel_table(reloaded, pruned=True)) >= KEPT
    json.dumps(m)


@pytest.mark.integration
def test_pqat_int8_file_keeps_sparsity(chain):
    from pipeline.tflite.reader import PRUNABLE_OPS, float_compute_ops, weight_kernels, zero_fraction

    model = chain.tflite
    assert {op for op, _, _ in weight_kernels(model)} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert all(a.dtype == np.int8 for op, _, a in weight_kernels(model) if op in PRUNABLE_OPS)
    assert zero_fraction(model) >= KEPT
    assert zero_fraction(model, ("DEPTHWISE_CONV_2D",)) < 0.05
    assert float_compute_ops(model) == []


@pytest.mark.integration
def test_prune_is_deterministic(splits, chain):
    """The chain's pruning run again, after the rest of the chain ran in this process: the
    same history and the same weights."""
    from pipeline.train.keras_io import load_keras
    from pipeline.compress.prune import prune_model

    again_h5 = chain.pruned.parent / "pruned-again.h5"
    again = prune_model(chain.recipe, splits, chain.float, again_h5, quiet)
    assert again["history"] == chain.prune["history"]
    weights = [load_keras(p).get_weights() for p in (chain.pruned, again_h5)]
    assert len(weights[0]) == len(weights[1]) > 0
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)



@pytest.mark.integration
def test_a_stage_names_its_layers_as_in_a_fresh_process(float_model):
    """Keras numbers the layers it names itself per process (``quantize_layer``,
    ``quantize_layer_1``, ...), and those names reach ``qat.h5`` and the int8 file: a
    second build in one process (a search's) wrote other bytes than the first.
    ``setup_tensorflow``, which every stage calls first, restarts the numbering."""
    from pipeline.train.fit import setup_tensorflow
    from pipeline.train.keras_io import load_keras
    from pipeline.train.zoo import quantize_model

    names = []
    for _ in range(2):
        setup_tensorflow(0)
        names.append([layer.name for layer in quantize_model(load_keras(float_model(GENOTYPE_FAMILY))).layers])
    assert "quantize_layer" in names[0] and names[1] == names[0]


# -- the tiny genotype: 2:4, plain QAT --------------------------------------------------------


@pytest.mark.integration
def test_prune_2_by_4(splits, workdir, float_model):
    from pipeline.train.keras_io import load_keras
    from pipeline.compress.prune import prune_model

    family = GENOTYPE_FAMILY  # the tiny genotype: 1x1 and 3x3 convs, a dense classifier
    recipe = make_recipe(family, m_by_n=(2, 4))
    out = workdir / family / "pruned-2x4.h5"
    metrics = prune_model(recipe, splits, float_model(family), out, quiet)
    assert metrics["m_by_n"] == [2, 4] and metrics["target_sparsity"] == 0.5
    checked, dense = [], []
    for name, kind, kernel in _kernels(load_keras(out)):
        if kind == "DepthwiseConv2D":
            continue
        c_in = kernel.shape[-2]
        if c_in < 4:
            # tfmot pads a group to 4 with zeros: a 1-channel stem conv keeps its weights.
            dense.append(name)
            continue
        # TFLite layout [out, (h, w,) in]: groups of 4 consecutive input channels.
        groups = np.moveaxis(kernel, -1, 0).reshape(-1, c_in)
        groups = groups[:, : c_in - c_in % 4].reshape(-1, 4)
        zeros = np.sum(groups == 0, axis=1)
        assert zeros.min() >= 2, f"{name} ({kernel.shape}): a group of 4 has {zeros.min()} zeros"
        checked.append(name)
    assert dense == ["stem_conv"]
    # Every pointwise conv (block project/expand, squeeze-excite, head) and the classifier.
    assert checked == ["block1_project_conv", "block2_expand_conv", "block2_se_squeeze", "block2_se_excite",
                       "block2_project_conv", "head_conv", "logits"]


@pytest.mark.integration
def test_qat_default_scheme_from_float(splits, workdir, float_model):
    from pipeline.train.keras_io import load_keras
    from pipeline.compress.qat import qat_model

    family = GENOTYPE_FAMILY  # the tiny genotype
    recipe = make_recipe(family, prune=False)
    out = workdir / family / "qat-default.h5"
    m = qat_model(recipe, splits, float_model(family), out, quiet)
    assert m["scheme"] == "default" and m["scheme_class"] == "Default8BitQuantizeScheme"
    assert m["sparsity"] < 0.01 and m["reload_max_abs_diff"] <= 1e-5
    assert not any(r["pruned"] for r in m["layers"])
    assert 0.0 <= m["val_top1"] <= 100.0 and len(m["history"]["loss"]) == 1
    assert load_keras(out, quantized=True).predict(splits.x_val[:4], verbose=0).shape == (4, 10)


# -- distribution ---------------------------------------------------------------------------

# Prune then QAT in one process, as ``build`` runs them: each stage makes its own strategy.
_MIRRORED = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tests.helpers.stages import DATA, make_recipe
    from pipeline.train.fit import setup_tensorflow

    recipe = make_recipe("mbconv", strategy="mirrored", logical_devices=2)  # the tiny genotype
    # Split the CPU before anything makes TensorFlow create its devices.
    setup_tensorflow(recipe.seed, recipe.train.logical_devices)
    from pipeline.data import load_dataset
    from pipeline.train.keras_io import save_keras
    from pipeline.compress.prune import prune_model
    from pipeline.compress.qat import qat_model
    from pipeline.train.stage import build_float_model

    out = Path(sys.argv[1])
    splits = load_dataset(DATA, recipe.model.input_shape, recipe.seed)
    save_keras(build_float_model(recipe, splits.num_classes), out / "float.h5")
    m = prune_model(recipe, splits, out / "float.h5", out / "pruned.h5", lambda line: None)
    print("PRUNE " + json.dumps({"replicas": m["replicas"], "sparsity": m["sparsity"]}), flush=True)
    try:
        q = qat_model(recipe, splits, out / "pruned.h5", out / "qat.h5", lambda line: None)
        print("QAT " + json.dumps({"replicas": q["replicas"], "sparsity": q["sparsity"]}), flush=True)
    except Exception as exc:
        print("QAT " + json.dumps({"error": f"{type(exc).__name__}: {str(exc)[:500]}"}), flush=True)
""")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """Runs ``_MIRRORED`` in a fresh interpreter; returns {"PRUNE": ..., "QAT": ...}."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, str(tmp_path_factory.mktemp("mirrored"))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    results = {}
    for line in proc.stdout.splitlines():
        key, _, payload = line.partition(" ")
        if key in ("PRUNE", "QAT"):
            results[key] = json.loads(payload)
    assert proc.returncode == 0 and "PRUNE" in results, proc.stderr[-3000:]
    return results


@pytest.mark.integration
def test_prune_under_mirrored_strategy_on_two_logical_cpus(mirrored):
    assert mirrored["PRUNE"]["replicas"] == 2
    assert mirrored["PRUNE"]["sparsity"] == pytest.approx(TARGET, abs=0.01)


@pytest.mark.integration
def test_qat_after_prune_under_mirrored_strategy_in_one_process(mirrored):
    # One strategy per process (pipeline.train.fit.make_strategy): a second MirroredStrategy
    # would abort QAT's all-reduce (tensorflow/tensorflow#62790).
    assert not mirrored["QAT"].get("error"), mirrored["QAT"]["error"]
    assert mirrored["QAT"]["replicas"] == 2
    assert mirrored["QAT"]["sparsity"] >= KEPT


@pytest.mark.integration
def test_training_runs_with_the_op_determinism_the_manifest_records():
    from tensorflow.python.framework import config as tf_config

    from pipeline.build import reproducibility
    from pipeline.train.fit import setup_tensorflow

    setup_tensorflow(0)
    assert tf_config.is_op_determinism_enabled()
    record = reproducibility(0)
    assert record["determinism"]["tf_op_determinism"] is True
    from pipeline.latency.params import params_file

    path, source = params_file()
    assert record["latency_params"]["path"] == str(path) and record["latency_params"]["source"] == source
    assert len(record["latency_params"]["sha256"]) == 64

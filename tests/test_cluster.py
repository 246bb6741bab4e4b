"""Weight clustering and the chains cluster -> CQAT and prune -> cluster -> PCQAT.

On a tiny float model (conv, depthwise conv, pointwise conv, dense; 32x32x1, 128
training images): clustering keeps at most N values per kernel (per output channel
with ``per_channel``), the QAT stages keep clusters (and zeros, for PCQAT) into the
int8 flatbuffer, and the budgets gate on what the int8 file holds. Each chain runs
once per module and its artifacts are shared by the tests.
"""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.recipe.schema import DataConfig, Recipe
from pipeline.recipe.load import load_recipe
from pipeline.errors import ConfigError
from pipeline.variants import VARIANTS
from tests.helpers.stages import quiet

CLUSTERS = 8
DATA = DataConfig(dataset="shapes", train_samples=128, val_samples=32, test_samples=64)
# One row per registered variant whose source clusters; test_every_clustered_variant_has_a_chain
# fails when one is missing.
CHAIN_CASES = {"int8-cqat": "cqat", "int8-pcqat": "pcqat"}


def make_recipe(*, clusters=CLUSTERS, per_channel=False, init="kmeans_plus_plus"):
    """A recipe whose cluster, prune and QAT settings the stages read (one epoch each)."""
    base = Recipe(name="cluster-test", seed=0)
    r = dataclasses.replace
    return r(
        base,
        data=DATA,
        train=r(base.train, epochs=1, batch_size=32),
        prune=r(base.prune, enabled=True, target_sparsity=0.5, epochs=1),
        qat=r(base.qat, enabled=True, epochs=1),
        cluster=r(base.cluster, enabled=True, clusters=clusters, per_channel=per_channel, init=init,
                  epochs=1, learning_rate=1e-3),
        convert=r(base.convert, variants=("float32", "int8-qat", "int8-cqat", "int8-pcqat"),
                  calibration_samples=32, validation_samples=16),
        deploy_variant="int8-pcqat",
    ).validate()


def _tiny_model(num_classes):
    """conv 3x3 (72 weights) -> depthwise 3x3 -> conv 1x1 (128) -> dense (160)."""
    import tf_keras as keras

    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(8, 3, strides=4, use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(6.0, name="dw_relu")(x)
    x = keras.layers.Conv2D(16, 1, use_bias=False, name="pw_conv")(x)
    x = keras.layers.BatchNormalization(name="pw_bn")(x)
    x = keras.layers.ReLU(6.0, name="pw_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="tiny")


# -- shared artifacts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def splits(shapes_splits):
    return shapes_splits(DATA)


@pytest.fixture(scope="module")
def float_h5(workdir, splits):
    """The tiny model after one epoch of float training."""
    from pipeline.train.keras_io import save_keras
    from pipeline.train.fit import compile_model, setup_tensorflow

    setup_tensorflow(0)
    model = _tiny_model(splits.num_classes)
    compile_model(model, 3e-3, 4)
    model.fit(np.asarray(splits.x_train), splits.y_train, epochs=1, batch_size=32, verbose=0)
    path = workdir / "float.h5"
    save_keras(model, path)
    return path


def _int8(model_or_path, splits, name, base=None, scheme=None):
    """Converts like the build's int8 variants; returns (bytes, parsed model)."""
    from pipeline.compress.cluster import load_cluster_qat
    from pipeline.export.convert import convert_keras
    from pipeline.train.keras_io import load_keras
    from pipeline.tflite.reader import parse_tflite

    model = load_cluster_qat(base, model_or_path, scheme) if base else load_keras(model_or_path)
    data = convert_keras(model, VARIANTS.get(name), splits.x_train[:32], int8_io=False)
    return data, parse_tflite(data, name)


@pytest.fixture(scope="module")
def chains(workdir, splits, float_h5):
    """cluster -> CQAT and prune -> cluster -> PCQAT, each through int8, run once."""
    from pipeline.compress.cluster import cluster_model, cluster_qat_model
    from pipeline.compress.prune import prune_model

    recipe = make_recipe()
    d = workdir
    out = {}
    clustered = cluster_model(recipe, splits, float_h5, d / "cluster.h5", False, quiet)
    cqat = cluster_qat_model(recipe, splits, d / "cluster.h5", d / "cqat-weights.h5", "cqat", quiet)
    data, model = _int8(d / "cqat-weights.h5", splits, "int8-cqat", d / "cluster.h5", "cqat")
    out["cqat"] = SimpleNamespace(cluster=clustered, qat=cqat, tflite=model, data=data,
                                  clustered_h5=d / "cluster.h5", weights=d / "cqat-weights.h5")
    prune_model(recipe, splits, float_h5, d / "pruned.h5", quiet)
    pclustered = cluster_model(recipe, splits, d / "pruned.h5", d / "cluster-pruned.h5", True, quiet)
    pcqat = cluster_qat_model(recipe, splits, d / "cluster-pruned.h5", d / "pcqat-weights.h5", "pcqat", quiet)
    data, model = _int8(d / "pcqat-weights.h5", splits, "int8-pcqat", d / "cluster-pruned.h5", "pcqat")
    out["pcqat"] = SimpleNamespace(cluster=pclustered, qat=pcqat, tflite=model, data=data,
                                   clustered_h5=d / "cluster-pruned.h5", weights=d / "pcqat-weights.h5")
    return out


def _keras_kernels(path):
    from pipeline.train.keras_io import load_keras

    model = load_keras(path)
    out = {}
    for layer in model.layers:
        kernel = getattr(layer, "depthwise_kernel", None)
        kernel = kernel if kernel is not None else getattr(layer, "kernel", None)
        if kernel is not None:
            out[layer.name] = kernel.numpy()
    return out


# -- unit ------------------------------------------------------------------------------


def test_every_clustered_variant_has_a_chain():
    clustered = {name for name, v in VARIANTS.items() if v.source in ("cqat", "pcqat")}
    assert clustered == set(CHAIN_CASES)
    assert all(VARIANTS.get(name).source == source for name, source in CHAIN_CASES.items())


@pytest.mark.parametrize("change, message", [
    (dict(cluster={"enabled": False}), "recipe.convert.variants: 'int8-cqat' needs cluster.enabled: true"),
    (dict(prune={"enabled": False}), "recipe.convert.variants: 'int8-pcqat' needs prune.enabled: true"),
    (dict(convert={"variants": ["float32", "int8-qat"]}, deploy_variant="int8-qat"),
     "recipe.cluster.enabled: true, but no variant uses clustering: add int8-cqat or int8-pcqat"),
    (dict(cluster={"clusters": 1}), "recipe.cluster.clusters: expected an integer >= 2, got 1"),
    (dict(cluster={"clusters": True}), "recipe.cluster.clusters: expected an integer, got True"),
    (dict(cluster={"init": "kmeans"}), "recipe.cluster.init: expected one of kmeans_plus_plus, linear, "
                                       "random, density_based; got 'kmeans'"),
    (dict(cluster={"per_channel": "yes"}), "recipe.cluster.per_channel: expected true or false, got 'yes'"),
    (dict(cluster={"epochs": 0}), "recipe.cluster.epochs: expected a positive integer, got 0"),
    (dict(cluster={"centroids": 8}), "recipe.cluster: unknown key 'centroids'; valid keys: enabled, clusters"),
    (dict(budgets={"min_sparsity": {"int8-pcqat": 45}}),
     "recipe.budgets.min_sparsity.int8-pcqat: expected a fraction of the kernel values, e.g. 0.45 for 45% "
     "zeros (0 to 1), got 45"),
    (dict(budgets={"max_unique_values": {"int8-pcqat": 0}}),
     "recipe.budgets.max_unique_values.int8-pcqat: expected a count of distinct weight values"),
])
def test_bad_cluster_settings_name_the_problem(change, message):
    d = make_recipe().to_dict()
    for key, value in change.items():
        if isinstance(value, dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    with pytest.raises(ConfigError) as e:
        Recipe.from_dict(d)
    assert message in str(e.value)


def test_pcqat_recipe_loads_with_its_budgets():
    r = load_recipe("fashion-mnist-pcqat")
    assert {"int8-qat", "int8-cqat", "int8-pcqat"} <= set(r.convert.variants)
    assert r.cluster.enabled and r.cluster.clusters == 16 and r.prune.enabled
    assert r.budgets["min_sparsity"]["int8-pcqat"] >= 0.45
    assert r.budgets["max_unique_values"]["int8-pcqat"] <= 16
    s = load_recipe("fashion-mnist-pcqat", smoke=True)
    assert s.cluster.epochs == 1 and s.cluster.clusters == 16


def test_optimize_runs_only_the_stages_the_variants_need(tmp_path):
    from pipeline.build import compress_stages

    calls = []

    def stage(name, config, inputs, outputs, fn):
        calls.append((name, {k: p.name for k, p in inputs.items()}, {k: p.name for k, p in outputs.items()}))
        return {}

    def run(variants, **prune):
        calls.clear()
        r = dataclasses.replace
        base = make_recipe()
        recipe = r(base, prune=r(base.prune, **prune), convert=r(base.convert, variants=variants),
                   deploy_variant=variants[-1]).validate()
        sources = compress_stages(recipe, None, stage, tmp_path / "float.h5", tmp_path, quiet)
        return [c[0] for c in calls], {k: {n: p.name for n, p in v.items()} for k, v in sources.items()}

    names, sources = run(("float32", "int8-cqat"), enabled=False)
    assert names == ["cluster", "cqat"]
    assert sources["cqat"] == {"keras": "cqat-weights.h5", "base": "cluster.h5"}
    assert sources["float"] == {"keras": "float.h5"}
    names, sources = run(("float32", "int8-qat", "int8-cqat", "int8-pcqat"))
    assert names == ["prune", "qat", "cluster", "cqat", "cluster-pruned", "pcqat"]
    assert sources["pcqat"] == {"keras": "pcqat-weights.h5", "base": "cluster-pruned.h5"}
    assert ("cluster", {"keras": "float.h5"}, {"model": "cluster.h5"}) in calls  # CQAT starts unpruned
    assert ("cluster-pruned", {"keras": "pruned.h5"}, {"model": "cluster-pruned.h5"}) in calls
    names, _ = run(("float32", "int8-pcqat"))
    assert names == ["prune", "cluster-pruned", "pcqat"]  # no QAT model nobody converts


def test_cluster_qat_names_a_bad_scheme_before_training(tmp_path):
    from pipeline.compress.cluster import cluster_qat_model

    with pytest.raises(ConfigError, match="cluster-preserving QAT scheme: expected one of cqat, pcqat, got 'pqat'"):
        cluster_qat_model(make_recipe(), None, tmp_path / "cluster.h5", tmp_path / "w.h5", "pqat", quiet)


@pytest.mark.integration
def test_runner_refuses_a_file_that_does_not_reload_to_the_trained_model(splits, workdir, float_h5):
    from pipeline.compress.qat import QuantizationAware
    from pipeline.compress.runner import fine_tune
    from pipeline.train.keras_io import load_keras

    class ReloadsTheSource(QuantizationAware):
        def reload(self, src, out):
            return load_keras(src)  # the untrained float model: not what was trained

    technique = ReloadsTheSource(scheme="default", epochs=1, learning_rate=1e-3)
    out = workdir / "qat-bad-reload.h5"
    with pytest.raises(RuntimeError, match=r"QAT model .*qat-bad-reload.h5 does not reload faithfully: "
                                           r"outputs differ by .* on 32 validation images"):
        fine_tune(make_recipe(), splits, float_h5, out, technique, quiet)


# -- clustering -------------------------------------------------------------------------


@pytest.mark.integration
def test_clustering_leaves_at_most_n_values_per_kernel(chains):
    m = chains["cqat"].cluster
    kernels = _keras_kernels(chains["cqat"].clustered_h5)
    rows = {r["layer"]: r for r in m["layers"]}
    assert set(rows) == set(kernels) == {"stem_conv", "dw", "pw_conv", "logits"}
    for name in ("stem_conv", "pw_conv", "logits"):
        assert rows[name]["clustered"]
        assert len(np.unique(kernels[name])) == rows[name]["unique"] <= CLUSTERS, name
        assert rows[name]["unique"] >= CLUSTERS - 1, name  # the centroids are used, not collapsed
    assert not rows["dw"]["clustered"] and len(np.unique(kernels["dw"])) > CLUSTERS  # depthwise left alone
    assert m["max_unique"] <= CLUSTERS and m["clusters"] == CLUSTERS and m["init"] == "kmeans_plus_plus"
    assert not m["preserve_sparsity"] and 0.0 <= m["test_top1"] <= 100.0
    json.dumps(m)  # metrics go into manifest.json


@pytest.mark.integration
def test_per_channel_clustering_bounds_each_output_channel(splits, workdir, float_h5):
    from pipeline.compress.cluster import cluster_model

    recipe = make_recipe(clusters=4, per_channel=True, init="linear")
    out = workdir / "cluster-per-channel.h5"
    m = cluster_model(recipe, splits, float_h5, out, False, quiet)
    kernels = _keras_kernels(out)
    for name in ("stem_conv", "pw_conv"):  # Conv2D: 4 values per output channel (last axis) ...
        channels = kernels[name].reshape(-1, kernels[name].shape[-1]).T
        assert max(len(np.unique(c)) for c in channels) <= 4, name
        assert len(np.unique(kernels[name])) > 4, f"{name}: per-channel centroids should differ"
    assert len(np.unique(kernels["logits"])) <= 4  # ... Dense is clustered as a whole
    assert m["per_channel"] and m["max_unique"] <= 4 and m["init"] == "linear"


@pytest.mark.integration
def test_sparsity_preserving_clustering_keeps_zeros(chains):
    m = chains["pcqat"].cluster
    assert m["preserve_sparsity"] and m["sparsity_in"] >= 0.45
    assert m["sparsity"] >= m["sparsity_in"] - 1e-9
    kernels = _keras_kernels(chains["pcqat"].clustered_h5)
    for name in ("stem_conv", "pw_conv", "logits"):
        values = np.unique(kernels[name])
        assert 0.0 in values and len(values) <= CLUSTERS, name  # zero is one of the N centroids


# -- chains through int8 ------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("variant", sorted(CHAIN_CASES))
def test_chain_keeps_clusters_into_the_int8_file(variant, chains):
    from pipeline.export.evaluate import unique_values_per_kernel
    from pipeline.tflite.reader import PRUNABLE_OPS, float_compute_ops, weight_kernels, zero_fraction

    result = chains[CHAIN_CASES[variant]]
    q = result.qat
    assert q["reload_max_abs_diff"] <= 1e-5 and q["max_unique"] <= CLUSTERS
    assert q["scheme"] == CHAIN_CASES[variant]
    assert q["scheme_class"] == "Default8BitClusterPreserveQuantizeScheme"
    model = result.tflite
    assert float_compute_ops(model) == []
    kernels = [(op, a) for op, _, a in weight_kernels(model) if op in PRUNABLE_OPS]
    assert len(kernels) == 3 and all(a.dtype == np.int8 for _, a in kernels)
    per_channel = unique_values_per_kernel(model, PRUNABLE_OPS)
    assert max(per_channel.values()) <= CLUSTERS, per_channel
    if variant == "int8-pcqat":
        assert zero_fraction(model) >= 0.45
    else:
        assert zero_fraction(model) < 0.2


@pytest.mark.integration
def test_cluster_qat_reloads_only_by_rebuilding(chains, workdir):
    import tf_keras as keras

    from models.quantize import quantize_scope
    from pipeline.compress.cluster import load_cluster_qat
    from pipeline.compress.kernels import unique_table

    result = chains["cqat"]
    model = load_cluster_qat(result.clustered_h5, result.weights, "cqat")
    rows = {r["layer"]: r for r in unique_table(model, pruned=False)}
    # Trained, still clustered: CQAT trains a conv's centroids per output channel, a dense kernel's as a whole.
    assert all(rows[n]["unique_per_channel"] <= CLUSTERS for n in ("stem_conv", "pw_conv"))
    assert rows["logits"]["unique"] <= CLUSTERS
    # Why the stage saves weights only: tfmot cannot reload a whole CQAT model.
    full = workdir / "cqat-full.h5"
    model.save(str(full), save_format="h5")
    with quantize_scope(), pytest.raises(ValueError, match="[Ww]eight count mismatch"):
        keras.models.load_model(str(full), compile=False)


@pytest.fixture(scope="module")
def evaluated(chains, splits, workdir):
    """The evaluate stage's figures of each chain's int8 file."""
    from pipeline.export.evaluate import evaluate_tflite

    variants = {}
    for variant, source in CHAIN_CASES.items():
        path = workdir / f"{variant}.tflite"
        path.write_bytes(chains[source].data)
        variants[variant] = evaluate_tflite(path, splits.x_test, splits.y_test, splits.y_test)
    return variants


def summary_of(variants):
    """A build summary holding the evaluate stage's figures of ``variants`` (no conversion check run here)."""
    from pipeline.summary import BuildSummary, VariantSummary

    def typed(v, m):
        validation = {"validation_max_abs_diff": 0.0, "validation_agreement": 1.0, "validation_samples": 0,
                      "size_bytes": m["size_bytes"]}
        return VariantSummary.from_dict({"chain": "", **m, "validation": validation, "macs": 1, "path": ""}, v)

    return BuildSummary(recipe="t", float_top1=50.0, params=1, macs=1, deploy_variant="int8-pcqat", labels=(),
                        variants={v: typed(v, m) for v, m in variants.items()})


@pytest.mark.integration
def test_evaluate_and_budgets_gate_on_the_int8_pcqat_file(evaluated):
    from pipeline.gate.budgets import check_budgets, format_budget_table

    variants = evaluated
    pc = variants["int8-pcqat"]
    rows = {r["layer"]: r for r in pc["kernels"]}
    assert {"stem_conv", "dw", "pw_conv", "logits"} <= set(rows)
    assert rows["pw_conv"]["unique_per_channel"] <= CLUSTERS and rows["pw_conv"]["zeros"] >= 0.45
    assert pc["max_unique_per_kernel"] == max(rows[n]["unique_per_channel"] for n in ("stem_conv", "pw_conv",
                                                                                     "logits"))
    metrics = summary_of(variants)
    ok = check_budgets({"min_sparsity": {"int8-pcqat": 0.45}, "max_unique_values": {"int8-pcqat": CLUSTERS}},
                       metrics)
    assert [c.ok for c in ok] == [True, True]
    missed = check_budgets({"min_sparsity": {"int8-cqat": 0.45}, "max_unique_values": {"*": CLUSTERS - 4}},
                           metrics)
    assert not any(c.ok for c in missed) and len(missed) == 3
    table = format_budget_table(missed)
    assert "| min_sparsity | int8-cqat | >= 0.45 fraction |" in table and "MISSED" in table


@pytest.mark.integration
def test_summary_shows_distinct_values_per_kernel(evaluated):
    from pipeline.cli.tables import summary_table

    variants = {v: {**m, "chain": f"{CHAIN_CASES[v]} chain"} for v, m in evaluated.items()}
    text = summary_table(summary_of(variants))
    pc = variants["int8-pcqat"]
    assert (f"| int8-pcqat | pcqat chain | {pc['size_bytes'] / 1024:.1f} | {pc['gzip_bytes'] / 1024:.1f} | "
            f"{pc['top1']:.2f} |") in text
    assert f"| {pc['zeros_prunable']:.1%} | {pc['max_unique_per_kernel']} |" in text
    assert "| kernel | op | params | int8-cqat zeros / distinct | int8-pcqat zeros / distinct |" in text
    rows = {r["layer"]: r for r in pc["kernels"]}
    cq = {r["layer"]: r for r in variants["int8-cqat"]["kernels"]}
    assert (f"| pw_conv | CONV_2D | 128 | {cq['pw_conv']['zeros']:.0%} / {cq['pw_conv']['unique_per_channel']} | "
            f"{rows['pw_conv']['zeros']:.0%} / {rows['pw_conv']['unique_per_channel']} |") in text

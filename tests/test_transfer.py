"""Transfer learning: starting weights (model.init), few-shot training data, the two stages.

Keras-applications files are made here: each model is built with ``weights=None``
and saved under its official file name (what ``weights="imagenet"`` downloads),
so the loader is tested against the real layout without a download. Each file is
made once per module (the ``application`` fixture) and only read by the tests.
"""

import dataclasses
import json

import numpy as np
import pytest

import models
from pipeline.errors import ConfigError, DataError

#: Families and widths our zoo shares with Keras applications: every backbone weight maps.
SHARED = [("mobilenet_v1", a) for a in (0.25, 0.5, 0.75, 1.0)] + \
         [("mobilenet_v2", a) for a in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)] + \
         [("mobilenet_v3_small", 1.0), ("mobilenet_v3_large", 1.0)]
#: Keras-applications files whose architecture differs from ours (the loader refuses them).
NOT_SHARED = [("mobilenet_v3_small", 0.75), ("mobilenet_v3_large", 0.75)]
LABELS = tuple(str(i) for i in range(10))


def official_name(family: str, alpha: float, top: bool) -> str:
    """The file name tf_keras.applications downloads for these weights."""
    if family == "mobilenet_v1":
        text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
        return f"mobilenet_{text}_224_tf{'' if top else '_no_top'}.h5"
    if family == "mobilenet_v2":
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224{'' if top else '_no_top'}.h5"
    variant = family.rsplit("_", 1)[1]
    return f"weights_mobilenet_v3_{variant}_224_{alpha}_float{'' if top else '_no_top_v2'}.h5"


def keras_application(family: str, alpha: float, top: bool, **kwargs):
    from pipeline.native import tf_environment

    tf_environment()
    import tf_keras as keras

    builder = {"mobilenet_v1": keras.applications.MobileNet, "mobilenet_v2": keras.applications.MobileNetV2,
               "mobilenet_v3_small": keras.applications.MobileNetV3Small,
               "mobilenet_v3_large": keras.applications.MobileNetV3Large}[family]
    return builder(weights=None, include_top=top, alpha=alpha, input_shape=(32, 32, 3), **kwargs)


def save_application(tmp_path, family, alpha, top=False, randomize_bn=False, **kwargs):
    """A Keras-applications weights file in the official layout; returns (path, keras model)."""
    k = keras_application(family, alpha, top, **kwargs)
    if randomize_bn:  # fresh BN layers have mean 0, variance 1: make the fold visible
        rng = np.random.default_rng(0)
        for layer in k.layers:
            if type(layer).__name__ == "BatchNormalization":
                g, b, m, v = layer.get_weights()
                layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                                   rng.normal(0, 0.5, m.shape), rng.uniform(0.5, 2.0, v.shape)])
    path = tmp_path / official_name(family, alpha, top)
    k.save_weights(str(path))
    return path, k


def ours(family, alpha, channels=1, first_stride=1, classes=10):
    return models.build_model(family, alpha, (32, 32, channels), classes, first_stride=first_stride)


def load(model, path, labels=LABELS):
    from pipeline.train.init_weights import load_init, read_source

    return load_init(model, read_source(str(path)), labels)


@pytest.fixture(scope="module")
def application(tmp_path_factory):
    """``application(family, alpha, top=False, randomize_bn=False)``: :func:`save_application`'s
    (path, Keras model), made once per module; the tests read the file and the model, none
    changes them."""
    root = tmp_path_factory.mktemp("applications")
    made = {}

    def get(family, alpha, top=False, randomize_bn=False):
        key = (family, alpha, top, randomize_bn)
        if key not in made:
            folder = root / str(len(made))
            folder.mkdir()
            made[key] = save_application(folder, family, alpha, top, randomize_bn)
        return made[key]

    return get


@pytest.fixture(scope="module")
def v2_narrow():
    """Our MobileNetV2 at width 0.35, for the tests that only read its layers or are refused
    before any weight is set."""
    return ours("mobilenet_v2", 0.35)


def test_every_family_is_classified_shared_or_not():
    listed = {f for f, _ in SHARED + NOT_SHARED}
    assert listed == set(models.FAMILIES), f"families without a transfer test: {set(models.FAMILIES) - listed}"


@pytest.mark.parametrize("family,alpha", SHARED)
def test_keras_application_backbone_maps_completely(application, family, alpha):
    path, k = application(family, alpha)
    model = ours(family, alpha)
    report = load(model, path)
    assert report.backbone_loaded == 1.0
    assert report.source["kind"] == "keras-applications" and report.source["family"] == family
    assert set(report.new) == ({"logits", "head_fc"} if "v3" in family else {"logits"})
    weighted = [x.name for x in model.layers if x.weights and x.name not in ("logits", "head_fc")]
    assert [o for o, _ in report.loaded] == weighted
    # Every loaded layer other than the stem holds the file's numbers unchanged.
    for mine, theirs in report.loaded:
        if not mine.startswith("stem"):
            for a, b in zip(model.get_layer(mine).get_weights(), k.get_layer(theirs).get_weights()):
                np.testing.assert_array_equal(a, b.reshape(a.shape))


@pytest.mark.parametrize("family", ["mobilenet_v2", "mobilenet_v3_small"])
def test_file_with_top_loads_the_layer_after_the_pool_but_never_the_imagenet_classifier(application, family):
    path, k = application(family, 1.0, top=True)
    model = ours(family, 1.0, classes=1000)
    report = load(model, path, tuple(str(i) for i in range(1000)))
    assert report.new == ("logits",)
    if "v3" in family:
        np.testing.assert_array_equal(model.get_layer("head_fc").get_weights()[0],
                                      k.get_layer("Conv_2").get_weights()[0][0, 0])


@pytest.mark.parametrize("family,alpha", NOT_SHARED)
def test_keras_v3_below_width_one_is_refused_naming_the_layer(application, family, alpha):
    path, _ = application(family, alpha)
    with pytest.raises(ConfigError, match=r"layer 'block2_expand_conv' \(from 'expanded_conv_1/expand'.*"
                                          r"only width-1.0 V3 files map"):
        load(ours(family, alpha), path)


def test_wrong_width_is_refused_naming_the_layer(application, v2_narrow):
    path, _ = application("mobilenet_v2", 1.0)
    with pytest.raises(ConfigError, match=r"layer 'stem_conv' \(from 'Conv1'.*shape \[\(3, 3, 1, 32\)\].*"
                                          r"\[\(3, 3, 1, 16\)\].*another width.*file name says width 1"):
        load(v2_narrow, path)


def test_wrong_family_is_refused_naming_a_layer(application, v2_narrow):
    path, _ = application("mobilenet_v1", 0.25)
    with pytest.raises(ConfigError, match=r"holds mobilenet_v1 weights \(e\.g\. layer 'conv1'\), but "
                                          r"recipe\.model\.family is mobilenet_v2"):
        load(v2_narrow, path)


def test_minimalistic_v3_is_refused(tmp_path):
    path, _ = save_application(tmp_path, "mobilenet_v3_small", 1.0, minimalistic=True)
    path = path.rename(tmp_path / "weights_mobilenet_v3_small_minimalistic_224_1.0_float_no_top_v2.h5")
    with pytest.raises(ConfigError, match="minimalistic MobileNetV3"):
        load(ours("mobilenet_v3_small", 1.0), path)


@pytest.mark.parametrize("channels", [1, 3])
def test_stem_computes_what_the_keras_model_computes_on_its_own_input_range(application, channels):
    """Grey from an RGB file (kernel summed over colour) and [0, 1] input against Keras' [-1, 1]:
    the stem's batch-norm output is the file model's, away from the padded border."""
    from pipeline.native import tf_environment

    tf_environment()
    import tf_keras as keras

    path, k = application("mobilenet_v1", 0.25, randomize_bn=True)
    model = ours("mobilenet_v1", 0.25, channels=channels, first_stride=2)
    report = load(model, path)
    assert any("[-1, 1]" in note for note in report.adapted)
    assert any("grey" in note for note in report.adapted) == (channels == 1)
    x = np.random.default_rng(1).random((2, 32, 32, channels), np.float32)
    rgb = np.repeat(x, 3, axis=-1) if channels == 1 else x
    mine = keras.Model(model.input, model.get_layer("stem_bn").output)(x, training=False).numpy()
    theirs = keras.Model(k.input, k.get_layer("conv1_bn").output)(rgb * 2 - 1, training=False).numpy()
    # "same" padding at stride 2 on an even size pads bottom and right only.
    np.testing.assert_allclose(mine[:, :-1, :-1], theirs[:, :-1, :-1], atol=2e-4, rtol=1e-4)


def _fake_build(tmp_path, model, labels):
    from pipeline.train.keras_io import save_keras

    root = tmp_path / "previous"
    save_keras(model, root / "keras" / "float.h5")
    (root / "manifest.json").write_text(json.dumps({"stages": {}, "data": {"labels": list(labels)}}))
    return root


@pytest.fixture(scope="module")
def rgb_build(tmp_path_factory):
    """A previous build of our MobileNetV3-Small at width 0.5 on RGB input, for labels
    ``LABELS``: (its directory, the model it saved)."""
    source = ours("mobilenet_v3_small", 0.5, channels=3)
    return _fake_build(tmp_path_factory.mktemp("rgb-build"), source, LABELS), source


@pytest.mark.parametrize("labels,kept", [(LABELS, True), (tuple("abcdefghij"), False)])
def test_previous_build_loads_layer_by_layer_and_keeps_the_classifier_only_for_its_labels(rgb_build, labels,
                                                                                          kept):
    root, source = rgb_build
    model = ours("mobilenet_v3_small", 0.5, channels=1)
    report = load(model, root, labels)
    assert report.source["kind"] == "build" and report.backbone_loaded == 1.0
    assert report.new == (() if kept else ("logits",))
    assert report.adapted == ("grey input: stem_conv summed over the file's 3 input channels",)
    np.testing.assert_allclose(model.get_layer("stem_conv").get_weights()[0],
                               source.get_layer("stem_conv").get_weights()[0].sum(axis=2, keepdims=True))
    for name in ("block5_se_squeeze", "head_fc") + (("logits",) if kept else ()):
        for a, b in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_previous_build_of_another_width_is_refused_naming_the_layer(tmp_path):
    root = _fake_build(tmp_path, ours("mobilenet_v1", 0.5), LABELS)
    with pytest.raises(ConfigError, match=r"layer 'stem_conv' \(from 'stem_conv'"):
        load(ours("mobilenet_v1", 0.25), root)


def test_init_path_errors(tmp_path):
    from pipeline.train.init_weights import resolve_init

    with pytest.raises(ConfigError, match=r"recipe\.model\.init: .*nowhere does not exist"):
        resolve_init(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"is a directory without keras/float\.h5"):
        resolve_init(str(tmp_path))
    (tmp_path / "weights.keras").write_text("x")
    with pytest.raises(ConfigError, match=r"not an \.h5 file"):
        resolve_init(str(tmp_path / "weights.keras"))


def test_finetune_layers_top_blocks(v2_narrow):
    from pipeline.train.transfer import finetune_layers

    model = v2_narrow
    names = finetune_layers(model, 2)
    assert "block16_expand_conv" in names and "block17_project_bn" in names
    assert "head_conv" in names and "logits" in names
    assert not any(n.startswith(("stem", "block15_")) for n in names)
    assert finetune_layers(model, "all") == [x.name for x in model.layers]


# -- few-shot data ----------------------------------------------------------------


def _digits(**kwargs):
    from pipeline.data import load_dataset
    from pipeline.recipe.schema import DataConfig

    return load_dataset(DataConfig(dataset="digits", **kwargs), (32, 32, 1), 0)


def test_train_per_class_is_deterministic_nested_and_leaves_val_and_test_alone():
    full, five, ten, again = _digits(), _digits(train_per_class=5), _digits(train_per_class=10), \
        _digits(train_per_class=10)
    assert np.bincount(five.y_train).tolist() == [5] * 10
    assert five.report["counts"]["train"] == {lab: 5 for lab in five.labels}
    np.testing.assert_array_equal(ten.x_train, again.x_train)
    assert {x.tobytes() for x in five.x_train} <= {x.tobytes() for x in ten.x_train}
    for split in ("val", "test"):
        np.testing.assert_array_equal(ten.split(split)[0], full.split(split)[0])
        np.testing.assert_array_equal(ten.split(split)[1], full.split(split)[1])


def test_train_per_class_beyond_a_class_is_a_data_error():
    with pytest.raises(DataError, match=r"data\.train_per_class: 500 training images of each class asked, "
                                        r"but class '\d' has \d+ in the train split"):
        _digits(train_per_class=500)


def test_transfer_recipe_is_validated():
    from pipeline.recipe.schema import Recipe

    with pytest.raises(ConfigError, match=r"recipe\.transfer\.finetune_blocks: expected 'all' or a positive integer "
                                          r"\(or a list of them\), got 0"):
        Recipe.from_dict({"transfer": {"finetune_blocks": [4, 0]}})
    with pytest.raises(ConfigError, match=r"recipe\.transfer\.finetune_learning_rate: expected a positive number"):
        Recipe.from_dict({"transfer": {"finetune_learning_rate": [1e-3, -1]}})
    with pytest.raises(ConfigError, match=r"recipe\.transfer\.finetune_learning_rate: duplicate entries"):
        Recipe.from_dict({"transfer": {"finetune_learning_rate": [1e-3, 0.001]}})
    with pytest.raises(ConfigError, match=r"recipe\.transfer\.choose: expected one of auto, best, transfer, scratch; "
                                          r"got 'both'"):
        Recipe.from_dict({"transfer": {"choose": "both"}})
    with pytest.raises(ConfigError, match=r"recipe\.transfer\.head_epochs: expected a positive integer or 'auto'"):
        Recipe.from_dict({"transfer": {"head_epochs": 0}})
    with pytest.raises(ConfigError, match=r"recipe\.data\.train_per_class: expected a positive integer"):
        Recipe.from_dict({"data": {"train_per_class": 0}})
    r = Recipe.from_dict({"model": {"init": "build/x"}, "transfer": {"finetune_blocks": 3}})
    assert Recipe.from_dict(r.to_dict()) == r and r.smoke().transfer.head_epochs == 1
    # Lists round-trip; every (learning rate, blocks) pair is a candidate; the smoke form tries the first.
    r = Recipe.from_dict({"model": {"init": "build/x"},
                          "transfer": {"finetune_learning_rate": [3e-4, 1e-3], "finetune_blocks": ["all", 4]}})
    assert Recipe.from_dict(r.to_dict()) == r and r.transfer.finetune_blocks == ("all", 4)
    assert r.transfer.candidates() == [(3e-4, "all"), (3e-4, 4), (1e-3, "all"), (1e-3, 4)]
    assert r.smoke().transfer.candidates() == [(3e-4, "all")]


# -- the stages, end to end -------------------------------------------------------------


@pytest.mark.integration
def test_build_from_a_previous_build_records_both_stages_and_the_start_file(tmp_path):
    from pipeline.build import build
    from pipeline.recipe.schema import Recipe
    from pipeline.store.atomic import sha256_file

    root = _fake_build(tmp_path, ours("mobilenet_v1", 0.25), tuple("abcdefghij"))
    recipe = Recipe.from_dict({
        "name": "transfer-smoke", "data": {"dataset": "digits", "train_per_class": 3, "val_samples": 40,
                                           "test_samples": 40},
        "model": {"family": "mobilenet_v1", "alpha": 0.25, "input_size": 32, "channels": 1, "init": str(root)},
        "train": {"batch_size": 16},
        # One fine-tune, no scratch model beside it (tests/test_transfer_choice.py has both).
        "transfer": {"head_epochs": 1, "finetune_epochs": 1, "finetune_learning_rate": 3e-4,
                     "finetune_blocks": "all", "choose": "transfer"},
        "qat": {"enabled": False}, "convert": {"variants": ["float32"]},
        "deploy_variant": "float32"})
    out = tmp_path / "b"
    result = build(recipe, out=out, log=lambda _: None, run_devices=False)
    manifest = json.loads((out / "manifest.json").read_text())
    head, tuned = manifest["stages"]["transfer-head"], manifest["stages"]["transfer-finetune"]
    assert "train" not in manifest["stages"]
    sha = sha256_file(root / "keras" / "float.h5")
    assert head["inputs"]["init"]["sha256"] == sha
    assert head["metrics"]["transfer"]["backbone_loaded"] == 1.0 and head["metrics"]["transfer"]["new"] == ["logits"]
    assert tuned["outputs"]["model"]["path"] == "keras/float.h5"
    assert result.summary.init.sha256 == sha and result.summary.init.kind == "build"
    assert sha in (out / "bundle" / "MODEL_CARD.md").read_text()
    assert json.loads((out / "bundle" / "metadata.json").read_text())["init"]["sha256"] == sha
    # The report shows both stages' curves; a compare reads the float figures from the manifest.
    from pipeline.gate.snapshot import load_snapshot
    from pipeline.publish.records import read_build_record

    assert {"transfer-head", "transfer-finetune"} <= {c.stage for c in read_build_record(out).curves}
    assert load_snapshot(out / "manifest.json").float_top1 == pytest.approx(result.summary.float_top1)
    again = build(recipe, out=out, log=lambda _: None, run_devices=False)
    assert again.stages_run == []
    # A changed start file is another input: both stages run again.
    from pipeline.train.keras_io import save_keras

    save_keras(ours("mobilenet_v1", 0.25), root / "keras" / "float.h5")
    third = build(dataclasses.replace(recipe), out=out, log=lambda _: None, run_devices=False)
    assert third.stages_run[:2] == ["transfer-head", "transfer-finetune"]


def test_fewshot_table_rows_and_a_refused_conversion():
    from pipeline.recipe.schema import Recipe
    from pipeline.transfer_table import FewShotRow, fewshot_markdown, fewshot_recipe, fewshot_table

    r = Recipe.from_dict({"name": "t", "model": {"init": "build/x"}})
    assert fewshot_recipe(r, 5, "scratch").model.init is None
    assert fewshot_recipe(r, 5, "transfer").data.train_per_class == 5
    assert fewshot_recipe(r, 5, "transfer").name == "t-n5-transfer"
    # The transfer row is the transferred model whatever the recipe's choose says.
    assert fewshot_recipe(r, 5, "transfer").transfer.choose == "transfer"
    rows = [FewShotRow(10, "scratch", 9.8, 11.0, None, "int8-qat", None, None, "b/s", "agrees on 71.9%"),
            FewShotRow(10, "transfer", 74.7, 70.0, 74.5, "int8-qat", None, None, "b/t"),
            FewShotRow(20, "scratch", 80.1, 81.0, 80.0, "int8-qat", None, None, "b/s20"),
            FewShotRow(20, "transfer", 78.0, 79.5, 77.9, "int8-qat", None, None, "b/t20")]
    table = fewshot_markdown(rows)
    assert ("| 10 | 9.8 | 74.7 | refused (int8 disagrees with float) | 74.5 | - | -0.2 | transfer (70.0 val): 74.5 |"
            in table)
    # At 20 per class scratch validates higher: choose: best keeps it.
    assert "| 20 | 80.1 | 78.0 | 80.0 | 77.9 | -2.1 | -0.1 | scratch (81.0 val): 80.0 |" in table
    with pytest.raises(ConfigError, match=r"recipe\.model\.init: the scratch/transfer table needs"):
        fewshot_table(Recipe(), [5], "build")

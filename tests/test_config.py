"""Recipes: strict loading, round trip, smoke form, error messages."""

import pytest
import yaml

from pipeline.recipe.schema import Recipe
from pipeline.recipe.load import load_recipe
from pipeline.errors import ConfigError

EMBEDDED = ["default", "fashion-mnist", "fashion-mnist-pcqat"]


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_recipes_load_and_round_trip(name):
    r = load_recipe(name)
    assert Recipe.from_dict(r.to_dict()) == r
    assert r.fingerprint() == Recipe.from_dict(yaml.safe_load(yaml.safe_dump(r.to_dict()))).fingerprint()


@pytest.mark.parametrize("name", EMBEDDED)
def test_smoke_form_is_tiny(name):
    s = load_recipe(name, smoke=True)
    assert s.smoke_form and s.build_name == f"{s.name}-smoke"
    assert s.model.input_size == 32 and s.train.epochs == 1
    assert s.data.train_samples <= 256 and s.data.test_samples <= 128


def test_recipes_start_with_the_command_that_runs_them():
    from pathlib import Path

    for p in (Path(__file__).parents[1] / "pipeline" / "recipe" / "presets").glob("*.yaml"):
        assert p.read_text().startswith("# mobile-model build"), p


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("name: x\nepochs: 3\n", "recipe: unknown key 'epochs'; valid keys: name, seed, data, model"),
    ("model: {famly: mobilenet_v2}\n", "recipe.model: unknown key 'famly'; valid keys: family, alpha"),
    ("model: {family: resnet50}\n", "recipe.model.family: expected one of mobilenet_v1, mobilenet_v2, "
                                    "mobilenet_v3_small, mobilenet_v3_large, mbconv; got 'resnet50'"),
    ("model: {input_size: 23}\n", "recipe.model.input_size: expected an integer >= 24 (the smallest input every "
                                   "model family takes), got 23"),
    ("model: {channels: 2}\n", "recipe.model.channels: expected one of 1, 3; got 2"),
    ("train: {epochs: 0}\n", "recipe.train.epochs: expected a positive integer or 'auto', got 0"),
    ("train: {epochs: three}\n", "recipe.train.epochs: expected a positive integer or 'auto', got 'three'"),
    ("train: {strategy: tpu}\n", "recipe.train.strategy: expected one of default, mirrored, multi-worker"),
    ("data: {dataset: imagenet}\n", "recipe.data.dataset: expected one of shapes, fashion-mnist, digits, folder"),
    ("data: {dataset: folder}\n", "recipe.data.path: the 'folder' data set needs a path"),
    ("convert: {variants: [int4]}\n", "recipe.convert.variants: expected one of float32, float16"),
    ("prune: {target_sparsity: 1.5}\n", "recipe.prune.target_sparsity: expected 0 < value < 1, got 1.5"),
    ("prune: {m_by_n: [4, 2]}\n", "recipe.prune.m_by_n: expected [M, N] with 0 < M < N"),
    ("budgets: {max_speed: {int8-qat: 1}}\n", "recipe.budgets: unknown budget 'max_speed'; valid: max_top1_drop"),
    ("budgets: {max_size_kb: {int4: 1}}\n", "recipe.budgets.max_size_kb: 'int4' is not a variant this recipe builds"),
    ("budgets: {max_size_kb: {int8-qat: big}}\n", "recipe.budgets.max_size_kb.int8-qat: expected a number, got 'big'"),
    ("deploy_variant: int3\n", "recipe.deploy_variant: expected one of float32"),
    ("qat: {enabled: false}\n", "recipe.convert.variants: 'int8-qat' needs qat.enabled: true"),
    ("- a\n- b\n", "recipe: expected a mapping, got list"),
    ("model: [\n", "not valid YAML"),
    ("", "file is empty"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_recipe(_write(tmp_path, text))
    assert message in str(e.value)


@pytest.mark.parametrize("size", [24, 28])
def test_input_sizes_down_to_the_models_minimum_are_accepted(tmp_path, size):
    from models import MIN_INPUT_SIZE

    assert MIN_INPUT_SIZE == 24
    r = load_recipe(_write(tmp_path, f"model: {{input_size: {size}}}\nsearch: {{input_sizes: [{size}, 32]}}\n"))
    assert r.model.input_shape == (size, size, 1) and r.search.input_sizes == (size, 32)


def test_missing_recipe_lists_embedded(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe file not found: .*nope.yaml \(embedded recipes: default, "):
        load_recipe(tmp_path / "nope.yaml")


def test_configs_are_frozen():
    r = load_recipe("default")
    with pytest.raises(Exception):
        r.model.alpha = 1.0  # type: ignore[misc]


def test_the_default_recipe_takes_every_image_of_a_real_data_set():
    """A user's folder of images replaces only ``data:``: no split is capped (3000 was)."""
    from pipeline.data.shapes import SHAPES_COUNTS

    default = load_recipe("default").to_dict()
    for data in ({"dataset": "folder", "path": "imgs"},
                 {**default["data"], "dataset": "folder", "path": "imgs"}):
        recipe = Recipe.from_dict({**default, "data": data})
        assert (recipe.data.train_samples, recipe.data.val_samples, recipe.data.test_samples) == (None,) * 3
    assert SHAPES_COUNTS == {"train": 3000, "val": 500, "test": 1000}  # what the generated set renders instead


def test_the_smoke_form_keeps_cost_budgets_and_drops_accuracy_floors():
    full = load_recipe("default")
    smoke = full.smoke()
    assert "min_device_top1" in full.budgets
    assert set(smoke.budgets) == set(full.budgets) - {"min_top1", "min_device_top1"}
    for key in ("max_latency_ms", "max_minstructions", "max_memory_mb", "max_top1_drop", "max_size_ratio"):
        assert smoke.budgets[key] == full.budgets[key]

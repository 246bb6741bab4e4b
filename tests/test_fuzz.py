"""Fuzzing model loading and recipe parsing (Hypothesis byte and value mutation).

The property everywhere: hostile input ends in a :class:`MobileModelError` (one
clear message) or a valid result; never another exception, a crash or a hang.

Targets:

* the bounds-checked TFLite reader (:func:`parse_tflite`) and the analyses run on
  what it returns, over byte mutations of two tiny real models
  (``tests/fuzz_regressions/seed_*.tflite``);
* the isolated loader (:func:`pipeline.tflite.sandbox.load_check`), which hands the
  mutants the reader accepts to LiteRT in a child process (fewer examples: each
  spawns a process);
* recipe parsing: mutated YAML text through :func:`load_recipe`, mutated plain
  data through :meth:`Recipe.from_dict` (a recipe that loads must round-trip).

Budgets: ``make test`` runs a few hundred examples per target, derandomized so CI
is repeatable; ``make fuzz`` sets ``MOBILE_MODEL_FUZZ_EXAMPLES`` (and random
seeds) for a longer search and prints Hypothesis' statistics. Every input that
ever broke the property is kept in ``tests/fuzz_regressions/`` and replayed by
the regression tests below.
"""

import os
import struct
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.build.detect_config import DetectConfig, load_detect_recipe
from pipeline.recipe.schema import Recipe
from pipeline.recipe.load import load_recipe, recipe_task
from pipeline.errors import ConfigError, ModelFileError
from pipeline.tflite.reader import float_compute_ops, parse_tflite, weight_kernels, zero_fraction

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "fuzz_regressions"
SEEDS = {p.stem: p.read_bytes() for p in sorted(REGRESSIONS.glob("seed_*.tflite"))}
RECIPE_TEXTS = {p.name: p.read_text() for p in sorted((HERE.parent / "pipeline" / "recipe" / "presets").glob("*.yaml"))}

#: Examples per target: MOBILE_MODEL_FUZZ_EXAMPLES scales them (``make fuzz``).
EXAMPLES = int(os.environ.get("MOBILE_MODEL_FUZZ_EXAMPLES", "200"))
LOADER_EXAMPLES = max(6, EXAMPLES // 50)
RANDOM = bool(os.environ.get("MOBILE_MODEL_FUZZ_RANDOM"))


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- byte mutation -----------------------------------------------------------------

# Values that reach edge cases of offsets, lengths and indices.
INTERESTING = (0, 1, 2, 4, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
MUTATION = st.tuples(st.sampled_from(("flip", "byte", "u16", "u32", "truncate", "splice")),
                     st.integers(0, 1 << 20), st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0xFFFFFFFF)))


def mutate(data: bytes, mutations) -> bytes:
    """Applies (kind, position, value) mutations; positions wrap around the data."""
    b = bytearray(data)
    for kind, pos, value in mutations:
        if not b:
            break
        pos %= len(b)
        if kind == "flip":
            b[pos] ^= 1 << (value % 8)
        elif kind == "byte":
            b[pos] = value & 0xFF
        elif kind == "u16" and pos + 2 <= len(b):
            struct.pack_into("<H", b, pos & ~1, value & 0xFFFF)
        elif kind == "u32" and pos + 4 <= len(b):
            struct.pack_into("<I", b, pos & ~3, value & 0xFFFFFFFF)
        elif kind == "truncate":
            del b[pos:]
        elif kind == "splice":  # copy a 4-byte window elsewhere (offsets pointing into tables)
            src = value % len(b)
            b[pos:pos + 4] = b[src:src + 4]
    return bytes(b)


def check_reader(data: bytes) -> bool:
    """Parses ``data`` and runs every analysis; True when the file was accepted.

    Raises whatever escapes other than ModelFileError (the property under test).
    """
    try:
        m = parse_tflite(data, "fuzz.tflite")
    except ModelFileError:
        return False
    try:
        for i in range(len(m.tensors)):
            m.constant(i)
        weight_kernels(m)
        zero_fraction(m)
        float_compute_ops(m)
        m.op_versions()
    except ModelFileError:
        pass
    return True


@_settings(EXAMPLES * 4)
@given(seed=st.sampled_from(sorted(SEEDS)), mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_fuzz_reader_raises_only_model_file_error(seed, mutations):
    check_reader(mutate(SEEDS[seed], mutations))


@_settings(EXAMPLES)
@given(data=st.binary(min_size=0, max_size=512))
def test_fuzz_reader_on_random_bytes_with_identifier(data):
    check_reader(data[:4] + b"TFL3" + data[4:])


@_settings(LOADER_EXAMPLES)
@given(seed=st.sampled_from(sorted(SEEDS)), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzz_isolated_loader_gives_a_clear_error_or_loads(tmp_path_factory, seed, mutations):
    from pipeline.tflite.sandbox import load_check

    p = tmp_path_factory.mktemp("fuzz") / "m.tflite"
    p.write_bytes(mutate(SEEDS[seed], mutations))
    try:
        info = load_check(p, timeout_s=30)
    except ModelFileError as exc:
        assert str(exc).startswith(f"{p}: ")  # names the file
        return
    assert info["inputs"] and info["outputs"]


# -- recipes -------------------------------------------------------------------------

YAML_CHARS = st.sampled_from(list(":-[]{},#&*!|>'\"%@` \n\t0123456789.eExyz~") + ["null", "true", "- ", ": "])
TEXT_MUTATION = st.tuples(st.sampled_from(("insert", "delete", "replace")), st.integers(0, 1 << 16),
                          YAML_CHARS)


def mutate_text(text: str, mutations) -> str:
    """Character-level edits of YAML text; positions wrap around."""
    s = text
    for kind, pos, chars in mutations:
        pos %= max(len(s), 1)
        if kind == "insert":
            s = s[:pos] + chars + s[pos:]
        elif kind == "delete":
            s = s[:pos] + s[pos + len(chars):]
        else:
            s = s[:pos] + chars + s[pos + len(chars):]
    return s


def recipe_class(data):
    """The schema a recipe's data is for: a detection recipe's or a classifier's."""
    return DetectConfig if isinstance(data, dict) and data.get("task") == "detection" else Recipe


def check_recipe_loads(path: Path) -> None:
    try:
        r = load_detect_recipe(path) if recipe_task(path) == "detection" else load_recipe(path)
    except ConfigError:
        return
    assert type(r).from_dict(r.to_dict()) == r
    try:
        r.smoke()
    except ConfigError:
        pass


@_settings(EXAMPLES)
@given(name=st.sampled_from(sorted(RECIPE_TEXTS)), mutations=st.lists(TEXT_MUTATION, min_size=1, max_size=5))
def test_fuzz_recipe_yaml_text(tmp_path_factory, name, mutations):
    p = tmp_path_factory.mktemp("recipe") / "r.yaml"
    p.write_text(mutate_text(RECIPE_TEXTS[name], mutations))
    check_recipe_loads(p)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
              st.text(max_size=12), st.sampled_from(["folder", "int8-qat", "mobilenet_v2", "pad", "*"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))


def mutate_dict(base: dict, edits, data) -> dict:
    """Sets, deletes or adds keys at paths drawn from ``base``'s own structure."""
    import copy

    d = copy.deepcopy(base)
    for kind, value in edits:
        paths = [p for p in _paths(d) if p]
        path = data.draw(st.sampled_from(paths)) if paths else ()
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        if not isinstance(parent, dict) or not path:
            continue
        if kind == "set":
            parent[path[-1]] = value
        elif kind == "delete":
            parent.pop(path[-1], None)
        else:
            parent[f"{path[-1]}_x" if isinstance(value, (dict, list)) else str(value)[:10]] = value
    return d


@_settings(EXAMPLES)
@given(name=st.sampled_from(sorted(RECIPE_TEXTS)),
       edits=st.lists(st.tuples(st.sampled_from(("set", "delete", "add")), JSON_VALUES), min_size=1, max_size=4),
       data=st.data())
def test_fuzz_recipe_from_dict(name, edits, data):
    base = yaml.safe_load(RECIPE_TEXTS[name])
    d = mutate_dict(base, edits, data)
    schema = recipe_class(base)
    try:
        r = schema.from_dict(d)
    except ConfigError:
        return
    assert schema.from_dict(r.to_dict()) == r


@_settings(EXAMPLES)
@given(value=JSON_VALUES)
def test_fuzz_recipe_from_any_value(value):
    for schema in (Recipe, DetectConfig):
        try:
            schema.from_dict(value)
        except ConfigError:
            pass


# -- regressions: every input that ever broke the property ------------------------------

REGRESSION_MODELS = sorted(p for p in REGRESSIONS.glob("*.tflite") if not p.name.startswith("seed_"))
#: Recipes that once escaped as another exception, with the message they must now give.
REGRESSION_RECIPES = {
    "deep_nesting.yaml": "not valid YAML: nested too deeply",            # was RecursionError
    "big_seed.yaml": "recipe.seed: expected an integer from 0 to 4294967295, got 99999999999999999999999",
}


def test_seed_models_are_valid():
    for name, data in SEEDS.items():
        assert check_reader(data), name


@pytest.mark.parametrize("path", REGRESSION_MODELS, ids=[p.name for p in REGRESSION_MODELS])
def test_regression_model(path):
    check_reader(path.read_bytes())
    from pipeline.tflite.sandbox import load_check

    try:
        load_check(path, timeout_s=30)
    except ModelFileError as exc:
        assert str(exc).startswith(f"{path}: ")


def test_every_regression_recipe_has_its_message():
    assert sorted(p.name for p in REGRESSIONS.glob("*.yaml")) == sorted(REGRESSION_RECIPES)


@pytest.mark.parametrize("name", sorted(REGRESSION_RECIPES))
def test_regression_recipe(name):
    with pytest.raises(ConfigError) as err:
        load_recipe(REGRESSIONS / name)
    assert REGRESSION_RECIPES[name] in str(err.value)


def test_recipe_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_recipe(tmp_path)
    assert str(err.value) == f"recipe {tmp_path}: cannot read it (Is a directory)"


def test_constant_with_negative_dimensions_is_a_model_error():
    # Two negative dimensions multiply to a size that matches the buffer; numpy's
    # reshape then raised ValueError (found in review of the reader).
    from pipeline.tflite.reader import Quantization, Tensor, TFLiteModel

    t = [Tensor(0, "w", (-2, -2), "float32", 1, Quantization())]
    m = TFLiteModel(16, [], t, [], (0,), (0,), [b"", b"\0" * 16])
    with pytest.raises(ModelFileError, match=r"tensor 'w': constant with a negative dimension in shape \[-2, -2\]"):
        m.constant(0)

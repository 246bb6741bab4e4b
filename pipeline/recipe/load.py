"""Loading a recipe: a YAML file, or an embedded preset by name (``default``).

The presets ship in ``pipeline/recipe/presets/*.yaml``; each begins with the
command that builds it.
"""

from pathlib import Path

import yaml

from pipeline.errors import ConfigError
from pipeline.recipe.schema import Recipe

PRESETS = Path(__file__).parent / "presets"


def preset_names():
    """The embedded recipes, by name, sorted."""
    return sorted(q.stem for q in PRESETS.glob("*.yaml"))


#: The tasks a recipe's ``task`` key names; ``classification`` when it has none.
TASKS = ("classification", "detection")


def read_recipe_data(path: "str | Path") -> "tuple[Path, dict]":
    """The plain data of a recipe YAML file, or of an embedded recipe by name.

    Raises:
        ConfigError: the file is missing, is not YAML, is empty or is not a mapping.
    """
    p = Path(path)
    if not p.exists():
        embedded = PRESETS / f"{path}.yaml"
        if embedded.exists() and "/" not in str(path):
            p = embedded
        else:
            names = ", ".join(preset_names())
            raise ConfigError(f"recipe file not found: {path} (embedded recipes: {names})")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"recipe {p}: not valid YAML: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"recipe {p}: cannot read it ({exc.strerror})") from None
    if data is None:
        raise ConfigError(f"recipe {p}: file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe: expected a mapping, got {type(data).__name__} (in {p})")
    return p, data


def recipe_task(path: "str | Path") -> str:
    """The ``task`` a recipe names (``classification`` when it names none). Raises ConfigError."""
    return _task(*read_recipe_data(path))


def _task(p: Path, data: dict) -> str:
    task = data.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"recipe {p}: recipe.task: expected one of {', '.join(TASKS)}; got {task!r}")
    return task


def load_recipe(path: "str | Path", smoke: bool = False, data_path: "str | Path | None" = None) -> Recipe:
    """Loads a classifier recipe YAML file (or an embedded recipe by name, e.g. ``default``).

    ``data_path``, when given, replaces the recipe's data source with that folder of
    images (``dataset: folder``, ``path: data_path``) before the recipe is validated.

    Raises:
        ConfigError: the file is missing, is not YAML, holds invalid keys/values, or is
            a detection recipe (``task: detection``, which only ``mobile-model build`` takes).
    """
    p, data = read_recipe_data(path)
    if _task(p, data) != "classification":
        raise ConfigError(f"recipe {p}: a detection recipe (task: detection); only `mobile-model build` "
                          f"takes it")
    data = {k: v for k, v in data.items() if k != "task"}
    if data_path is not None:
        section = data.get("data") if isinstance(data.get("data"), dict) else {}
        data = {**data, "data": {**section, "dataset": "folder", "path": str(data_path)}}
    recipe = Recipe.from_dict(data)
    return recipe.smoke() if smoke else recipe

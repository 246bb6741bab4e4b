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


def load_recipe(path: "str | Path", smoke: bool = False, data_path: "str | Path | None" = None) -> Recipe:
    """Loads a recipe YAML file (or an embedded recipe by name, e.g. ``default``).

    ``data_path``, when given, replaces the recipe's data source with that folder of
    images (``dataset: folder``, ``path: data_path``) before the recipe is validated.

    Raises:
        ConfigError: the file is missing, is not YAML, or holds invalid keys/values.
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
    if data_path is not None and isinstance(data, dict):
        section = data.get("data") if isinstance(data.get("data"), dict) else {}
        data = {**data, "data": {**section, "dataset": "folder", "path": str(data_path)}}
    recipe = Recipe.from_dict(data)
    return recipe.smoke() if smoke else recipe

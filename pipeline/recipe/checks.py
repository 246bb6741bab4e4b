"""Checks of recipe values: each raises ConfigError naming the key, what is allowed and
what was received (``where`` is the section, e.g. ``recipe.train``)."""

from typing import Any

from pipeline.errors import ConfigError

#: ``epochs: auto``: train until validation top-1 stops improving (see TrainConfig).
AUTO = "auto"


def check_choice(where: str, key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}.{key}: expected one of {', '.join(map(str, allowed))}; got {value!r}")


def check_choices(where: str, key: str, values, allowed) -> None:
    """A non-empty list of distinct entries of ``allowed``."""
    if not values:
        raise ConfigError(f"{where}.{key}: expected at least one of {', '.join(map(str, allowed))}")
    for v in values:
        check_choice(where, key, v, allowed)
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}.{key}: duplicate entries in {list(values)}")


def check_non_negative_int(where: str, key: str, value: Any, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}.{key}: expected an integer >= 0{note}, got {value!r}")


def check_epochs(where: str, key: str, value: Any, unset_ok: bool = False) -> None:
    if value == AUTO and isinstance(value, str) or value is None and unset_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}.{key}: expected a positive integer or 'auto', got {value!r}")


def check_positive_int(where: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}.{key}: expected a positive integer, got {value!r}")


def check_positive_number(where: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}.{key}: expected a positive number, got {value!r}")


def check_bool(where: str, key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")


def check_name_and_seed(name: Any, seed: Any) -> None:
    """``recipe.name`` (letters, digits, '-' or '_') and ``recipe.seed`` (an integer that
    numpy and TensorFlow seeding accept), for every kind of recipe."""
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"recipe.name: expected letters, digits, '-' or '_', got {name!r}")
    if not isinstance(seed, int):
        raise ConfigError(f"recipe.seed: expected an integer, got {seed!r}")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"recipe.seed: expected an integer from 0 to {2**32 - 1}, got {seed!r}")

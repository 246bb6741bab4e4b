"""Frozen dataclasses to and from plain data (YAML/JSON), strictly.

The recipe (:mod:`pipeline.recipe.schema`) and the build summary
(:mod:`pipeline.summary`) are trees of frozen dataclasses that round-trip through
plain data. :func:`from_plain` checks every value against the field's type and
names the offending field by its path (``recipe.model.alpha``): an unknown key (the
message lists the valid ones), a missing required key, a value of the wrong type.
The caller chooses the error type: a bad recipe is a ConfigError, a bad summary
file a DataError.
"""

import dataclasses
import typing
from typing import Any, Type, TypeVar

from pipeline.errors import MobileModelError

T = TypeVar("T")


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and dicts -> plain dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def from_plain(cls: Type[T], data: Any, where: str, error: Type[MobileModelError]) -> T:
    """Builds dataclass ``cls`` from plain ``data``.

    Fields with defaults may be left out; a nested dataclass given as ``null`` takes
    all its defaults.

    Raises:
        error: not a mapping, an unknown or missing key, or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    valid = [f.name for f in fields]
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise error(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise error(f"{where}: missing key {missing[0]!r}")
    return cls(**{k: _coerce(hints[k], v, f"{where}.{k}", error) for k, v in data.items()})


def _coerce(tp: Any, value: Any, where: str, error: Type[MobileModelError]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_plain(tp, value if value is not None else {}, where, error)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(inner, value, where, error)
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected a list, got {value!r}")
        items = [_coerce(args[0] if args else Any, v, where, error) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}", error) for k, v in value.items()}
    return _scalar(tp, value, where, error)


def _scalar(tp: Any, value: Any, where: str, error: Type[MobileModelError]) -> Any:
    if tp is bool and not isinstance(value, bool):
        raise error(f"{where}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise error(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str and not isinstance(value, str):
        raise error(f"{where}: expected a string, got {value!r}")
    return value

"""Checked reads of the JSON objects a device run leaves behind: a key of the expected
type, no unexpected key; anything else raises :class:`DeviceOutputError`."""

from pipeline.errors import DeviceOutputError


def take(obj: dict, key: str, types, where: str):
    """``obj[key]``, which must be there and of ``types`` (a bool only where ``types`` names bool)."""
    if key not in obj:
        raise DeviceOutputError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise DeviceOutputError(f"{where}: {key!r} is {value!r}, expected {_names(types)}")
    return value


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _names(types) -> str:
    return " or ".join(t.__name__ for t in _tuple(types))


def no_extra(obj: dict, allowed, where: str) -> None:
    """Raises unless every key of ``obj`` is in ``allowed``."""
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise DeviceOutputError(f"{where}: unexpected keys {extra}")

"""Module-level jobs for the tests of :mod:`pipeline.pool` (a worker imports them by name)."""

import os

from pipeline.errors import ConfigError


def square(x: int) -> int:
    return x * x


def refuse(what: str) -> None:
    raise ConfigError(f"{what} is not a valid thing")


def crash_by_bug(what: str) -> None:
    raise ValueError(f"{what} went wrong")


def die() -> None:
    os._exit(3)

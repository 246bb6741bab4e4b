"""adb targets: not measured yet."""

from pipeline.errors import ConfigError


def measure_over_adb(*args, **kwargs):
    raise ConfigError("adb:// targets are not supported yet; use ssh://")

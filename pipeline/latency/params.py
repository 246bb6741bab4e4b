"""Where the fitted latency-model parameters live, and reading and writing them.

The parameters are data, one small file for all devices (every per-device figure is a
datasheet figure in the device profile)::

    model_version: 4              # the LatencyParams mapping (pipeline.latency.model)
    compute_scale: 1.2
    op_overhead_cycles: 25000
    memory_scale: 1.0             # >= 1: 1 / the fraction of the DRAM peak the bus sustains
    validated:                    # core -> numeric formats published points validate
      cortex-a73: [float32, int8]
    info: {...}                   # the fit's errors, for reports

Estimates read, in this order (:func:`params_file`):

1. the file named by ``$MOBILE_MODEL_LATENCY_PARAMS`` (it must exist);
2. ``params.yaml`` in the user cache (``$MOBILE_MODEL_CACHE/latency``, default
   ``~/.cache/mobile-model/latency``), which ``mobile-model calibrate`` writes by
   default;
3. the parameters shipped with the package (``params_data/default.yaml``).

The installed package is never written to.
"""

import functools
import os
from pathlib import Path
from typing import Tuple

import yaml

from pipeline.errors import ConfigError
from pipeline.latency.model import LatencyParams
from pipeline.latency.reference import cache_root
from pipeline.store.atomic import atomic_write_text

PARAMS_ENV = "MOBILE_MODEL_LATENCY_PARAMS"
PARAMS_NAME = "params.yaml"
DEFAULT_PARAMS = Path(__file__).resolve().parent / "params_data" / "default.yaml"

# Where a parameters file came from (the ``params_source`` of an estimate).
SOURCE_ENV, SOURCE_USER, SOURCE_PACKAGE = "environment", "user cache", "package"


def user_params_path() -> Path:
    """``params.yaml`` in the user's latency cache (what ``calibrate`` writes by default)."""
    return cache_root() / PARAMS_NAME


def params_file() -> Tuple[Path, str]:
    """The parameters file estimates use now, and where it came from.

    Returns:
        (path, one of "environment", "user cache", "package").

    Raises:
        ConfigError: ``$MOBILE_MODEL_LATENCY_PARAMS`` names a file that does not exist.
    """
    env = os.environ.get(PARAMS_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"latency parameters {path} (from ${PARAMS_ENV}): no such file")
        return path.resolve(), SOURCE_ENV
    user = user_params_path()
    if user.is_file():
        return user, SOURCE_USER
    return DEFAULT_PARAMS, SOURCE_PACKAGE


def load_params(path: Path) -> LatencyParams:
    """The parameters in ``path``.

    Raises:
        ConfigError: unreadable YAML or invalid parameters (the message says which).
    """
    path = Path(path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as e:
        raise ConfigError(f"latency parameters {path}: cannot read: {e}") from None
    return _load(str(path), stamp)


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: int) -> LatencyParams:
    # Keyed by modification time too: a calibration written since is read again.
    source = f"latency parameters {path}"
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{source}: cannot read: {e}") from None
    return LatencyParams.from_mapping(data, source)


def current_params() -> Tuple[LatencyParams, Path, str]:
    """The parameters estimates use now, their file and its source (see :func:`params_file`).

    Raises:
        ConfigError: a bad parameters file.
    """
    path, source = params_file()
    return load_params(path), path, source


def params_yaml(params: LatencyParams, notes: str = "") -> str:
    """The text of a parameters file, ``notes`` as comments on top."""
    lines = ["# Latency model parameters (docs/latency.md), fitted on published latencies",
             "# by `mobile-model calibrate`; do not edit by hand."]
    lines += [f"# {ln}" for ln in notes.splitlines()]
    return "\n".join(lines) + "\n" + yaml.safe_dump(params.to_mapping(), sort_keys=False)


def write_params(path: Path, params: LatencyParams, notes: str = "") -> Path:
    """Writes a parameters file (atomically) after checking that it reads back.

    Raises:
        ConfigError: the written parameters would not load (a bug, never a partial file).
    """
    text = params_yaml(params, notes)
    LatencyParams.from_mapping(yaml.safe_load(text), f"latency parameters {path}")
    atomic_write_text(Path(path), text)
    return Path(path)

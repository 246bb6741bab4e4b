"""Where the fitted cost-model parameters live, and reading and writing them.

The parameters are data, one file for every device profile::

    pixel2:                       # a device profile name
      model_version: 1            # the LatencyParams mapping (pipeline.latency.model)
      cost_simd_mac: 1.16141
      ...
    some-device: {}               # no parameters: no estimate for this device

Estimates read, in this order (:func:`params_file`):

1. the file named by ``$MOBILE_MODEL_LATENCY_PARAMS`` (it must exist);
2. ``params.yaml`` in the user cache (``$MOBILE_MODEL_CACHE/latency``, default
   ``~/.cache/mobile-model/latency``), which ``mobile-model calibrate`` writes by
   default;
3. the parameters shipped with the package (``params/default.yaml``).

The installed package is never written to.
"""

import functools
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml

from pipeline.devices.profiles import DEVICES
from pipeline.errors import ConfigError
from pipeline.latency.model import LatencyParams
from pipeline.latency.reference import cache_root
from pipeline.store.atomic import atomic_write_text

PARAMS_ENV = "MOBILE_MODEL_LATENCY_PARAMS"
PARAMS_NAME = "params.yaml"
DEFAULT_PARAMS = Path(__file__).resolve().parent / "params" / "default.yaml"

# Where a parameters file came from (the ``params_source`` of an estimate).
SOURCE_ENV, SOURCE_USER, SOURCE_PACKAGE = "environment", "user cache", "package"
# Keys written as integers (counts and flags); the rest are rounded floats.
_INT_KEYS = ("model_version", "validated", "device_points", "core_points", "core_int8_points")


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


def load_params(path: Path) -> Dict[str, Optional[LatencyParams]]:
    """Every device's parameters in ``path`` (None where the file has none for it).

    Devices the file does not name get None too (no estimate rather than a guess).

    Raises:
        ConfigError: unreadable YAML, not a mapping of device names, an unknown
            device (the message lists the valid ones), or invalid parameters.
    """
    path = Path(path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as e:
        raise ConfigError(f"latency parameters {path}: cannot read: {e}") from None
    return dict(_load(str(path), stamp))


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: int) -> Dict[str, Optional[LatencyParams]]:
    # Keyed by modification time too: a calibration written since is read again.
    source = f"latency parameters {path}"
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{source}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of device names to parameters, "
                          f"got {type(data).__name__}")
    out: Dict[str, Optional[LatencyParams]] = {name: None for name in DEVICES.names()}
    for name, mapping in data.items():
        if name not in out:
            raise ConfigError(f"{source}: unknown device {name!r}; valid: {', '.join(DEVICES.names())}")
        if mapping is not None and not isinstance(mapping, dict):
            raise ConfigError(f"{source}: {name}: expected a mapping of parameters, got {mapping!r}")
        out[name] = LatencyParams.from_mapping(mapping or {}, f"{source}: {name}")
    return out


def device_params(device: str) -> Tuple[Optional[LatencyParams], Path, str]:
    """The parameters of ``device`` from the file :func:`params_file` picks.

    Returns:
        (parameters or None, the file, its source).

    Raises:
        ConfigError: unknown device, or a bad parameters file.
    """
    DEVICES.get(device)
    path, source = params_file()
    return load_params(path)[device], path, source


def device_mapping(device: str) -> Dict[str, float]:
    """``device``'s parameters as a mapping for :func:`~pipeline.latency.model.estimate_ms` (empty: none)."""
    params, _, _ = device_params(device)
    return {} if params is None else params.to_mapping()


def variant_in_fit(params: LatencyParams, variant: str) -> bool:
    """Whether published points of ``variant`` on the profile's core type were in the fit."""
    int8 = params.info.get("core_int8_points", 0)
    return int8 > 0 if variant == "int8" else params.info.get("core_points", 0) - int8 > 0


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def params_yaml(params: Mapping[str, Optional[LatencyParams]],
                notes: Mapping[str, str] = None) -> str:
    """The text of a parameters file, one block per device, ``notes`` as comments above.

    Args:
        params: device name -> parameters (None: the device gets ``{}``, no estimate).
        notes: device name -> a comment (may span lines), e.g. why costs are assumed.
    """
    notes = notes or {}
    lines = ["# Latency cost-model parameters per device profile (docs/latency.md).",
             "# Written by `mobile-model calibrate`; do not edit by hand."]
    for name, p in params.items():
        lines.append("")
        lines += [f"# {ln}" for ln in notes.get(name, "").splitlines()]
        if p is None:
            lines.append(f"{name}: {{}}   # no published point for this core and no assumption: no estimate")
            continue
        lines.append(f"{name}:")
        for key, value in p.to_mapping().items():
            lines.append(f"  {key}: {int(value) if key in _INT_KEYS else _round(value)}")
    return "\n".join(lines) + "\n"


def write_params(path: Path, params: Mapping[str, Optional[LatencyParams]],
                 notes: Mapping[str, str] = None) -> Path:
    """Writes a parameters file (atomically) after checking that it reads back.

    Raises:
        ConfigError: the written parameters would not load (a bug, never a partial file).
    """
    text = params_yaml(params, notes)
    data: Any = yaml.safe_load(text)
    for name, mapping in data.items():
        LatencyParams.from_mapping(mapping or {}, f"latency parameters of {name}")
    atomic_write_text(Path(path), text)
    return Path(path)

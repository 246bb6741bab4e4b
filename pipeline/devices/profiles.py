"""Device profiles: one YAML file per device in ``profiles/``, validated strictly.

A profile is data, not code: which qemu CPU model emulates the device's big core,
what the guest's /proc/cpuinfo says, how many big cores and what clock and RAM the
real device has, and which runtime (and version) its firmware ships. The fitted
latency cost-model parameters are not here: they are data of their own
(:mod:`pipeline.latency.params`), written by a calibration.

    >>> get_device("pixel4").qemu_cpu
    'cortex-a76'
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Union

import yaml

from pipeline.devices.targets import CORES, RUNTIMES
from pipeline.errors import ConfigError
from pipeline.registry import Registry

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class DeviceProfile:
    """One emulated device.

    Attributes:
        name: registry name, equal to the YAML file's stem.
        description: the real device, for reports.
        qemu_cpu: ``qemu-aarch64 -cpu`` model emulating the big core (a key of
            ``targets.CORES``).
        cpu_part: CPU part written into the guest's /proc/cpuinfo ("0xd0b"); must be
            the emulated core's, since XNNPACK picks kernels by it.
        cores: big cores the real device uses for inference (for latency tables).
        clock_ghz: big-core clock of the real device.
        ram_mb: RAM of the real device.
        runtime: guest runtime, "litert" or "tflite-runtime".
        runtime_version: its version; must be the one the ARM runtime installs.
        default_threads: interpreter threads of an emulated run.
    """

    name: str
    description: str
    qemu_cpu: str
    cpu_part: str
    cores: int
    clock_ghz: float
    ram_mb: int
    runtime: str
    runtime_version: str
    default_threads: int

    @classmethod
    def from_dict(cls, data: Any, source: str = "device profile") -> "DeviceProfile":
        """Validates a parsed YAML mapping into a profile.

        Raises:
            ConfigError: not a mapping, an unknown or missing key (the message lists
                the valid keys), or a value of the wrong type or out of range.
        """
        return _validate(data, source)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON/YAML-serialisable form; ``from_dict(to_dict())`` round-trips."""
        return dict(self.__dict__)


FIELDS = tuple(DeviceProfile.__dataclass_fields__)


def _fail(source: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {msg}")


def _int(data, key, source, minimum=1) -> int:
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _fail(source, f"{key} must be an integer >= {minimum}, got {v!r}")
    return v


def _str(data, key, source) -> str:
    v = data[key]
    if not isinstance(v, str) or not v.strip():
        raise _fail(source, f"{key} must be a non-empty string, got {v!r}")
    return v


def _cpu_part(v, source) -> int:
    # YAML reads an unquoted 0xd0b as the integer 3339: accept both spellings.
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return int(v, 16) if v.lower().startswith("0x") else int(v)
        except ValueError:
            pass
    raise _fail(source, f"cpu_part must be a hex CPU part like \"0xd0b\", got {v!r}")


def _validate(data: Any, source: str) -> DeviceProfile:
    if not isinstance(data, dict):
        raise _fail(source, f"expected a mapping of {', '.join(FIELDS)}, got {type(data).__name__}")
    for key in data:
        if key not in FIELDS:
            raise _fail(source, f"unknown key {key!r}; valid keys: {', '.join(FIELDS)}")
    for key in FIELDS:
        if key not in data:
            raise _fail(source, f"missing key {key!r}; valid keys: {', '.join(FIELDS)}")

    qemu_cpu = _str(data, "qemu_cpu", source)
    if qemu_cpu == "max" or (qemu_cpu.startswith("max,") and "sme=off" not in qemu_cpu.split(",")):
        raise _fail(source, f"qemu_cpu {qemu_cpu!r} enables SME: XNNPACK then picks SME kernels "
                            "and int8 results come out wrong; use 'max,sme=off'")
    if qemu_cpu not in CORES:
        raise _fail(source, f"qemu_cpu {qemu_cpu!r} has no emulated /proc/cpuinfo; "
                            f"valid: {', '.join(CORES)}")
    core = CORES[qemu_cpu]
    part = _cpu_part(data["cpu_part"], source)
    if part != core.cpu_part:
        raise _fail(source, f"cpu_part 0x{part:03x} does not match qemu_cpu {qemu_cpu} "
                            f"(0x{core.cpu_part:03x})")

    runtime = _str(data, "runtime", source)
    if runtime not in RUNTIMES:
        raise _fail(source, f"runtime {runtime!r} is unknown; valid: {', '.join(RUNTIMES)}")
    version = data["runtime_version"]
    if str(version) != RUNTIMES[runtime].version:
        raise _fail(source, f"runtime_version {version!r}: the ARM runtime installs {runtime} "
                            f"{RUNTIMES[runtime].version} only")

    clock = data["clock_ghz"]
    if isinstance(clock, bool) or not isinstance(clock, (int, float)) or not 0 < clock < 10:
        raise _fail(source, f"clock_ghz must be a number in (0, 10), got {clock!r}")

    return DeviceProfile(
        name=_str(data, "name", source),
        description=_str(data, "description", source),
        qemu_cpu=qemu_cpu,
        cpu_part=f"0x{part:03x}",
        cores=_int(data, "cores", source),
        clock_ghz=float(clock),
        ram_mb=_int(data, "ram_mb", source),
        runtime=runtime,
        runtime_version=str(version),
        default_threads=_int(data, "default_threads", source),
    )


def load_profile(path: Union[str, Path]) -> DeviceProfile:
    """Reads and validates one profile file; its ``name`` must equal the file stem.

    Raises:
        ConfigError: unreadable YAML or any validation error (see ``from_dict``).
    """
    path = Path(path)
    source = f"device profile {path.name}"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise _fail(source, f"cannot read: {e}") from None
    profile = _validate(data, source)
    if profile.name != path.stem:
        raise _fail(source, f"name {profile.name!r} must equal the file name {path.stem!r}")
    return profile


def load_profiles(directory: Union[str, Path] = PROFILE_DIR) -> Registry:
    """A registry of every ``*.yaml`` profile in ``directory``, in file-name order."""
    registry: Registry[DeviceProfile] = Registry("device")
    for path in sorted(Path(directory).glob("*.yaml")):
        profile = load_profile(path)
        registry.register(profile.name, profile)
    return registry


DEVICES: Registry = load_profiles()


def get_device(name: str) -> DeviceProfile:
    """The profile called ``name``.

    Raises:
        ConfigError: unknown name; the message lists the valid device names.
    """
    return DEVICES.get(name)

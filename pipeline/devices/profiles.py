"""Device profiles: one YAML file per device in ``profile_data/``, validated strictly.

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
from typing import Any, Dict, Tuple, Union

import yaml

from pipeline.devices.targets import CORES, RUNTIMES
from pipeline.errors import ConfigError
from pipeline.registry import Registry

PROFILE_DIR = Path(__file__).resolve().parent / "profile_data"

# LLVM 19 AArch64 -mcpu names and the scheduling model each uses (as measured with
# llvm-mca-19: every cortex-a57..a78 name shares the Cortex-A57 model; docs/latency.md).
SCHED_MODELS = {
    "cortex-a53": "Cortex-A53 (in-order, dual-issue)",
    "cortex-a55": "Cortex-A55 (in-order, dual-issue)",
    "cortex-a57": "Cortex-A57 (out-of-order, 3-wide)",
    "cortex-a72": "Cortex-A57 (out-of-order, 3-wide)",
    "cortex-a73": "Cortex-A57 (out-of-order, 3-wide)",
    "cortex-a75": "Cortex-A57 (out-of-order, 3-wide)",
    "cortex-a76": "Cortex-A57 (out-of-order, 3-wide)",
    "kryo": "Kryo (out-of-order, 4-wide)",
    "neoverse-n1": "Neoverse N1 (out-of-order, 4-wide; the Cortex-A76's server sibling)",
}


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
        core: the real big core's microarchitecture ("cortex-a76", "kryo"): published
            latencies validate estimates per (core, numeric format).
        sched_model: the LLVM ``-mcpu`` whose scheduling model prices the core's
            instruction stream (a key of ``targets.SCHED_MODELS``).
        sched_model_reason: why that model (LLVM maps several names to one model).
        clock_1t_ghz: clock of the core a one-thread benchmark runs on (a phone's
            prime core); ``clock_ghz`` is the big cluster's, for multi-thread runs.
        cache_kb: the largest cache level the big cores share (L3, else L2).
        dram_gbps: peak DRAM bandwidth, shared by every core; must equal
            ``dram_bus_bits / 8 x dram_mts / 1000`` (within 1%).
        dram_bus_bits: total DRAM bus width in bits (all channels together).
        dram_mts: DRAM transfer rate in mega-transfers per second (twice the
            "MHz" of an LPDDR4 product brief).
        sources: citations of the clock, cache and memory figures.
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
    core: str
    sched_model: str
    sched_model_reason: str
    clock_1t_ghz: float
    cache_kb: int
    dram_gbps: float
    dram_bus_bits: int
    dram_mts: int
    sources: Tuple[str, ...]

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
        d = dict(self.__dict__)
        d["sources"] = list(self.sources)
        return d


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


def _number(data, key, source, upper: float) -> float:
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < upper:
        raise _fail(source, f"{key} must be a number in (0, {upper:g}), got {v!r}")
    return float(v)


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

    sched = _str(data, "sched_model", source)
    if sched not in SCHED_MODELS:
        raise _fail(source, f"sched_model {sched!r} is not an LLVM 19 AArch64 -mcpu with a "
                            f"scheduling model; valid: {', '.join(SCHED_MODELS)}")
    sources = data["sources"]
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s.strip()
                                                               for s in sources):
        raise _fail(source, f"sources must be a non-empty list of citations, got {sources!r}")

    return DeviceProfile(
        name=_str(data, "name", source),
        description=_str(data, "description", source),
        qemu_cpu=qemu_cpu,
        cpu_part=f"0x{part:03x}",
        cores=_int(data, "cores", source),
        clock_ghz=_number(data, "clock_ghz", source, 10),
        ram_mb=_int(data, "ram_mb", source),
        runtime=runtime,
        runtime_version=str(version),
        default_threads=_int(data, "default_threads", source),
        core=_str(data, "core", source),
        sched_model=sched,
        sched_model_reason=_str(data, "sched_model_reason", source),
        clock_1t_ghz=_number(data, "clock_1t_ghz", source, 10),
        cache_kb=_int(data, "cache_kb", source),
        dram_gbps=_dram_gbps(data, source),
        dram_bus_bits=_int(data, "dram_bus_bits", source),
        dram_mts=_int(data, "dram_mts", source),
        sources=tuple(sources),
    )


def _dram_gbps(data, source) -> float:
    # The bandwidth is the bus width times the transfer rate; a figure that disagrees
    # with its own bus is a typo in one of the three (the latency model reads the first).
    gbps = _number(data, "dram_gbps", source, 10000)
    bits, mts = _int(data, "dram_bus_bits", source), _int(data, "dram_mts", source)
    peak = bits / 8 * mts / 1000
    if abs(gbps - peak) > 0.01 * peak:
        raise _fail(source, f"dram_gbps {gbps:g} does not match dram_bus_bits {bits} x dram_mts {mts} "
                            f"(= {peak:.3g} GB/s); expected the bus's peak within 1%")
    return gbps


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

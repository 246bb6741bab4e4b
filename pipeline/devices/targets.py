"""What the emulated devices can be: emulated CPU cores and guest runtimes (pure data).

Device profiles (``profile_data/*.yaml``) pick one entry of each table; the runtime
builder (``runtime.py``) builds exactly what these tables describe, and their
contents are part of its cache key.
"""

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class Core:
    """A qemu CPU model and the ARM ``/proc/cpuinfo`` the guest sees for it.

    ``variant``/``revision`` are those of the MIDR qemu 7.2 reports for the model,
    ``features`` the Linux hwcap names a real core of that kind lists.
    """

    qemu_cpu: str
    cpu_part: int
    variant: int
    revision: int
    features: str

    @property
    def dotprod(self) -> bool:
        """Whether the core has the dot-product instructions (hwcap ``asimddp``)."""
        return "asimddp" in self.features.split()


_V80 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82 = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
        "lrcpc dcpop asimddp")

CORES: Dict[str, Core] = {
    c.qemu_cpu: c
    for c in (
        Core("cortex-a53", 0xD03, 0x0, 4, _V80),
        Core("cortex-a72", 0xD08, 0x0, 3, _V80),
        Core("cortex-a76", 0xD0B, 0x4, 1, _V82),
        Core("neoverse-n1", 0xD0C, 0x4, 1, _V82 + " ssbs"),
    )
}

# Logical CPUs the guest sees (/proc/cpuinfo and /sys/devices/system/cpu), fixed so
# that nothing the runtime reads about the CPU depends on the host machine.
GUEST_CPUS = 4
# cpufreq value presented for every guest CPU (kHz); only its constancy matters.
GUEST_CPU_KHZ = 2000000


def cpuinfo_text(core: Core, cpus: int = GUEST_CPUS) -> str:
    """An arm64 Linux ``/proc/cpuinfo`` for ``cpus`` identical cores.

    ai-edge-litert (via the cpuinfo library) segfaults at interpreter creation under
    qemu-user when it reads the host's x86 file instead, and XNNPACK picks
    microkernels by this CPU part (e.g. Cortex-A53-tuned ones for 0xd03).
    """
    block = (
        "processor\t: {i}\n"
        "BogoMIPS\t: 38.40\n"
        f"Features\t: {core.features}\n"
        "CPU implementer\t: 0x41\n"
        "CPU architecture: 8\n"
        f"CPU variant\t: 0x{core.variant:x}\n"
        f"CPU part\t: 0x{core.cpu_part:03x}\n"
        f"CPU revision\t: {core.revision}\n"
    )
    return "\n".join(block.format(i=i) for i in range(cpus)) + "\n"


@dataclass(frozen=True)
class GuestRuntime:
    """A TFLite runtime installed for the guest from PyPI's aarch64 wheels.

    Each runtime gets its own target directory (``/opt/mm/<name>`` in the guest):
    tflite-runtime 2.14 needs numpy<2, ai-edge-litert 2.3 is built against numpy 2.
    """

    name: str
    distribution: str
    version: str
    module: str
    requirements: Tuple[str, ...]

    @property
    def guest_dir(self) -> str:
        return f"/opt/mm/{self.name}"


RUNTIMES: Dict[str, GuestRuntime] = {
    r.name: r
    for r in (
        GuestRuntime("litert", "ai-edge-litert", "2.3.0", "ai_edge_litert.interpreter",
                     ("ai-edge-litert==2.3.0", "numpy==2.2.6")),
        GuestRuntime("tflite-runtime", "tflite-runtime", "2.14.0", "tflite_runtime.interpreter",
                     ("tflite-runtime==2.14.0", "numpy==1.26.4")),
    )
}

"""Core cycles of an emulated run: its hot blocks priced by the core's pipeline model.

An emulated run records its executed blocks (``DeviceResult.to_dict()["block_profile"]``:
the hot blocks, together >= 99% of the executed instructions, with their words and
execution counts, and the instructions of the cold rest). Each hot block is priced by
llvm-mca with the profile's scheduling model (:mod:`pipeline.latency.mca`, cached per
block bytes and model); calls are priced apart at :data:`CALL_CYCLES`; the cold rest
at the hot blocks' mean IPC.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

from pipeline.devices.blocks import HotProfile
from pipeline.devices.targets import CORES
from pipeline.errors import ConfigError
from pipeline.latency.model import CoreCycles

# A call and its return on a core with a return-address stack: a constant, not fitted
# (llvm-mca would charge 100 cycles for a call it cannot see into).
CALL_CYCLES = 4.0
# An uncontended LSE atomic (CAS, LDADD...) on a line in the core's own L1: a
# constant, not fitted; LLVM 19's models have no entry for these instructions.
ATOMIC_CYCLES = 20.0


# Linux hwcap name -> the LLVM feature that decodes its instructions. The guest's
# code takes a path only where the core's hwcaps advertise it (e.g. LSE atomics
# such as casal where "atomics" is listed), so these are the words it can run.
HWCAP_MATTR = {"atomics": "+lse", "asimddp": "+dotprod", "fphp": "+fullfp16",
               "asimdrdm": "+rdm", "lrcpc": "+rcpc", "dcpop": "+ccpp"}


def isa_features(qemu_cpu: str) -> Tuple[str, ...]:
    """The ``-mattr`` the emulated core's code needs to decode, from its hwcaps."""
    caps = CORES[qemu_cpu].features.split()
    return tuple(HWCAP_MATTR[c] for c in caps if c in HWCAP_MATTR)


def core_cycles(block_profile: Mapping[str, Any], sched_model: str, qemu_cpu: str,
                stats: Optional[Dict[str, Any]] = None) -> CoreCycles:
    """The pipeline model's cycles of one inference from a run's block profile.

    Args:
        block_profile: the run's ``block_profile`` (see the module docstring).
        sched_model: the LLVM ``-mcpu`` of the profile.
        qemu_cpu: the emulated core (which ISA extensions its code uses).
        stats: filled with llvm-mca's work (blocks analysed, cached, seconds).

    Raises:
        ConfigError: no hot block.
        DeviceOutputError: a malformed profile (:meth:`HotProfile.from_dict`).
        DeviceOutputError: a word the disassembler cannot decode.
        DeviceUnavailableError: llvm-mc / llvm-mca missing or failing.
    """
    from pipeline.latency.mca import SchedModel, price_blocks

    profile = HotProfile.from_dict(block_profile)
    hot, cold, inferences = profile.hot, profile.cold_instructions, profile.inferences
    if not hot:
        raise ConfigError("block profile has no hot block; re-run the device check")
    model = SchedModel(sched_model, isa_features(qemu_cpu))
    priced = price_blocks([b.words for b in hot], model, addresses=[b.vaddr for b in hot])
    timings = priced.timings
    if stats is not None:
        stats.update(analysed=priced.stats.analysed, cached=priced.stats.cached,
                     llvm_seconds=round(priced.stats.llvm_seconds, 3))
    hot_insns = sum(b.executed for b in hot)
    hot_cycles = sum(b.count * (t.cycles_per_iteration + CALL_CYCLES * t.calls + ATOMIC_CYCLES * t.atomics)
                     for b, t in zip(hot, timings))
    cycles = hot_cycles + cold * hot_cycles / hot_insns
    total = hot_insns + cold
    return CoreCycles(cycles=cycles / inferences, instructions=round(total / inferences),
                      sched_model=sched_model, hot_blocks=len(hot), hot_fraction=hot_insns / total)

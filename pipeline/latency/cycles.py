"""Core cycles of an emulated run: its hot blocks priced by the core's pipeline model.

An emulated run records its executed blocks (``DeviceResult.to_dict()["block_profile"]``:
the hot blocks, together >= 99% of the executed instructions, with their words and
execution counts, and the instructions of the cold rest). Each hot block is priced by
llvm-mca with the profile's scheduling model (:mod:`pipeline.latency.mca`, cached per
block bytes and model); calls are priced apart at :data:`CALL_CYCLES`; the cold rest
at the hot blocks' mean IPC.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

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


def _hot(profile: Mapping[str, Any]):
    try:
        hot = [(int(b["vaddr"]), tuple(int(w) for w in b["words"]), int(b["count"]))
               for b in profile["hot"]]
        return hot, int(profile["cold_instructions"]), int(profile["inferences"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"block profile is malformed ({e!r}); re-run the device check") from None


def core_cycles(block_profile: Mapping[str, Any], sched_model: str, qemu_cpu: str,
                stats: Optional[Dict[str, Any]] = None) -> CoreCycles:
    """The pipeline model's cycles of one inference from a run's block profile.

    Args:
        block_profile: the run's ``block_profile`` (see the module docstring).
        sched_model: the LLVM ``-mcpu`` of the profile.
        qemu_cpu: the emulated core (which ISA extensions its code uses).
        stats: filled with llvm-mca's work (blocks analysed, cached, seconds).

    Raises:
        ConfigError: a malformed profile, or no hot block.
        DeviceOutputError: a word the disassembler cannot decode.
        DeviceUnavailableError: llvm-mc / llvm-mca missing or failing.
    """
    from pipeline.latency.mca import SchedModel, price_blocks

    hot, cold, inferences = _hot(block_profile)
    if not hot or inferences < 1:
        raise ConfigError("block profile has no hot block or no inference; re-run the device check")
    model = SchedModel(sched_model, isa_features(qemu_cpu))
    priced = price_blocks([words for _, words, _ in hot], model, addresses=[a for a, _, _ in hot])
    timings = priced.timings
    if stats is not None:
        stats.update(analysed=priced.stats.analysed, cached=priced.stats.cached,
                     llvm_seconds=round(priced.stats.llvm_seconds, 3))
    hot_insns = sum(len(words) * count for _, words, count in hot)
    hot_cycles = sum(count * (t.cycles_per_iteration + CALL_CYCLES * t.calls + ATOMIC_CYCLES * t.atomics)
                     for (_, _, count), t in zip(hot, timings))
    cycles = hot_cycles + cold * hot_cycles / hot_insns
    total = hot_insns + cold
    return CoreCycles(cycles=cycles / inferences, instructions=round(total / inferences),
                      sched_model=sched_model, hot_blocks=len(hot), hot_fraction=hot_insns / total)

"""Prices A64 basic blocks with LLVM's pipeline models (llvm-mc and llvm-mca of LLVM 19).

A block is the list of 32-bit instruction words the qemu plugin recorded for one
translated block. :func:`pipeline.latency.llvm_mc.disassemble_blocks` decodes the
words of many blocks in one ``llvm-mc`` process; :func:`price_blocks` times each
block in one ``llvm-mca`` process
(a code region per block) as the steady-state cycles of one execution of the block,
and keeps each block's result on disk::

    $MOBILE_MODEL_CACHE/latency/mca/   (default ~/.cache/mobile-model/latency/mca/)
        <key>.json       one block's timing under one SchedModel and llvm-mca version
        tools/<key>.txt  ``--version`` of an llvm-mca binary (by path, size and mtime)

so that a repeated call with every block cached starts no process at all.

llvm-mca assumes L1 hits and a warm branch predictor, and does not follow calls:
a BL/BLR is priced as a plain branch here and counted in :attr:`BlockTiming.calls`
so that the caller prices the call itself apart.
"""

import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pipeline.errors import ConfigError, DeviceOutputError, DeviceUnavailableError
from pipeline.latency.llvm_mc import (LLVM_MAJOR, SOURCE_LINE, TRIPLE, block_name, check_blocks, disassemble_timed,
                                      find_tool, mattr_args, mattr_text, tool_version)
# Importable from here as before the disassembler had its own module.
from pipeline.latency.llvm_mc import disassemble, disassemble_blocks  # noqa: F401
from pipeline.latency.reference import cache_root, key_hash
from pipeline.store.atomic import atomic_write_json, atomic_write_text

# Bump when what a cache entry holds, or how it is computed, changes.
CACHE_VERSION = 2
# llvm-mca runs each block this many times back to back; cycles per iteration are
# Total Cycles / ITERATIONS, so the pipeline's fill and drain (the block's longest
# dependency chain, a few to tens of cycles) are spread over the iterations. Measured
# on 50 XNNPACK blocks of ~50 instructions against 10,000 iterations: at most 0.43%
# (0.07 cycle) off on neoverse-n1, 0.36% on cortex-a57, 0.04% on cortex-a55 (at 100:
# 2.3%), in ~1.5 s of llvm-mca for the 50 blocks (0.8 s at 200); tests/test_mca.py
# asserts 0.5% or 0.1 cycle.
ITERATIONS = 500
# llvm-mca charges a call (BL, BLR) 100 cycles of latency on its LR write by default,
# which fills the reorder buffer. With --call-latency=1 a BL/BLR costs exactly what a
# B/BR in its place costs (measured on the cortex-a53, cortex-a55, cortex-a57,
# neoverse-n1 and kryo models, and asserted in tests/test_mca.py). The call is kept
# in the text rather than removed so that its issue slot and branch unit still count;
# what the call itself costs (the callee's blocks are priced on their own) is the
# caller's constant.
CALL_LATENCY = 1
# What llvm-mca prints on stderr (once per run) for a call and for a return: expected,
# not an error. Anything else on its stderr is.
_EXPECTED_NOTICES = (
    "warning: found a call in the input assembly sequence.",
    f"note: call instructions are not correctly modeled. Assume a latency of {CALL_LATENCY}cy.",
    "warning: found a return instruction in the input assembly sequence.",
    "note: program counter updates are ignored.",
)
_MCA_INSTRUCTION = re.compile(r"note: instruction:\s*(.*)")


@dataclass(frozen=True)
class SchedModel:
    """An LLVM AArch64 scheduling model as llvm-mca selects it.

    Attributes:
        mcpu: the ``-mcpu`` name ("neoverse-n1"); several names share one model
            (see :func:`model_in_use`).
        mattr: ``-mattr`` features, each "+name" or "-name" (("+dotprod", "+fullfp16")).
            They decide which words decode (without "+dotprod" an sdot word is invalid).

    Raises:
        ConfigError: mcpu is not a non-empty name, or a feature is not "+name"/"-name".
    """

    mcpu: str
    mattr: Tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.mcpu, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", self.mcpu):
            raise ConfigError(f"an LLVM -mcpu name is lower-case letters, digits, '-' and '.', "
                              f"e.g. 'neoverse-n1'; got {self.mcpu!r}")
        if isinstance(self.mattr, str):
            raise ConfigError(f"mattr is a sequence of features such as ('+dotprod',), got the string {self.mattr!r}")
        object.__setattr__(self, "mattr", tuple(self.mattr))
        bad = [f for f in self.mattr if not isinstance(f, str) or not re.fullmatch(r"[+-][a-z0-9.-]+", f)]
        if bad:
            raise ConfigError(f"each LLVM -mattr feature is '+name' or '-name' (e.g. '+dotprod'); got {bad!r}")

    @property
    def key(self) -> str:
        """``mcpu`` and ``mattr`` as one string ("neoverse-n1:+dotprod,+fullfp16"), for cache keys."""
        return f"{self.mcpu}:{','.join(self.mattr)}"


@dataclass(frozen=True)
class BlockTiming:
    """The price of one block.

    Attributes:
        cycles_per_iteration: steady-state cycles of one execution of the block
            (llvm-mca's Total Cycles / iterations), calls priced as plain branches.
        calls: BL/BLR instructions in the block (to be priced apart by the caller).
        insns: instructions in the block.
        atomics: LSE atomic instructions (CAS, LDADD, SWP...), which no LLVM 19
            AArch64 scheduling model describes: llvm-mca prices a NOP in their
            place and the caller adds a constant for each.
    """

    cycles_per_iteration: float
    calls: int
    insns: int
    atomics: int = 0


@dataclass(frozen=True)
class McaStats:
    """What one :func:`price_blocks` call did.

    Attributes:
        analysed: blocks priced by llvm-mca in this call.
        cached: blocks read from the disk cache.
        llvm_seconds: wall time spent in llvm-mc and llvm-mca processes.
    """

    analysed: int
    cached: int
    llvm_seconds: float


@dataclass(frozen=True)
class McaResult:
    """The timings of :func:`price_blocks`, in the order of its blocks, and its stats."""

    timings: List[BlockTiming]
    stats: McaStats


def mca_version(tool: str) -> str:
    """The ``--version`` text of the llvm-mca at ``tool``, remembered on disk.

    It is remembered by the binary's resolved path, size and mtime, so that a call
    whose blocks are all cached runs no process.
    """
    real = Path(tool).resolve()
    st = real.stat()
    memo = _cache_dir() / "tools" / f"{key_hash([str(real), st.st_size, st.st_mtime_ns])}.txt"
    if memo.exists():
        return memo.read_text()
    version = tool_version(str(real)).strip()
    if f"LLVM version {LLVM_MAJOR}." not in version:
        raise DeviceUnavailableError(f"{real} --version does not say LLVM {LLVM_MAJOR}: {version[:200]!r}")
    atomic_write_text(memo, version)
    return version


def _cache_dir() -> Path:
    return cache_root() / "mca"


# LSE atomics (ARMv8.1): CAS/CASP, SWP, LD<op>/ST<op> with acquire/release and size
# suffixes. LLVM 19 has scheduling information for none of them on any AArch64 model.
_ATOMIC = re.compile(r"(casp?|swp|ld(add|clr|eor|set|smax|smin|umax|umin)|"
                     r"st(add|clr|eor|set|smax|smin|umax|umin))(a|al|l)?(b|h)?")


def _is_atomic(text: str) -> bool:
    return _ATOMIC.fullmatch(text.split()[0]) is not None


def _atomics(insns: Sequence[str]) -> int:
    return sum(1 for text in insns if _is_atomic(text))


def _calls(insns: Sequence[str]) -> int:
    """BL, BLR and the pointer-authenticating BLRAA/BLRAB... in a block's text."""
    return sum(1 for text in insns if text.split()[0] == "bl" or text.split()[0].startswith("blr"))


def _cache_key(words: Sequence[int], model: SchedModel, version: str) -> Dict:
    return {"cache": CACHE_VERSION, "words": "".join(f"{w:08x}" for w in words), "model": model.key,
            "llvm_mca": version, "iterations": ITERATIONS, "call_latency": CALL_LATENCY}


def _cached(path: Path, key: Dict) -> Optional[BlockTiming]:
    """The timing stored at ``path`` for ``key``; None when absent, unreadable or another key's."""
    try:
        entry = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if entry.get("key") != key:
        return None
    return BlockTiming(**entry["timing"])


def price_blocks(blocks: Sequence[Sequence[int]], model: SchedModel,
                 addresses: Optional[Sequence[int]] = None) -> McaResult:
    """Prices blocks with ``model``: one llvm-mc and one llvm-mca process for all uncached blocks.

    Args:
        blocks: each block's 32-bit instruction words, in execution order.
        model: the scheduling model and the features to decode with.
        addresses: each block's guest address, named in errors.

    Returns:
        one :class:`BlockTiming` per block, in order, and the call's stats.

    Raises:
        ConfigError: a block is empty or holds a non-32-bit word; llvm-mca rejects
            ``model``'s -mcpu or -mattr, or has no scheduling model for the -mcpu.
        DeviceOutputError: a word does not decode with the model's -mattr, or the
            model cannot schedule an instruction (llvm-mca's message names it and
            the blocks holding it).
        DeviceUnavailableError: llvm-mc-19 or llvm-mca-19 is not installed.
    """
    check_blocks(blocks, addresses)
    version = mca_version(find_tool("llvm-mca"))
    keys = [_cache_key(words, model, version) for words in blocks]
    paths = [_cache_dir() / f"{key_hash(key)}.json" for key in keys]
    timings: List[Optional[BlockTiming]] = [_cached(path, key) for path, key in zip(paths, keys)]
    todo = [i for i, t in enumerate(timings) if t is None]
    seconds = 0.0
    if todo:
        fresh, seconds = _analyse([blocks[i] for i in todo], model,
                                  None if addresses is None else [addresses[i] for i in todo])
        for i, timing in zip(todo, fresh):
            timings[i] = timing
            atomic_write_json(paths[i], {"key": keys[i], "timing": asdict(timing)})
    return McaResult(timings=timings, stats=McaStats(analysed=len(todo), cached=len(blocks) - len(todo),
                                                     llvm_seconds=seconds))


def block_cycles(blocks: Sequence[Sequence[int]], model: SchedModel,
                 addresses: Optional[Sequence[int]] = None) -> List[BlockTiming]:
    """:func:`price_blocks`' timings alone.

    Raises:
        as :func:`price_blocks`.
    """
    return price_blocks(blocks, model, addresses).timings


def _analyse(blocks: Sequence[Sequence[int]], model: SchedModel,
             addresses: Optional[Sequence[int]]) -> Tuple[List[BlockTiming], float]:
    """Timings of ``blocks`` from llvm-mc and llvm-mca (no cache), and the seconds they took."""
    texts, mc_seconds = disassemble_timed(blocks, model.mattr, addresses)
    lines, owners = _mca_source(texts, addresses)
    start = time.perf_counter()
    report = _run_mca(lines, owners, model)
    seconds = mc_seconds + time.perf_counter() - start
    regions = {region["Name"]: region for region in report["CodeRegions"]}
    timings = []
    for i, insns in enumerate(texts):
        summary = _region_summary(regions, i, len(insns), model)
        timings.append(BlockTiming(cycles_per_iteration=summary["TotalCycles"] / summary["Iterations"],
                                   calls=_calls(insns), insns=len(insns),
                                   atomics=_atomics(insns)))
    return timings, seconds


def _mca_source(texts: Sequence[Sequence[str]], addresses: Optional[Sequence[int]]) -> Tuple[List[str], List[str]]:
    """llvm-mca's input lines (a code region ``b<i>`` per block) and, per line, what it is."""
    lines, owners = [], []
    for i, insns in enumerate(texts):
        block = f"block {block_name(i, addresses)}"
        scheduled = ["nop" if _is_atomic(text) else text for text in insns]
        lines += [f"# LLVM-MCA-BEGIN b{i}", *scheduled, f"# LLVM-MCA-END b{i}"]
        owners += [block, *(f"{block}, instruction {k}: {text!r}" for k, text in enumerate(insns)), block]
    return lines, owners


def _region_summary(regions: Dict, i: int, insns: int, model: SchedModel) -> Dict:
    """Region ``b<i>``'s SummaryView, checked to cover the block's instructions and ITERATIONS."""
    region = regions.get(f"b{i}")
    if region is None:
        raise DeviceOutputError(f"llvm-mca -mcpu={model.mcpu} reported no region for block {i}")
    summary = region["SummaryView"]
    if summary["Iterations"] != ITERATIONS or summary["Instructions"] != insns * ITERATIONS:
        raise DeviceOutputError(f"llvm-mca -mcpu={model.mcpu} ran {summary['Instructions']} instructions in "
                                f"{summary['Iterations']} iterations of block {i}; expected {insns} x {ITERATIONS}")
    return summary


def _run_mca(lines: Sequence[str], owners: Sequence[str], model: SchedModel) -> Dict:
    """llvm-mca's JSON report of the assembly ``lines``; ``owners`` says what each line is, for errors.

    Raises:
        ConfigError: the -mcpu or -mattr is not recognised, or the -mcpu has no
            scheduling model.
        DeviceOutputError: anything on stderr but the expected notices, or a failed run.
    """
    command = [find_tool("llvm-mca"), f"-mtriple={TRIPLE}", f"-mcpu={model.mcpu}", *mattr_args(model.mattr),
               f"--iterations={ITERATIONS}", f"--call-latency={CALL_LATENCY}", "--json",
               "--instruction-info=false", "--resource-pressure=false", "-"]
    done = subprocess.run(command, input="\n".join(lines) + "\n", capture_output=True, text=True)
    problems = [line for line in done.stderr.splitlines() if line.strip() and line.strip() not in _EXPECTED_NOTICES]
    if any("not a recognized" in line or "scheduling information" in line for line in problems):
        raise ConfigError(f"llvm-mca cannot use -mcpu={model.mcpu} {mattr_text(model.mattr)}: {problems[0]}")
    if problems or done.returncode != 0:
        raise DeviceOutputError(f"llvm-mca -mcpu={model.mcpu} {mattr_text(model.mattr)} "
                                f"(exit {done.returncode}): {_explain(problems, lines, owners)}")
    return json.loads(done.stdout)


def _explain(problems: Sequence[str], lines: Sequence[str], owners: Sequence[str]) -> str:
    """llvm-mca's first complaint, with the block (and instruction) it is about."""
    if not problems:
        return "no message"
    # Not llvm-mca's advice to skip what it cannot schedule: that would price a block
    # without some of its instructions.
    first = problems[0].split(", use -skip-unsupported-instructions")[0]
    at = SOURCE_LINE.match(first)
    if at:
        return f"{owners[int(at.group(1)) - 1]}: {first.split(': ', 1)[-1]}"
    notes = [m.group(1).strip() for m in map(_MCA_INSTRUCTION.search, problems) if m]
    if notes:
        holders = sorted({owner.split(",")[0] for line, owner in zip(lines, owners) if line.strip() == notes[0]})
        return f"{first} (instruction {notes[0]!r} in {'; '.join(holders) or 'no block'})"
    return " | ".join(problems[:3])


def model_in_use(mcpu: str) -> str:
    """The LLVM scheduling model that llvm-mca uses for ``-mcpu=mcpu``.

    LLVM names a model's processor resources with the model's own prefix
    ("A57UnitB", "N1UnitV0", "CortexA55UnitALU"), and several -mcpu names share one
    model (LLVM 19: cortex-a57 ... cortex-a78 and cortex-x1 all use the Cortex-A57
    model). The model is read from llvm-mca's resource names for a one-instruction
    block: their common prefix, less a trailing "Unit" ("A57", "N1", "CortexA55",
    "A53", "Kryo"). Checked on LLVM 19.1.7 over all its AArch64 -mcpu names that
    have a model: -mcpu names with the same label give identical llvm-mca reports
    (per-instruction latency, micro-ops and throughput, resource pressure, cycles)
    for a block of 29 integer, load/store and NEON instructions, and names with
    different labels give different reports.

    Raises:
        ConfigError: llvm-mca does not know ``mcpu``, or it has no scheduling model.
        DeviceOutputError: llvm-mca reported no resources, or no common prefix.
        DeviceUnavailableError: llvm-mca-19 is not installed.
    """
    model = SchedModel(mcpu)
    report = _run_mca(["add x0, x0, x1"], ["the probe instruction"], model)
    names = [r.split(".")[0] for r in report["TargetInfo"]["Resources"]]
    prefix = os.path.commonprefix(names) if names else ""
    prefix = prefix[:-len("Unit")] if prefix.endswith("Unit") else prefix
    if not prefix:
        raise DeviceOutputError(f"llvm-mca -mcpu={mcpu} names no resources with a common prefix: {names}")
    return prefix

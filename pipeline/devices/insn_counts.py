"""The qemu plugin's count file (``insn_count.c``), parsed; instructions per inference.

The file holds per-region class counts, then the block profile (each translated
block run in an inference region, with its words and execution count)::

    insn_count 2 classes=simd_mac,simd_other,ldst,branch,scalar
    region index=0 total=7568 simd_mac=0 simd_other=40 ldst=2522 branch=1563 scalar=3443
    ...
    block vaddr=0x550922c670 insns=4 count=2 words=b00001b0,f9470211,91380210,d61f0220
    ...
    end regions=4 total=409819239 profiled=39716 blocks=1627

A pure parser (``runner.py`` drives qemu): anything that does not match exactly
raises :class:`DeviceOutputError`, never zeros or partial results.
"""

import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from pipeline.errors import DeviceOutputError

CLASSES = ("simd_mac", "simd_other", "ldst", "branch", "scalar")
COUNTS_VERSION = 2
COUNTS_HEADER = f"insn_count {COUNTS_VERSION} classes=" + ",".join(CLASSES)
# Guest regions before the per-input ones (see guest_runner.py).
MARKER_REGION, WARMUP_REGION, FIRST_INFERENCE_REGION = 0, 1, 2

_REGION = re.compile(
    r"region index=(\d+) total=(\d+) " + " ".join(rf"{c}=(\d+)" for c in CLASSES))
_BLOCK = re.compile(
    r"block vaddr=0x([0-9a-f]+) insns=(\d+) count=(\d+) words=([0-9a-f]{8}(?:,[0-9a-f]{8})*)")
_END = re.compile(r"end regions=(\d+) total=(\d+) profiled=(\d+) blocks=(\d+)")
INSN_BYTES = 4  # every A64 instruction


@dataclass(frozen=True)
class ClassCounts:
    """Instructions executed, per class of ``CLASSES`` (see plugin/a64_classes.h)."""

    simd_mac: int
    simd_other: int
    ldst: int
    branch: int
    scalar: int

    @property
    def total(self) -> int:
        return self.simd_mac + self.simd_other + self.ldst + self.branch + self.scalar

    def minus(self, other: "ClassCounts") -> "ClassCounts":
        """Class-wise difference; raises if any class would go negative."""
        diff = {c: getattr(self, c) - getattr(other, c) for c in CLASSES}
        negative = [c for c, v in diff.items() if v < 0]
        if negative:
            raise DeviceOutputError(
                f"region count below the marker overhead in {', '.join(negative)}: "
                f"{self.to_dict()} - {other.to_dict()}")
        return ClassCounts(**diff)

    def to_dict(self) -> Dict[str, int]:
        return {c: getattr(self, c) for c in CLASSES}


@dataclass(frozen=True)
class Block:
    """A translated block of guest code and how often it ran.

    Attributes:
        vaddr: the guest address of its first instruction.
        words: its A64 instructions, as 32-bit words.
        count: how often it ran, over all profiled inferences together.
    """

    vaddr: int
    words: Tuple[int, ...]
    count: int

    @property
    def insns(self) -> int:
        return len(self.words)

    @property
    def executed(self) -> int:
        """Instructions it executed: ``count * insns``."""
        return self.count * self.insns

    @property
    def end(self) -> int:
        """The address after its last instruction."""
        return self.vaddr + INSN_BYTES * self.insns


@dataclass(frozen=True)
class InsnCounts:
    """One plugin count file.

    Attributes:
        regions: per-region class counts, in region order.
        process_total: instructions of the whole process.
        blocks: every block run in a profiled region, as the plugin wrote them.
        profiled: the blocks' executed instructions (the end line's ``profiled``).
    """

    regions: Tuple[ClassCounts, ...]
    process_total: int
    blocks: Tuple[Block, ...]
    profiled: int


def parse_insn_counts(text: str, expect_regions: Optional[int] = None) -> InsnCounts:
    """Parses the insn_count plugin's output file (version 2).

    Args:
        text: the file's contents.
        expect_regions: if given, the exact number of regions required.

    Raises:
        DeviceOutputError: wrong header (a version 1 file is named as such), a
            line that does not match, a region index out of sequence or a region
            after the blocks, a total that is not the sum of its classes, a block
            whose words disagree with its ``insns``, that never ran or is listed
            twice, an end line whose ``blocks``/``profiled`` disagree with the
            block lines, an ``error`` line from the plugin, or no ``end`` line
            (the guest died).
    """
    lines = text.splitlines()
    _check_header(lines[0] if lines else None)
    regions: List[ClassCounts] = []
    blocks: List[Block] = []
    end = None
    for n, line in enumerate(lines[1:], start=2):
        if end is not None:
            raise DeviceOutputError(
                f"instruction counts line {n}: text after the end line: {line!r}")
        if line.startswith("error "):
            raise DeviceOutputError(f"instruction counts: plugin reported: {line[6:]}")
        if line.startswith("block "):
            blocks.append(_block(line, n))
            continue
        m = _REGION.fullmatch(line)
        if m:
            if blocks:
                raise DeviceOutputError(f"instruction counts line {n}: region after the block lines")
            regions.append(_region(m, n, len(regions)))
            continue
        m = _END.fullmatch(line)
        if m:
            end = _end(m, len(regions), blocks)
            continue
        raise DeviceOutputError(f"instruction counts line {n}: unrecognised: {line!r}")
    if end is None:
        raise DeviceOutputError(
            f"instruction counts: no end line after {len(regions)} regions "
            "(the guest crashed or was killed)")
    if expect_regions is not None and len(regions) != expect_regions:
        raise DeviceOutputError(
            f"instruction counts: {len(regions)} regions, expected {expect_regions}")
    return InsnCounts(regions=tuple(regions), process_total=end[0], blocks=tuple(blocks),
                      profiled=end[1])


def _check_header(header: Optional[str]) -> None:
    if header == COUNTS_HEADER:
        return
    if header is not None and header.startswith("insn_count 1 "):
        raise DeviceOutputError(
            "instruction counts: a version 1 file (no block profile) from an older plugin; "
            f"expected {COUNTS_HEADER!r}: rebuild the ARM runtime and run again")
    got = repr(header) if header is not None else "an empty file"
    raise DeviceOutputError(f"instruction counts: expected header {COUNTS_HEADER!r}, got {got}")


def _region(m: "re.Match", n: int, expect_index: int) -> ClassCounts:
    index, total, *per_class = (int(v) for v in m.groups())
    if index != expect_index:
        raise DeviceOutputError(
            f"instruction counts line {n}: region index {index}, expected {expect_index}")
    counts = ClassCounts(*per_class)
    if counts.total != total:
        raise DeviceOutputError(
            f"instruction counts line {n}: total {total} != sum of classes {counts.total}")
    return counts


def _block(line: str, n: int) -> Block:
    m = _BLOCK.fullmatch(line)
    if not m:
        shown = line if len(line) <= 100 else line[:100] + "..."
        raise DeviceOutputError(f"instruction counts line {n}: malformed block line: {shown!r}")
    vaddr, insns, count = int(m.group(1), 16), int(m.group(2)), int(m.group(3))
    words = tuple(int(w, 16) for w in m.group(4).split(","))
    if len(words) != insns:
        raise DeviceOutputError(f"instruction counts line {n}: block at 0x{vaddr:x} says "
                                f"insns={insns} but lists {len(words)} words")
    if count == 0:
        raise DeviceOutputError(f"instruction counts line {n}: block at 0x{vaddr:x} has count=0 "
                                "(the plugin writes only blocks that ran)")
    return Block(vaddr=vaddr, words=words, count=count)


def _end(m: "re.Match", regions: int, blocks: Sequence[Block]) -> Tuple[int, int]:
    """Checks the end line against the lines above; returns (process total, profiled)."""
    said_regions, total, profiled, said_blocks = (int(v) for v in m.groups())
    if said_regions != regions:
        raise DeviceOutputError(
            f"instruction counts: end line says {said_regions} regions, file has {regions}")
    if said_blocks != len(blocks):
        raise DeviceOutputError(
            f"instruction counts: end line says {said_blocks} blocks, file has {len(blocks)}")
    executed = sum(b.executed for b in blocks)
    if profiled != executed:
        raise DeviceOutputError(f"instruction counts: end line says profiled={profiled}, the "
                                f"block lines execute {executed} instructions")
    twice = [b for b, k in Counter((b.vaddr, b.words) for b in blocks).items() if k > 1]
    if twice:
        raise DeviceOutputError(f"instruction counts: the block at 0x{twice[0][0]:x} is listed "
                                "more than once (the plugin merges re-translations)")
    return total, profiled


@dataclass(frozen=True)
class InferenceCounts:
    """Instructions per inference, marker overhead already subtracted.

    Attributes:
        per_inference: one entry per input, in input order.
        warmup: the first (uncounted) inference on input 0, which may include
            one-time work such as weight packing.
        marker_overhead: instructions of an empty region (the lseek markers in the
            guest's python), subtracted from every other region.
    """

    per_inference: Tuple[ClassCounts, ...]
    warmup: ClassCounts
    marker_overhead: ClassCounts

    @property
    def totals(self) -> Tuple[int, ...]:
        return tuple(c.total for c in self.per_inference)

    @property
    def median(self) -> ClassCounts:
        """The counts of the median inference (lower median: an observed run)."""
        order = sorted(range(len(self.per_inference)), key=lambda i: self.per_inference[i].total)
        return self.per_inference[order[(len(order) - 1) // 2]]


def inference_counts(counts: InsnCounts, samples: int) -> InferenceCounts:
    """Splits a count file into marker overhead, warm-up and one count per input.

    Raises:
        DeviceOutputError: the file does not hold exactly ``2 + samples`` regions,
            or a region counts fewer instructions than the empty one.
    """
    check_inference_regions(counts, samples)
    overhead = counts.regions[MARKER_REGION]
    return InferenceCounts(
        per_inference=tuple(r.minus(overhead) for r in counts.regions[FIRST_INFERENCE_REGION:]),
        warmup=counts.regions[WARMUP_REGION].minus(overhead),
        marker_overhead=overhead)


def check_inference_regions(counts: InsnCounts, samples: int) -> None:
    """Raises DeviceOutputError unless ``counts`` holds the regions of ``samples`` inferences."""
    expected = FIRST_INFERENCE_REGION + samples
    if len(counts.regions) != expected:
        raise DeviceOutputError(
            f"instruction counts: {len(counts.regions)} regions for {samples} inputs, "
            f"expected {expected}")

"""Pure parsers of what an emulated device run leaves behind.

Nothing here runs anything: ``runner.py`` drives qemu, these functions turn its
files into dataclasses and raise :class:`DeviceOutputError` on anything that does
not match exactly (a missing line, a count that does not add up, an unknown key),
never returning zeros or partial results.

Inputs:
- the plugin's count file (``insn_count.c``): per-region class counts, then the
  block profile (each translated block run in an inference region, with its words
  and execution count)::

      insn_count 2 classes=simd_mac,simd_other,ldst,branch,scalar
      region index=0 total=7568 simd_mac=0 simd_other=40 ldst=2522 branch=1563 scalar=3443
      ...
      block vaddr=0x550922c670 insns=4 count=2 words=b00001b0,f9470211,91380210,d61f0220
      ...
      end regions=4 total=409819239 profiled=39716 blocks=1627

- the guest's ``result.json`` (``guest_runner.py``, format "mm-guest-result 1");
- a runtime's load error text, e.g. "Didn't find op for builtin opcode
  'FULLY_CONNECTED' version '12'".
"""

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.errors import ConfigError, DeviceOutputError

CLASSES = ("simd_mac", "simd_other", "ldst", "branch", "scalar")
COUNTS_VERSION = 2
COUNTS_HEADER = f"insn_count {COUNTS_VERSION} classes=" + ",".join(CLASSES)
GUEST_FORMAT = "mm-guest-result 1"
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
class LoadError:
    """Why a runtime refused a model; ``op``/``version`` when the message names them."""

    message: str
    op: Optional[str] = None
    version: Optional[int] = None


_LOAD_ERRORS = (
    (re.compile(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'"), True),
    (re.compile(r"Encountered unresolved custom op: ([\w.\-]+)"), False),
    (re.compile(r"Op builtin_code out of range: (\d+)"), False),
)


def parse_load_error(message: str) -> LoadError:
    """Extracts the op (and version) a runtime could not resolve from its message.

    The message is kept whole; ``op`` and ``version`` stay None when it names no op
    (e.g. a corrupt file), which is a fact about the message, not a parse failure.
    An op known only by number is named ``builtin_code <n>``.
    """
    text = message.strip()
    if not text:
        raise DeviceOutputError("load error: empty message")
    for pattern, versioned in _LOAD_ERRORS:
        m = pattern.search(text)
        if m:
            if versioned:
                return LoadError(text, m.group(1), int(m.group(2)))
            op = m.group(1)
            return LoadError(text, f"builtin_code {op}" if op.isdigit() else op)
    return LoadError(text)


@dataclass(frozen=True)
class TensorIO:
    """A model input or output as the guest runtime reports it."""

    name: str
    shape: Tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: Tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class GuestResult:
    """The guest's ``result.json``. Fields after ``load_error`` are set iff loaded."""

    runtime: str
    runtime_version: str
    numpy_version: str
    threads: int
    loaded: bool
    load_error: Optional[LoadError]
    input: Optional[TensorIO] = None
    output: Optional[TensorIO] = None
    tensors: Tuple[TensorInfo, ...] = ()
    samples: int = 0
    wall_s: Tuple[float, ...] = ()


def _take(obj: dict, key: str, types, where: str):
    if key not in obj:
        raise DeviceOutputError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise DeviceOutputError(f"{where}: {key!r} is {value!r}, expected {_names(types)}")
    return value


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _names(types) -> str:
    return " or ".join(t.__name__ for t in _tuple(types))


def _no_extra(obj: dict, allowed, where: str) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise DeviceOutputError(f"{where}: unexpected keys {extra}")


def _shape(value, where: str) -> Tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
        raise DeviceOutputError(f"{where}: shape {value!r} is not a list of ints")
    return tuple(value)


def _io(obj, where: str) -> TensorIO:
    if not isinstance(obj, dict):
        raise DeviceOutputError(f"{where}: expected an object, got {obj!r}")
    keys = ("name", "shape", "dtype", "scale", "zero_point")
    _no_extra(obj, keys, where)
    return TensorIO(name=_take(obj, "name", str, where),
                    shape=_shape(_take(obj, "shape", list, where), where),
                    dtype=_take(obj, "dtype", str, where),
                    scale=float(_take(obj, "scale", (int, float), where)),
                    zero_point=_take(obj, "zero_point", int, where))


def _tensor(obj, where: str) -> TensorInfo:
    if not isinstance(obj, dict):
        raise DeviceOutputError(f"{where}: expected an object, got {obj!r}")
    keys = ("index", "name", "shape", "dtype", "nbytes")
    _no_extra(obj, keys, where)
    info = TensorInfo(index=_take(obj, "index", int, where), name=_take(obj, "name", str, where),
                      shape=_shape(_take(obj, "shape", list, where), where),
                      dtype=_take(obj, "dtype", str, where),
                      nbytes=_take(obj, "nbytes", int, where))
    if info.nbytes < 0:
        raise DeviceOutputError(f"{where}: negative nbytes {info.nbytes}")
    return info


_BASE_KEYS = ("format", "runtime", "runtime_version", "numpy_version", "threads", "loaded",
              "load_error")
_RUN_KEYS = ("input", "output", "tensors", "samples", "wall_s", "regions")
_REGION_ROLES = {"marker_overhead": MARKER_REGION, "warmup": WARMUP_REGION,
                 "first_inference": FIRST_INFERENCE_REGION}


def parse_guest_result(text: str) -> GuestResult:
    """Parses the guest's result.json.

    Raises:
        DeviceOutputError: not JSON, another format, a missing or unexpected key, a
            wrongly typed value, or a list whose length disagrees with ``samples``.
    """
    where = "guest result"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DeviceOutputError(f"{where}: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise DeviceOutputError(f"{where}: expected a JSON object")
    fmt = _take(obj, "format", str, where)
    if fmt != GUEST_FORMAT:
        raise DeviceOutputError(f"{where}: format {fmt!r}, expected {GUEST_FORMAT!r}")
    loaded = _take(obj, "loaded", bool, where)
    _no_extra(obj, _BASE_KEYS + (_RUN_KEYS if loaded else ()), where)
    base = dict(runtime=_take(obj, "runtime", str, where),
                runtime_version=_take(obj, "runtime_version", str, where),
                numpy_version=_take(obj, "numpy_version", str, where),
                threads=_take(obj, "threads", int, where), loaded=loaded)
    if not loaded:
        message = _take(obj, "load_error", str, where)
        return GuestResult(load_error=parse_load_error(message), **base)
    if obj.get("load_error") is not None:
        raise DeviceOutputError(f"{where}: loaded, yet load_error is {obj['load_error']!r}")
    samples = _take(obj, "samples", int, where)
    if samples < 1:
        raise DeviceOutputError(f"{where}: samples is {samples}, expected at least 1")
    wall = _take(obj, "wall_s", list, where)
    if len(wall) != samples or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       and v >= 0 for v in wall):
        raise DeviceOutputError(f"{where}: wall_s must hold {samples} non-negative numbers")
    regions = _take(obj, "regions", dict, where)
    if regions != _REGION_ROLES:
        raise DeviceOutputError(f"{where}: regions {regions!r}, expected {_REGION_ROLES!r}")
    tensors = _take(obj, "tensors", list, where)
    return GuestResult(
        load_error=None,
        input=_io(_take(obj, "input", dict, where), f"{where} input"),
        output=_io(_take(obj, "output", dict, where), f"{where} output"),
        tensors=tuple(_tensor(t, f"{where} tensor {i}") for i, t in enumerate(tensors)),
        samples=samples, wall_s=tuple(float(v) for v in wall), **base)


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
    _check_inference_regions(counts, samples)
    overhead = counts.regions[MARKER_REGION]
    return InferenceCounts(
        per_inference=tuple(r.minus(overhead) for r in counts.regions[FIRST_INFERENCE_REGION:]),
        warmup=counts.regions[WARMUP_REGION].minus(overhead),
        marker_overhead=overhead)


def _check_inference_regions(counts: InsnCounts, samples: int) -> None:
    expected = FIRST_INFERENCE_REGION + samples
    if len(counts.regions) != expected:
        raise DeviceOutputError(
            f"instruction counts: {len(counts.regions)} regions for {samples} inputs, "
            f"expected {expected}")


# -- block profile ----------------------------------------------------------------

#: Share of the executed instructions the hot blocks of a stored profile hold.
HOT_COVERAGE = 0.99


@dataclass(frozen=True)
class BlockProfile:
    """The blocks run in the inference regions of one single-threaded run.

    Counts are raw, over all ``inferences`` together (a block's count per inference
    is ``count / inferences``, exact when every inference ran the same code), and
    include the markers' own instructions in each region (~7,500, see
    :attr:`InferenceCounts.marker_overhead`).
    """

    blocks: Tuple[Block, ...]
    inferences: int

    @property
    def instructions(self) -> int:
        """Instructions executed over all profiled inferences."""
        return sum(b.executed for b in self.blocks)


def block_profile(counts: InsnCounts, samples: int) -> BlockProfile:
    """The block profile of a count file whose regions 2.. are ``samples`` inferences.

    The plugin profiles regions from :data:`FIRST_INFERENCE_REGION` on (its
    ``profile_from``), counting a block and its region at block start in the same
    callback: in a single-threaded guest the blocks' instructions equal the sum of
    those regions' totals exactly, which is checked.

    Raises:
        DeviceOutputError: not ``2 + samples`` regions, blocks that do not add up to
            the profiled regions' totals, or two blocks that hold different words
            at the same address (the guest rewrote its code: JIT or self-modifying
            code).
    """
    _check_inference_regions(counts, samples)
    measured = sum(r.total for r in counts.regions[FIRST_INFERENCE_REGION:])
    if counts.profiled != measured:
        raise DeviceOutputError(
            f"block profile: the blocks execute {counts.profiled} instructions, regions "
            f"{FIRST_INFERENCE_REGION}-{len(counts.regions) - 1} count {measured}; they must be "
            "equal (was the plugin's profile_from not 2, or the guest multi-threaded?)")
    _check_code_unchanged(counts.blocks)
    return BlockProfile(blocks=counts.blocks, inferences=samples)


def _check_code_unchanged(blocks: Sequence[Block]) -> None:
    """Blocks may overlap (a jump into a block starts a new one) but must agree on words."""
    seen: Dict[int, Tuple[int, int]] = {}  # address -> (word, vaddr of its first block)
    for b in blocks:
        for i, word in enumerate(b.words):
            address = b.vaddr + INSN_BYTES * i
            first, where = seen.setdefault(address, (word, b.vaddr))
            if first != word:
                raise DeviceOutputError(
                    f"block profile: the guest changed code at 0x{address:x} ({first:08x} in the "
                    f"block at 0x{where:x}, {word:08x} in the block at 0x{b.vaddr:x}): JIT or "
                    "self-modifying code; the block profile cannot be trusted")


def is_branch(word: int) -> bool:
    """B, BL, B.cond, CBZ/CBNZ, TBZ/TBNZ, BR/BLR/RET: the ``branch`` class of a64_classes.h."""
    return ((word & 0x7C000000) == 0x14000000      # B, BL
            or (word & 0x7E000000) == 0x34000000   # CBZ, CBNZ
            or (word & 0x7E000000) == 0x36000000   # TBZ, TBNZ
            or (word & 0xFE000000) == 0x54000000   # B.cond
            or (word & 0xFE000000) == 0xD6000000)  # BR, BLR, RET, ...


def _ends_flow(word: int) -> bool:
    """A branch, or an exception generation (SVC, HVC, SMC, BRK, HLT): no plain fall-through."""
    return is_branch(word) or (word & 0xFF000000) == 0xD4000000


def rejoin(blocks: Sequence[Block]) -> Tuple[Block, ...]:
    """Re-joins straight-line code that QEMU split into several blocks.

    QEMU ends a block at a page boundary and at its size limit too. Block A is
    joined with block B when B starts where A ends, A's last instruction falls
    through (no branch, SVC, BRK...), B is the only block starting there, and A is
    the only such block with B's count: since A always falls into B, equal counts
    mean B is entered from A alone. Chains A, B, C... join into one.

    Returns:
        The blocks, joined, ordered by address (then words).
    """
    order = sorted(blocks, key=lambda b: (b.vaddr, b.words))
    starts = Counter(b.vaddr for b in order)
    single = {b.vaddr: i for i, b in enumerate(order) if starts[b.vaddr] == 1}
    falls_into: Dict[int, List[int]] = defaultdict(list)
    for i, a in enumerate(order):
        j = single.get(a.end)
        if j is not None and order[j].count == a.count and not _ends_flow(a.words[-1]):
            falls_into[j].append(i)
    successor = {into[0]: j for j, into in falls_into.items() if len(into) == 1}
    joined = set(successor.values())
    out = []
    for i, head in enumerate(order):
        if i in joined:
            continue
        words = head.words
        while i in successor:
            i = successor[i]
            words += order[i].words
        out.append(Block(vaddr=head.vaddr, words=words, count=head.count))
    return tuple(out)


def hot_blocks(profile: BlockProfile,
               coverage: float = HOT_COVERAGE) -> Tuple[Tuple[Block, ...], int]:
    """The fewest blocks holding at least ``coverage`` of the executed instructions.

    Blocks are taken by executed instructions, largest first (ties: lower address,
    then fewer words), so the choice is deterministic.

    Returns:
        The hot blocks, in that order, and the executed instructions of the rest.

    Raises:
        ConfigError: ``coverage`` outside (0, 1].
    """
    if not 0 < coverage <= 1:
        raise ConfigError(f"hot block coverage must be in (0, 1], got {coverage}")
    ranked = sorted(profile.blocks, key=lambda b: (-b.executed, b.vaddr, b.insns))
    total = profile.instructions
    hot: List[Block] = []
    covered = 0
    for b in ranked:
        if covered >= coverage * total:
            break
        hot.append(b)
        covered += b.executed
    return tuple(hot), total - covered


@dataclass(frozen=True)
class HotProfile:
    """The hot part of a block profile: what a device result stores (JSON) for pricing.

    Attributes:
        hot: the hot blocks (see :func:`hot_blocks`), raw counts.
        cold_instructions: executed instructions of all other blocks.
        inferences: inferences the counts cover.
        coverage: the share the hot blocks were chosen to hold.
    """

    hot: Tuple[Block, ...]
    cold_instructions: int
    inferences: int
    coverage: float

    @property
    def instructions(self) -> int:
        """Executed instructions over all inferences, hot and cold."""
        return sum(b.executed for b in self.hot) + self.cold_instructions

    @classmethod
    def of(cls, profile: BlockProfile, coverage: float = HOT_COVERAGE) -> "HotProfile":
        hot, cold = hot_blocks(profile, coverage)
        return cls(hot=hot, cold_instructions=cold, inferences=profile.inferences,
                   coverage=coverage)

    def to_dict(self) -> Dict[str, Any]:
        return {"inferences": self.inferences, "instructions": self.instructions,
                "hot": [{"vaddr": b.vaddr, "words": list(b.words), "count": b.count}
                        for b in self.hot],
                "cold_instructions": self.cold_instructions, "coverage": self.coverage}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HotProfile":
        """Reads :meth:`to_dict`'s output back.

        Raises:
            DeviceOutputError: a missing, unexpected or wrongly typed key, a block
                without words or that never ran, a word that is not 32 bits, or an
                ``instructions`` that is not the hot blocks' plus the cold ones.
        """
        where = "block profile"
        if not isinstance(d, Mapping):
            raise DeviceOutputError(f"{where}: expected an object, got {d!r}")
        _no_extra(d, ("inferences", "instructions", "hot", "cold_instructions", "coverage"), where)
        profile = cls(hot=tuple(_hot_block(b, f"{where} hot block {i}")
                                for i, b in enumerate(_take(d, "hot", list, where))),
                      cold_instructions=_take(d, "cold_instructions", int, where),
                      inferences=_take(d, "inferences", int, where),
                      coverage=float(_take(d, "coverage", (int, float), where)))
        if profile.inferences < 1 or profile.cold_instructions < 0 or not 0 < profile.coverage <= 1:
            raise DeviceOutputError(
                f"{where}: inferences {profile.inferences} (>= 1), cold_instructions "
                f"{profile.cold_instructions} (>= 0), coverage {profile.coverage} (in (0, 1])")
        said = _take(d, "instructions", int, where)
        if said != profile.instructions:
            raise DeviceOutputError(f"{where}: instructions {said}, but the hot blocks and "
                                    f"cold_instructions add up to {profile.instructions}")
        return profile


def _hot_block(obj: Any, where: str) -> Block:
    if not isinstance(obj, dict):
        raise DeviceOutputError(f"{where}: expected an object, got {obj!r}")
    _no_extra(obj, ("vaddr", "words", "count"), where)
    words = _take(obj, "words", list, where)
    if not words or not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w < 2**32
                            for w in words):
        raise DeviceOutputError(f"{where}: words must be a non-empty list of 32-bit words")
    block = Block(vaddr=_take(obj, "vaddr", int, where), words=tuple(words),
                  count=_take(obj, "count", int, where))
    if block.count < 1 or block.vaddr < 0:
        raise DeviceOutputError(f"{where}: count {block.count} (>= 1), vaddr {block.vaddr} (>= 0)")
    return block

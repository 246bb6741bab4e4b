"""The block profile of a count file: the translated blocks run in the inference
regions, checked against the regions' totals, re-joined where QEMU split straight-line
code, and its hot part (:class:`HotProfile`), which a device result stores.
"""

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from pipeline.devices.checked_json import no_extra, take
from pipeline.devices.insn_counts import (FIRST_INFERENCE_REGION, INSN_BYTES, Block, InsnCounts,
                                          check_inference_regions)
from pipeline.errors import ConfigError, DeviceOutputError

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
    check_inference_regions(counts, samples)
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
        no_extra(d, ("inferences", "instructions", "hot", "cold_instructions", "coverage"), where)
        profile = cls(hot=tuple(_hot_block(b, f"{where} hot block {i}")
                                for i, b in enumerate(take(d, "hot", list, where))),
                      cold_instructions=take(d, "cold_instructions", int, where),
                      inferences=take(d, "inferences", int, where),
                      coverage=float(take(d, "coverage", (int, float), where)))
        if profile.inferences < 1 or profile.cold_instructions < 0 or not 0 < profile.coverage <= 1:
            raise DeviceOutputError(
                f"{where}: inferences {profile.inferences} (>= 1), cold_instructions "
                f"{profile.cold_instructions} (>= 0), coverage {profile.coverage} (in (0, 1])")
        said = take(d, "instructions", int, where)
        if said != profile.instructions:
            raise DeviceOutputError(f"{where}: instructions {said}, but the hot blocks and "
                                    f"cold_instructions add up to {profile.instructions}")
        return profile


def _hot_block(obj: Any, where: str) -> Block:
    if not isinstance(obj, dict):
        raise DeviceOutputError(f"{where}: expected an object, got {obj!r}")
    no_extra(obj, ("vaddr", "words", "count"), where)
    words = take(obj, "words", list, where)
    if not words or not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w < 2**32
                            for w in words):
        raise DeviceOutputError(f"{where}: words must be a non-empty list of 32-bit words")
    block = Block(vaddr=take(obj, "vaddr", int, where), words=tuple(words),
                  count=take(obj, "count", int, where))
    if block.count < 1 or block.vaddr < 0:
        raise DeviceOutputError(f"{where}: count {block.count} (>= 1), vaddr {block.vaddr} (>= 0)")
    return block

"""The block-level search space: MobileNetV3-style stages, each choosing its own blocks.

A candidate is a :class:`models.genotype.Genotype` at an input size. The space is a
skeleton of stages (:data:`SKELETON`: stride and base width of each, after
MobileNetV3-Small's resolution steps) in which every stage chooses

* the depthwise kernel size (:data:`KERNELS`),
* the expansion ratio (:data:`EXPANSIONS`; 1: no expand conv),
* the number of blocks (:data:`DEPTHS`; a stride-1 stage may also be dropped),
* the output width, as a multiple of the stage's base width (:data:`WIDTH_MULTS`),
* squeeze-excite on or off,

and the network chooses the width of its stem (:data:`STEMS`), of its 1x1 head conv
(:data:`HEADS`) and of the dense layer after the pool (:data:`HEAD_FCS`, 0: none),
where hard-swish starts (:data:`HSWISH_FROM`: the stage from which blocks use it;
past the last stage, none do) and its input resolution (the recipe's
``search.input_sizes``). The stem and head matter most on small in-order cores: on
camera-a53 at 32x32 the 576-channel head with its 1024-unit dense layer is ~2 ms, and
a 16-channel stem with the first block at full resolution another ~2.7 ms, of a
~7 ms network (docs/search.md). The hand-designed MobileNetV2 and V3 networks are
named points of the same genotype family (:func:`models.genotype.named`).

:data:`SPACE` holds every option; :data:`FIRST` is the space as it first was (no
expansion 1, no 4-channel stem, no dropped stage), which :func:`sample` draws from so
that seeded draws (the per-block table's calibration genotypes) stay the same.
:func:`least_work` is the genotype that computes least: the space's floor
(:mod:`pipeline.search.floor`).
"""

import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from models.rounding import make_divisible
from models.genotype import Genotype, Stage


@dataclass(frozen=True)
class StageSlot:
    """One stage of the skeleton: its stride and base output width."""

    stride: int
    base_width: int


#: Stage strides and base widths (MobileNetV3-Small's steps: 16, 24, 40, 48, 96 channels).
SKELETON: Tuple[StageSlot, ...] = (StageSlot(2, 16), StageSlot(2, 24), StageSlot(2, 40), StageSlot(1, 48),
                                   StageSlot(2, 96))
KERNELS = (3, 5)
#: Expansion ratios (1: no expand conv, as in MobileNetV3-Small's first block).
EXPANSIONS = (1, 3, 4, 6)
DEPTHS = (1, 2, 3)
#: A stage of stride 1 may also be dropped (depth 0): the network keeps its
#: resolution steps with one stage fewer.
DROP_DEPTH = 0
WIDTH_MULTS = (0.5, 0.75, 1.0, 1.25)
#: Hard-swish in the stages from this index on (len(SKELETON): nowhere).
HSWISH_FROM = (2, 3, len(SKELETON))
#: Stem widths, head conv widths and dense-layer units (0: none) the network chooses
#: from; the largest of each is MobileNetV3-Small's at width 1.
STEMS = (4, 8, 16)
HEADS = (288, 576)
HEAD_FCS = (0, 512, 1024)


@dataclass(frozen=True)
class Choices:
    """The options of each choice of the space (:data:`SPACE`) or of a part of it (:data:`FIRST`)."""

    kernels: Tuple[int, ...]
    expansions: Tuple[float, ...]
    depths: Tuple[int, ...]
    width_mults: Tuple[float, ...]
    hswish_from: Tuple[int, ...]
    stems: Tuple[int, ...]
    heads: Tuple[int, ...]
    head_fcs: Tuple[int, ...]
    drop_stride1: bool = False

    def depths_of(self, slot: StageSlot) -> Tuple[int, ...]:
        """The depths ``slot`` may choose (:data:`DROP_DEPTH` too for a stride-1 stage, where allowed)."""
        return ((DROP_DEPTH,) if self.drop_stride1 and slot.stride == 1 else ()) + tuple(self.depths)

    def size(self) -> int:
        """How many genotypes these choices hold (at one input size)."""
        n = len(self.hswish_from) * len(self.stems) * len(self.heads) * len(self.head_fcs)
        for slot in SKELETON:
            n *= len(self.kernels) * len(self.expansions) * len(self.width_mults) * 2 * len(self.depths_of(slot))
        return n


#: Bump when :data:`SPACE` changes: stored block studies of another space are left alone.
SPACE_VERSION = 2
#: The space the search proposes from.
SPACE = Choices(KERNELS, EXPANSIONS, DEPTHS, WIDTH_MULTS, HSWISH_FROM, STEMS, HEADS, HEAD_FCS, drop_stride1=True)
#: The space's first choices, before expansion 1, the 4-channel stem and dropped
#: stages: what :func:`sample` draws from, so the table's calibration genotypes (and
#: every seeded draw) stay what they were.
FIRST = Choices(KERNELS, (3, 4, 6), DEPTHS, WIDTH_MULTS, HSWISH_FROM, (8, 16), HEADS, HEAD_FCS)


@dataclass(frozen=True)
class StageChoice:
    """What one stage chose: kernel, expansion, depth, width multiple, squeeze-excite."""

    kernel: int
    expand: float
    depth: int
    width_mult: float
    se: bool


@dataclass(frozen=True)
class Frame:
    """What the network around the stages chose: stem width, head width, dense units."""

    stem: int = 16
    head: int = 576
    head_fc: int = 1024


def genotype_of(choices: Sequence[StageChoice], hswish_from: int, frame: Frame = Frame()) -> Genotype:
    """The genotype of per-stage ``choices`` (one per :data:`SKELETON` slot) in ``frame``;
    a stage of depth :data:`DROP_DEPTH` is left out.

    Raises:
        ValueError: a choice outside :data:`SPACE`, or a wrong number of them.
    """
    if len(choices) != len(SKELETON):
        raise ValueError(f"block space: expected {len(SKELETON)} stage choices, got {len(choices)}")
    if hswish_from not in HSWISH_FROM:
        raise ValueError(f"block space: hswish_from must be one of {HSWISH_FROM}; got {hswish_from!r}")
    for name, value, allowed in (("stem", frame.stem, STEMS), ("head", frame.head, HEADS),
                                 ("head_fc", frame.head_fc, HEAD_FCS)):
        if value not in allowed:
            raise ValueError(f"block space: {name} must be one of {allowed}; got {value!r}")
    stages = []
    for i, (slot, c) in enumerate(zip(SKELETON, choices)):
        for name, value, allowed in (("kernel", c.kernel, KERNELS), ("expand", c.expand, EXPANSIONS),
                                     ("depth", c.depth, SPACE.depths_of(slot)),
                                     ("width_mult", c.width_mult, WIDTH_MULTS)):
            if value not in allowed:
                raise ValueError(f"block space: stage {i + 1} {name} must be one of {allowed}; got {value!r}")
        if c.depth == DROP_DEPTH:
            continue
        stages.append(Stage(kernel=c.kernel, expand=c.expand, depth=c.depth,
                            width=make_divisible(slot.base_width * c.width_mult), se=bool(c.se),
                            act="hswish" if i >= hswish_from else "relu", stride=slot.stride))
    return Genotype(stem=frame.stem, stages=tuple(stages), head=frame.head, head_fc=frame.head_fc,
                    stem_act="hswish")


def sample(rng: random.Random, choices: Choices = FIRST) -> Genotype:
    """A genotype drawn uniformly, choice by choice, from ``choices`` (:data:`FIRST`: the
    draws of a seed stay what they were before the space grew)."""
    stages = [StageChoice(rng.choice(choices.kernels), rng.choice(choices.expansions),
                          rng.choice(choices.depths_of(slot)), rng.choice(choices.width_mults), rng.random() < 0.5)
              for slot in SKELETON]
    frame = Frame(rng.choice(choices.stems), rng.choice(choices.heads), rng.choice(choices.head_fcs))
    return genotype_of(stages, rng.choice(choices.hswish_from), frame)


def sample_distinct(seed: int, count: int, choices: Choices = FIRST) -> List[Genotype]:
    """``count`` distinct genotypes drawn from ``seed`` (the same on every call)."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        g = sample(rng, choices)
        if g.key() not in seen:
            seen.add(g.key())
            out.append(g)
    return out


def space_size(choices: Choices = SPACE) -> int:
    """How many genotypes the space holds (at one input size)."""
    return choices.size()


def least_work(choices: Choices = SPACE) -> Tuple[List[StageChoice], int, Frame]:
    """The choices of the genotype that computes least: the smallest kernel, expansion,
    depth (a stride-1 stage dropped where allowed), width and stem, head and dense
    layer, no squeeze-excite and no hard-swish.

    Each of these does a subset of what any other option of the same choice does, in
    its own part and in the parts after it (a narrower stage feeds a narrower input to
    the next block or the head; a fused ReLU is cheaper than a separate hard-swish), so
    no genotype of ``choices`` does less work (:mod:`pipeline.search.floor`).

    Returns:
        (per-stage choices, hswish_from, frame), as :func:`genotype_of` takes them.
    """
    stages = [StageChoice(min(choices.kernels), min(choices.expansions), min(choices.depths_of(slot)),
                          min(choices.width_mults), False) for slot in SKELETON]
    return stages, max(choices.hswish_from), Frame(min(choices.stems), min(choices.heads), min(choices.head_fcs))

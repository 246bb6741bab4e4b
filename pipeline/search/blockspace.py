"""The block-level search space: MobileNetV3-style stages, each choosing its own blocks.

A candidate is a :class:`models.genotype.Genotype` at an input size. The space is a
skeleton of stages (:data:`SKELETON`: stride and base width of each, after
MobileNetV3-Small's resolution steps) in which every stage chooses

* the depthwise kernel size (:data:`KERNELS`),
* the expansion ratio (:data:`EXPANSIONS`),
* the number of blocks (:data:`DEPTHS`),
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
EXPANSIONS = (3, 4, 6)
DEPTHS = (1, 2, 3)
WIDTH_MULTS = (0.5, 0.75, 1.0, 1.25)
#: Hard-swish in the stages from this index on (len(SKELETON): nowhere).
HSWISH_FROM = (2, 3, len(SKELETON))
#: Stem widths, head conv widths and dense-layer units (0: none) the network chooses
#: from; the largest of each is MobileNetV3-Small's at width 1.
STEMS = (8, 16)
HEADS = (288, 576)
HEAD_FCS = (0, 512, 1024)


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
    """The genotype of per-stage ``choices`` (one per :data:`SKELETON` slot) in ``frame``.

    Raises:
        ValueError: a choice outside the space, or a wrong number of them.
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
                                     ("depth", c.depth, DEPTHS), ("width_mult", c.width_mult, WIDTH_MULTS)):
            if value not in allowed:
                raise ValueError(f"block space: stage {i + 1} {name} must be one of {allowed}; got {value!r}")
        stages.append(Stage(kernel=c.kernel, expand=c.expand, depth=c.depth,
                            width=make_divisible(slot.base_width * c.width_mult), se=bool(c.se),
                            act="hswish" if i >= hswish_from else "relu", stride=slot.stride))
    return Genotype(stem=frame.stem, stages=tuple(stages), head=frame.head, head_fc=frame.head_fc,
                    stem_act="hswish")


def sample(rng: random.Random) -> Genotype:
    """A genotype drawn uniformly, choice by choice, from the space."""
    choices = [StageChoice(rng.choice(KERNELS), rng.choice(EXPANSIONS), rng.choice(DEPTHS),
                           rng.choice(WIDTH_MULTS), rng.random() < 0.5) for _ in SKELETON]
    frame = Frame(rng.choice(STEMS), rng.choice(HEADS), rng.choice(HEAD_FCS))
    return genotype_of(choices, rng.choice(HSWISH_FROM), frame)


def sample_distinct(seed: int, count: int) -> List[Genotype]:
    """``count`` distinct genotypes drawn from ``seed`` (the same on every call)."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        g = sample(rng)
        if g.key() not in seen:
            seen.add(g.key())
            out.append(g)
    return out


def space_size() -> int:
    """How many genotypes the space holds (at one input size)."""
    per_stage = len(KERNELS) * len(EXPANSIONS) * len(DEPTHS) * len(WIDTH_MULTS) * 2
    return per_stage ** len(SKELETON) * len(HSWISH_FROM) * len(STEMS) * len(HEADS) * len(HEAD_FCS)

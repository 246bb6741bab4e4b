"""Block-level architectures: a MobileNetV3-style network described stage by stage.

A :class:`Genotype` is a stem, a sequence of :class:`Stage` s and a head. Each stage
repeats one inverted-residual block (``models.blocks.inverted_residual``) ``depth``
times, choosing its depthwise kernel size, expansion ratio, output width,
squeeze-excite and activation; the first block of a stage has the stage's stride.
Widths are absolute channel counts (no width multiplier), so a genotype is one
network; the input resolution comes with the input shape at build time.

The hand-designed MobileNetV2 and V3 networks are points of this space
(:func:`named`): ``named("mobilenet_v3_small", 0.75)`` builds the same layers, with
the same shapes, as ``models.build_model("mobilenet_v3_small", 0.75, ...)``.

Genotypes are plain data: :meth:`Genotype.to_dict` / :meth:`Genotype.from_dict`
round-trip through YAML or JSON (a recipe's ``model.genotype``), and
:meth:`Genotype.key` is a short, stable name of the architecture.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from models.rounding import make_divisible

#: The activations a stage may use (V3's "NL" column; ReLU6 for MobileNetV2).
STAGE_ACTIVATIONS = ("relu", "relu6", "hswish")
#: Depthwise kernel sizes a stage may use.
KERNELS = (3, 5, 7)
#: Squeeze width of the SE block, as a fraction of the expanded channels (V3, sec. 5.3).
SE_RATIO = 0.25

_STAGE_KEYS = ("kernel", "expand", "depth", "width", "se", "act", "stride")
_GENOTYPE_KEYS = ("stem", "stages", "head", "head_fc", "stem_act")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Stage:
    """``depth`` inverted-residual blocks with one configuration.

    Attributes:
        kernel: depthwise kernel size (3, 5 or 7).
        expand: expansion ratio: a block expands its input channels to
            ``make_divisible(in_channels * expand)`` (1: no expand conv when that
            equals the input channels).
        depth: number of blocks (>= 1).
        width: output channels of every block of the stage.
        se: squeeze-and-excite after the depthwise conv.
        act: "relu", "relu6" or "hswish" (expand and depthwise stages).
        stride: stride of the first block (1 or 2); the others have stride 1.
    """

    kernel: int
    expand: float
    depth: int
    width: int
    se: bool = False
    act: str = "relu"
    stride: int = 1

    def __post_init__(self):
        where = "genotype stage"
        if self.kernel not in KERNELS or not _is_int(self.kernel):
            raise ValueError(f"{where}: kernel must be one of {KERNELS}; got {self.kernel!r}")
        if not _is_number(self.expand) or not 1 <= self.expand <= 12:
            raise ValueError(f"{where}: expand must be a number from 1 to 12; got {self.expand!r}")
        if not _is_int(self.depth) or not 1 <= self.depth <= 8:
            raise ValueError(f"{where}: depth must be an integer from 1 to 8; got {self.depth!r}")
        if not _is_int(self.width) or not 8 <= self.width <= 2048:
            raise ValueError(f"{where}: width must be an integer from 8 to 2048; got {self.width!r}")
        if not isinstance(self.se, bool):
            raise ValueError(f"{where}: se must be true or false; got {self.se!r}")
        if self.act not in STAGE_ACTIVATIONS:
            raise ValueError(f"{where}: act must be one of {', '.join(STAGE_ACTIVATIONS)}; got {self.act!r}")
        if self.stride not in (1, 2) or not _is_int(self.stride):
            raise ValueError(f"{where}: stride must be 1 or 2; got {self.stride!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"kernel": self.kernel, "expand": self.expand, "depth": self.depth, "width": self.width,
                "se": self.se, "act": self.act, "stride": self.stride}

    @classmethod
    def from_dict(cls, d: Any, index: int = 0) -> "Stage":
        if not isinstance(d, dict):
            raise ValueError(f"genotype stage {index + 1}: expected a mapping of {', '.join(_STAGE_KEYS)}; "
                             f"got {d!r}")
        unknown = sorted(set(d) - set(_STAGE_KEYS))
        if unknown:
            raise ValueError(f"genotype stage {index + 1}: unknown key(s) {', '.join(map(str, unknown))}; "
                             f"valid: {', '.join(_STAGE_KEYS)}")
        missing = [k for k in ("kernel", "expand", "depth", "width") if k not in d]
        if missing:
            raise ValueError(f"genotype stage {index + 1}: missing {', '.join(missing)}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(str(e).replace("genotype stage", f"genotype stage {index + 1}", 1)) from None


@dataclass(frozen=True)
class Genotype:
    """A whole network: stem conv, stages, 1x1 head conv, pool, dense ``head_fc``, classifier.

    Attributes:
        stem: output channels of the 3x3 stem conv (its stride is the build's
            ``first_stride``).
        stages: the stages, in order.
        head: channels of the 1x1 conv before the pool.
        head_fc: units of the dense layer after the pool (0: none, as in V2).
        stem_act: activation of the stem, head conv and head_fc ("hswish" in V3,
            "relu6" in V2).
    """

    stem: int
    stages: Tuple[Stage, ...]
    head: int
    head_fc: int = 0
    stem_act: str = "hswish"

    def __post_init__(self):
        # A stem may be as narrow as 4 channels (a cheap first conv at full resolution).
        for key, least in (("stem", 4), ("head", 8)):
            v = getattr(self, key)
            if not _is_int(v) or not least <= v <= 4096:
                raise ValueError(f"genotype: {key} must be an integer from {least} to 4096; got {v!r}")
        if not _is_int(self.head_fc) or not (self.head_fc == 0 or 8 <= self.head_fc <= 4096):
            raise ValueError(f"genotype: head_fc must be 0 or an integer from 8 to 4096; got {self.head_fc!r}")
        if self.stem_act not in ("relu", "relu6", "hswish"):
            raise ValueError(f"genotype: stem_act must be relu, relu6 or hswish; got {self.stem_act!r}")
        if not isinstance(self.stages, tuple) or not self.stages or \
                not all(isinstance(s, Stage) for s in self.stages):
            raise ValueError("genotype: stages must be a non-empty sequence of stages")

    @property
    def blocks(self) -> int:
        return sum(s.depth for s in self.stages)

    @property
    def downsampling(self) -> int:
        """The stride product of the stages (the stem's stride not included)."""
        out = 1
        for s in self.stages:
            out *= s.stride
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"stem": self.stem, "stem_act": self.stem_act, "stages": [s.to_dict() for s in self.stages],
                "head": self.head, "head_fc": self.head_fc}

    @classmethod
    def from_dict(cls, d: Any) -> "Genotype":
        """The genotype of ``d`` (as :meth:`to_dict` writes it).

        Raises:
            ValueError: a missing, unknown or out-of-range key, named.
        """
        if isinstance(d, Genotype):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"genotype: expected a mapping with {', '.join(_GENOTYPE_KEYS)}; got {d!r}")
        unknown = sorted(set(d) - set(_GENOTYPE_KEYS))
        if unknown:
            raise ValueError(f"genotype: unknown key(s) {', '.join(map(str, unknown))}; "
                             f"valid: {', '.join(_GENOTYPE_KEYS)}")
        missing = [k for k in ("stem", "stages", "head") if k not in d]
        if missing:
            raise ValueError(f"genotype: missing {', '.join(missing)}")
        stages = d["stages"]
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ValueError(f"genotype: stages must be a non-empty list; got {stages!r}")
        return cls(stem=d["stem"], stages=tuple(Stage.from_dict(s, i) for i, s in enumerate(stages)),
                   head=d["head"], head_fc=d.get("head_fc", 0), stem_act=d.get("stem_act", "hswish"))

    def json(self) -> str:
        """The canonical JSON (sorted keys, no spaces): equal genotypes give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """A short stable name: ``g`` and 10 hex digits of the canonical JSON's sha256."""
        return "g" + hashlib.sha256(self.json().encode()).hexdigest()[:10]

    def text(self) -> str:
        """One line: each stage as ``k{kernel}e{expand}x{depth}w{width}[se][hs]/s{stride}``."""
        parts = []
        for s in self.stages:
            parts.append(f"k{s.kernel}e{s.expand:g}x{s.depth}w{s.width}{'se' if s.se else ''}"
                         f"{'hs' if s.act == 'hswish' else ''}/s{s.stride}")
        return f"stem{self.stem} " + " ".join(parts) + f" head{self.head}" + \
            (f" fc{self.head_fc}" if self.head_fc else "")


def expanded_channels(in_channels: int, expand: float) -> int:
    """Channels after a block's expand conv: the input's when ``expand`` is 1."""
    if expand == 1:
        return int(in_channels)
    return make_divisible(in_channels * expand)


def build(genotype, input_shape=(224, 224, 3), classes=1000, *, first_stride=2, dropout=0.0,
          bn_momentum=None):
    """Builds the network of ``genotype`` (a :class:`Genotype` or its dict).

    Args:
        genotype: the architecture.
        input_shape: (height, width, channels); height, width >= ``models.MIN_INPUT_SIZE``, channels 1 or 3.
        classes: number of classes (>= 2).
        first_stride: stride of the stem conv.
        dropout: dropout rate before the classifier (0 for none).
        bn_momentum: BatchNormalization momentum (None: the blocks' default).

    Returns:
        A ``keras.Model`` named ``mbconv_<key>`` that outputs class probabilities.

    Raises:
        ValueError: a bad genotype or argument.
    """
    import tf_keras as keras

    from models.blocks import BN_MOMENTUM, validate_build_args

    g = Genotype.from_dict(genotype)
    momentum = BN_MOMENTUM if bn_momentum is None else bn_momentum
    validate_build_args(1.0, input_shape, classes, first_stride, dropout, momentum)
    # "Same" padding rounds each map up (24 -> 12 -> 6 -> 3 -> 2 -> 1), so a map never
    # vanishes; a network is refused when a strided stage would get a 1x1 map.
    size = _out_size(min(input_shape[:2]), first_stride)
    for stage in g.stages:
        if stage.stride > 1 and size < 2:
            raise ValueError(f"genotype {g.key()}: input {input_shape[0]}x{input_shape[1]} with stem stride "
                             f"{first_stride} and stage strides {g.downsampling} leaves no feature map to "
                             f"downsample (a stride-{stage.stride} stage on a 1x1 map)")
        size = _out_size(size, stage.stride)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    for part in parts(g, input_shape, classes, first_stride):
        x = _apply(part, x, dropout, momentum)
    return keras.Model(inputs, x, name=f"mbconv_{g.key()}")


@dataclass(frozen=True)
class Part:
    """One piece of a genotype's network, as it runs: the stem, one block, or the head.

    ``spec`` holds everything the piece's layers depend on (shapes, kernel, activation),
    so two networks that share a part run the same layers for it; ``input_shape`` is
    the (height, width, channels) the piece reads. :func:`parts` lists a network's
    pieces in order and :func:`build_part` builds one alone.
    """

    kind: str                 # "stem", "block" or "head"
    index: int                # block number (1-based) for a block, 0 otherwise
    input_shape: Tuple[int, int, int]
    spec: Tuple[Tuple[str, Any], ...]

    def get(self, key: str):
        return dict(self.spec)[key]

    def key(self) -> str:
        """A stable name of what the part computes (its kind, input shape and spec; not its position)."""
        text = json.dumps({"kind": self.kind, "input": list(self.input_shape), **dict(self.spec)}, sort_keys=True)
        return f"{self.kind}-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _out_size(size: int, stride: int) -> int:
    return -(-size // stride)  # "same" padding


def parts(genotype, input_shape, classes: int, first_stride: int = 2) -> Tuple[Part, ...]:
    """The stem, every block and the head of ``genotype``'s network, in order.

    Building them one after another (:func:`build`) is the network; built one by one
    (:func:`build_part`), each is a model whose device cost is that piece's.
    """
    g = Genotype.from_dict(genotype)
    h, w, c = (int(v) for v in input_shape)
    h, w = _out_size(h, first_stride), _out_size(w, first_stride)
    out = [Part("stem", 0, (int(input_shape[0]), int(input_shape[1]), c),
                (("filters", g.stem), ("stride", int(first_stride)), ("act", g.stem_act)))]
    channels, block = g.stem, 0
    for stage in g.stages:
        for repeat in range(stage.depth):
            block += 1
            stride = stage.stride if repeat == 0 else 1
            expanded = expanded_channels(channels, stage.expand)
            out.append(Part("block", block, (h, w, channels), (
                ("expanded", expanded), ("filters", stage.width), ("kernel", stage.kernel), ("stride", stride),
                ("act", stage.act), ("se", make_divisible(expanded * SE_RATIO) if stage.se else 0))))
            h, w, channels = _out_size(h, stride), _out_size(w, stride), stage.width
    out.append(Part("head", 0, (h, w, channels), (("filters", g.head), ("fc", g.head_fc), ("act", g.stem_act),
                                                   ("classes", int(classes)))))
    return tuple(out)


def _apply(part: Part, x, dropout: float = 0.0, momentum=None):
    """The layers of ``part`` on tensor ``x`` (named as in the whole network)."""
    import tf_keras as keras

    from models.blocks import (BN_MOMENTUM, HardSwish, activation, classifier, conv_bn_act,
                               inverted_residual)

    momentum = BN_MOMENTUM if momentum is None else momentum
    spec = dict(part.spec)
    if part.kind == "stem":
        return conv_bn_act(x, spec["filters"], 3, spec["stride"], spec["act"], "stem", momentum)
    if part.kind == "block":
        return inverted_residual(x, expanded=spec["expanded"], filters=spec["filters"], kernel=spec["kernel"],
                                 stride=spec["stride"], act=spec["act"], se=spec["se"], name=f"block{part.index}",
                                 bn_momentum=momentum)
    x = conv_bn_act(x, spec["filters"], 1, 1, spec["act"], "head", momentum)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if spec["fc"]:
        x = keras.layers.Dense(spec["fc"], name="head_fc")(x)
        x = (HardSwish(name="head_fc_hswish") if spec["act"] == "hswish"
             else activation(spec["act"], "head_fc_act"))(x)
    return classifier(x, spec["classes"], dropout)


def build_part(part: Part):
    """``part`` alone as a ``keras.Model`` reading its input shape (random weights)."""
    import tf_keras as keras

    inputs = keras.Input(shape=part.input_shape, name="input")
    return keras.Model(inputs, _apply(part, inputs), name=part.key().replace("-", "_"))


def _v3_point(spec, alpha: float) -> Genotype:
    """A MobileNetV3 spec at ``alpha`` as a genotype: runs of identical bnecks are one stage."""
    stem = make_divisible(spec.stem * alpha)
    stages, in_ch = [], stem
    for row in spec.bnecks:
        expanded, out = make_divisible(row.exp * alpha), make_divisible(row.out * alpha)
        ratio = 1 if expanded == in_ch else expanded / in_ch
        stage = Stage(kernel=row.kernel, expand=ratio, depth=1, width=out, se=row.se, act=row.act,
                      stride=row.stride)
        prev = stages[-1] if stages else None
        if prev is not None and row.stride == 1 and prev.width == out == in_ch and \
                (prev.kernel, prev.se, prev.act) == (row.kernel, row.se, row.act) and \
                expanded_channels(out, prev.expand) == expanded:
            stages[-1] = Stage(prev.kernel, prev.expand, prev.depth + 1, prev.width, prev.se, prev.act,
                               prev.stride)
        else:
            stages.append(stage)
        in_ch = out
    head_fc = make_divisible(spec.head_fc * alpha) if alpha > 1 else spec.head_fc
    return Genotype(stem=stem, stages=tuple(stages), head=make_divisible(spec.head * alpha), head_fc=head_fc,
                    stem_act="hswish")


def _v2_point(alpha: float) -> Genotype:
    from models.mobilenet_v2 import BOTTLENECKS, HEAD_FILTERS, STEM_FILTERS

    stages = tuple(Stage(kernel=3, expand=row.t, depth=row.n, width=make_divisible(row.c * alpha), se=False,
                         act="relu6", stride=row.s) for row in BOTTLENECKS)
    head = make_divisible(HEAD_FILTERS * alpha) if alpha > 1 else HEAD_FILTERS
    return Genotype(stem=make_divisible(STEM_FILTERS * alpha), stages=stages, head=head, head_fc=0,
                    stem_act="relu6")


#: The hand-designed families this space holds as named points.
NAMED_FAMILIES = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


def named(family: str, alpha: float) -> Genotype:
    """The hand-designed ``family`` at width ``alpha`` as a genotype.

    MobileNetV2 and MobileNetV3-Small and -Large are exact points: the same layers,
    in the same order, with the same shapes as their own builders. (MobileNetV1's
    blocks have no projection conv: it is not a point of this space.)

    Raises:
        ValueError: a family that is not a point of the space.
    """
    from models import mobilenet_v3

    if family == "mobilenet_v2":
        return _v2_point(alpha)
    if family == "mobilenet_v3_small":
        return _v3_point(mobilenet_v3.SMALL, alpha)
    if family == "mobilenet_v3_large":
        return _v3_point(mobilenet_v3.LARGE, alpha)
    raise ValueError(f"family {family!r} is not a named point of the genotype space; valid: "
                     f"{', '.join(NAMED_FAMILIES)}")

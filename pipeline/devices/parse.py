"""Pure parsers of what an emulated device run leaves behind.

Nothing here runs anything: ``runner.py`` drives qemu, these functions turn its
files into dataclasses and raise :class:`DeviceOutputError` on anything that does
not match exactly (a missing line, a count that does not add up, an unknown key),
never returning zeros or partial results.

Inputs:
- the plugin's count file (``insn_count.c``)::

      insn_count 1 classes=simd_mac,simd_other,ldst,branch,scalar
      region index=0 total=7192 simd_mac=0 simd_other=40 ldst=2377 branch=1489 scalar=3286
      end regions=1 total=301720257

- the guest's ``result.json`` (``guest_runner.py``, format "mm-guest-result 1");
- a runtime's load error text, e.g. "Didn't find op for builtin opcode
  'FULLY_CONNECTED' version '12'".
"""

import json
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from pipeline.errors import DeviceOutputError

CLASSES = ("simd_mac", "simd_other", "ldst", "branch", "scalar")
COUNTS_HEADER = "insn_count 1 classes=" + ",".join(CLASSES)
GUEST_FORMAT = "mm-guest-result 1"
# Guest regions before the per-input ones (see guest_runner.py).
MARKER_REGION, WARMUP_REGION, FIRST_INFERENCE_REGION = 0, 1, 2

_REGION = re.compile(
    r"region index=(\d+) total=(\d+) " + " ".join(rf"{c}=(\d+)" for c in CLASSES))
_END = re.compile(r"end regions=(\d+) total=(\d+)")


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
class InsnCounts:
    """One plugin count file: per-region counts and the whole process's total."""

    regions: Tuple[ClassCounts, ...]
    process_total: int


def parse_insn_counts(text: str, expect_regions: Optional[int] = None) -> InsnCounts:
    """Parses the insn_count plugin's output file.

    Args:
        text: the file's contents.
        expect_regions: if given, the exact number of regions required.

    Raises:
        DeviceOutputError: wrong header, a line that does not match, a region
            index out of sequence, a total that is not the sum of its classes,
            an ``error`` line from the plugin, or no ``end`` line (the guest died).
    """
    lines = text.splitlines()
    if not lines or lines[0] != COUNTS_HEADER:
        got = repr(lines[0]) if lines else "an empty file"
        raise DeviceOutputError(f"instruction counts: expected header {COUNTS_HEADER!r}, got {got}")
    regions: List[ClassCounts] = []
    end = None
    for n, line in enumerate(lines[1:], start=2):
        if end is not None:
            raise DeviceOutputError(
                f"instruction counts line {n}: text after the end line: {line!r}")
        if line.startswith("error "):
            raise DeviceOutputError(f"instruction counts: plugin reported: {line[6:]}")
        m = _REGION.fullmatch(line)
        if m:
            index, total, *per_class = (int(v) for v in m.groups())
            if index != len(regions):
                raise DeviceOutputError(
                    f"instruction counts line {n}: region index {index}, expected {len(regions)}")
            counts = ClassCounts(*per_class)
            if counts.total != total:
                raise DeviceOutputError(
                    f"instruction counts line {n}: total {total} != sum of classes {counts.total}")
            regions.append(counts)
            continue
        m = _END.fullmatch(line)
        if m:
            end = (int(m.group(1)), int(m.group(2)))
            if end[0] != len(regions):
                raise DeviceOutputError(
                    f"instruction counts: end line says {end[0]} regions, file has {len(regions)}")
            continue
        raise DeviceOutputError(f"instruction counts line {n}: unrecognised: {line!r}")
    if end is None:
        raise DeviceOutputError(
            f"instruction counts: no end line after {len(regions)} regions "
            "(the guest crashed or was killed)")
    if expect_regions is not None and len(regions) != expect_regions:
        raise DeviceOutputError(
            f"instruction counts: {len(regions)} regions, expected {expect_regions}")
    return InsnCounts(regions=tuple(regions), process_total=end[1])


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
    expected = FIRST_INFERENCE_REGION + samples
    if len(counts.regions) != expected:
        raise DeviceOutputError(
            f"instruction counts: {len(counts.regions)} regions for {samples} inputs, "
            f"expected {expected}")
    overhead = counts.regions[MARKER_REGION]
    return InferenceCounts(
        per_inference=tuple(r.minus(overhead) for r in counts.regions[FIRST_INFERENCE_REGION:]),
        warmup=counts.regions[WARMUP_REGION].minus(overhead),
        marker_overhead=overhead)

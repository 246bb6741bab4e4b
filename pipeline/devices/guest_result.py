"""The guest's ``result.json`` (``guest_runner.py``, format "mm-guest-result 2", or 1 from
a runner of one input and one output; a run on a real board in timing mode adds the
optional ``timing`` and ``device`` objects), and a
runtime's load error text, e.g. "Didn't find op for builtin opcode 'FULLY_CONNECTED'
version '12'", parsed.

A pure parser (``runner.py`` drives qemu): anything that does not match exactly
(a missing or unknown key, a wrongly typed value) raises :class:`DeviceOutputError`.
"""

import json
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from pipeline.devices.checked_json import no_extra, take
from pipeline.devices.insn_counts import FIRST_INFERENCE_REGION, MARKER_REGION, WARMUP_REGION
from pipeline.devices.model_io import TensorSpec  # an input or output, as the guest runtime reports it
from pipeline.errors import DeviceOutputError

GUEST_FORMAT = "mm-guest-result 2"
#: The first format: one ``input`` and one ``output`` instead of the lists of format 2.
SINGLE_IO_FORMAT = "mm-guest-result 1"


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
            op = m.group(1).rstrip(".")  # the sentence's full stop, not the name's
            return LoadError(text, f"builtin_code {op}" if op.isdigit() else op)
    return LoadError(text)



@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: Tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class Timing:
    """Seconds measured by the guest in timing mode (``--timed-runs``) on a real board.

    ``init_s`` is load + allocate; ``first_inference_s`` the first invoke; the warm-up
    mean is over ``warmup_runs`` further invokes (None when none); mean/std/min/max
    over ``runs`` invokes of the first input. ``peak_rss_kib`` is the process's peak
    resident memory (``ru_maxrss``; from another tool: its peak footprint, None where it
    reports none); ``cpus_allowed`` the CPUs it could run on (None: not known).
    """

    init_s: float
    first_inference_s: float
    warmup_runs: int
    warmup_mean_s: Optional[float]
    runs: int
    mean_s: float
    std_s: float
    min_s: float
    max_s: float
    peak_rss_kib: Optional[int]
    cpus_allowed: Optional[Tuple[int, ...]]


@dataclass(frozen=True)
class DeviceFacts:
    """What a board says about itself; None where it could not be read."""

    model: Optional[str]
    cpu: Optional[str]
    machine: str
    kernel: str
    governor: Optional[str]
    cpus: Optional[int]


@dataclass(frozen=True)
class GuestResult:
    """The guest's ``result.json``. Fields after ``load_error`` are set iff loaded.

    ``inputs``/``outputs`` list every model input and output in the model's order;
    ``input``/``output`` are the first of each.
    """

    runtime: str
    runtime_version: str
    numpy_version: str
    threads: int
    loaded: bool
    load_error: Optional[LoadError]
    inputs: Tuple[TensorSpec, ...] = ()
    outputs: Tuple[TensorSpec, ...] = ()
    tensors: Tuple[TensorInfo, ...] = ()
    samples: int = 0
    wall_s: Tuple[float, ...] = ()
    timing: Optional[Timing] = None
    device: Optional[DeviceFacts] = None

    @property
    def input(self) -> Optional[TensorSpec]:
        return self.inputs[0] if self.inputs else None

    @property
    def output(self) -> Optional[TensorSpec]:
        return self.outputs[0] if self.outputs else None


def _shape(value, where: str) -> Tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
        raise DeviceOutputError(f"{where}: shape {value!r} is not a list of ints")
    return tuple(value)


def _io(obj, where: str) -> TensorSpec:
    if not isinstance(obj, dict):
        raise DeviceOutputError(f"{where}: expected an object, got {obj!r}")
    keys = ("name", "shape", "dtype", "scale", "zero_point")
    no_extra(obj, keys, where)
    return TensorSpec(name=take(obj, "name", str, where),
                    shape=_shape(take(obj, "shape", list, where), where),
                    dtype=take(obj, "dtype", str, where),
                    scale=float(take(obj, "scale", (int, float), where)),
                    zero_point=take(obj, "zero_point", int, where))


def _io_list(items, where: str) -> Tuple[TensorSpec, ...]:
    if not items:
        raise DeviceOutputError(f"{where}s: none listed")
    return tuple(_io(o, f"{where} {i}") for i, o in enumerate(items))


def _tensor(obj, where: str) -> TensorInfo:
    if not isinstance(obj, dict):
        raise DeviceOutputError(f"{where}: expected an object, got {obj!r}")
    keys = ("index", "name", "shape", "dtype", "nbytes")
    no_extra(obj, keys, where)
    info = TensorInfo(index=take(obj, "index", int, where), name=take(obj, "name", str, where),
                      shape=_shape(take(obj, "shape", list, where), where),
                      dtype=take(obj, "dtype", str, where),
                      nbytes=take(obj, "nbytes", int, where))
    if info.nbytes < 0:
        raise DeviceOutputError(f"{where}: negative nbytes {info.nbytes}")
    return info


_BASE_KEYS = ("format", "runtime", "runtime_version", "numpy_version", "threads", "loaded",
              "load_error")
_RUN_KEYS = ("inputs", "outputs", "tensors", "samples", "wall_s", "regions")
_SINGLE_IO_KEYS = ("input", "output", "tensors", "samples", "wall_s", "regions")
_TIMING_FLOATS = ("init_s", "first_inference_s", "mean_s", "std_s", "min_s", "max_s")
_OPTIONAL_KEYS = ("timing", "device")


def _number(obj: dict, key: str, where: str) -> float:
    value = float(take(obj, key, (int, float), where))
    if value < 0:
        raise DeviceOutputError(f"{where}: {key} is negative ({value})")
    return value


def parse_timing(obj, where: str = "guest result timing") -> Timing:
    """The ``timing`` object of a timed run (see :class:`Timing`).

    Raises:
        DeviceOutputError: a missing, unexpected, negative or wrongly typed value, or no timed run.
    """
    if not isinstance(obj, dict):
        raise DeviceOutputError(f"{where}: expected an object, got {obj!r}")
    no_extra(obj, _TIMING_FLOATS + ("warmup_runs", "warmup_mean_s", "runs", "peak_rss_kib",
                                    "cpus_allowed"), where)
    runs, warmup_runs = take(obj, "runs", int, where), take(obj, "warmup_runs", int, where)
    if runs < 1 or warmup_runs < 0:
        raise DeviceOutputError(f"{where}: runs {runs}, warm-up runs {warmup_runs}")
    warmup_mean = None if warmup_runs == 0 else _number(obj, "warmup_mean_s", where)
    cpus = take(obj, "cpus_allowed", (list, type(None)), where)
    if cpus is not None and not all(isinstance(c, int) and not isinstance(c, bool) for c in cpus):
        raise DeviceOutputError(f"{where}: cpus_allowed {cpus!r} is not a list of ints")
    return Timing(**{k: _number(obj, k, where) for k in _TIMING_FLOATS}, warmup_runs=warmup_runs,
                  warmup_mean_s=warmup_mean, runs=runs, peak_rss_kib=take(obj, "peak_rss_kib", int, where),
                  cpus_allowed=None if cpus is None else tuple(cpus))


def parse_device_facts(obj, where: str = "guest result device") -> DeviceFacts:
    """The ``device`` object of a timed run (see :class:`DeviceFacts`)."""
    if not isinstance(obj, dict):
        raise DeviceOutputError(f"{where}: expected an object, got {obj!r}")
    no_extra(obj, ("model", "cpu", "machine", "kernel", "governor", "cpus"), where)
    optional = (str, type(None))
    return DeviceFacts(model=take(obj, "model", optional, where), cpu=take(obj, "cpu", optional, where),
                       machine=take(obj, "machine", str, where), kernel=take(obj, "kernel", str, where),
                       governor=take(obj, "governor", optional, where),
                       cpus=take(obj, "cpus", (int, type(None)), where))


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
    fmt = take(obj, "format", str, where)
    if fmt not in (GUEST_FORMAT, SINGLE_IO_FORMAT):
        raise DeviceOutputError(f"{where}: format {fmt!r}, expected {GUEST_FORMAT!r} "
                                f"(or {SINGLE_IO_FORMAT!r})")
    loaded = take(obj, "loaded", bool, where)
    single = fmt == SINGLE_IO_FORMAT
    no_extra(obj, _BASE_KEYS + _OPTIONAL_KEYS
             + ((_SINGLE_IO_KEYS if single else _RUN_KEYS) if loaded else ()), where)
    if "timing" in obj and not loaded:
        raise DeviceOutputError(f"{where}: timing of a model that did not load")
    base = dict(runtime=take(obj, "runtime", str, where),
                runtime_version=take(obj, "runtime_version", str, where),
                numpy_version=take(obj, "numpy_version", str, where),
                threads=take(obj, "threads", int, where), loaded=loaded,
                device=parse_device_facts(obj["device"]) if "device" in obj else None)
    if not loaded:
        message = take(obj, "load_error", str, where)
        return GuestResult(load_error=parse_load_error(message), **base)
    if obj.get("load_error") is not None:
        raise DeviceOutputError(f"{where}: loaded, yet load_error is {obj['load_error']!r}")
    samples = take(obj, "samples", int, where)
    if samples < 1:
        raise DeviceOutputError(f"{where}: samples is {samples}, expected at least 1")
    wall = take(obj, "wall_s", list, where)
    if len(wall) != samples or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       and v >= 0 for v in wall):
        raise DeviceOutputError(f"{where}: wall_s must hold {samples} non-negative numbers")
    regions = take(obj, "regions", dict, where)
    if regions != _REGION_ROLES:
        raise DeviceOutputError(f"{where}: regions {regions!r}, expected {_REGION_ROLES!r}")
    tensors = take(obj, "tensors", list, where)
    if single:
        inputs = (_io(take(obj, "input", dict, where), f"{where} input"),)
        outputs = (_io(take(obj, "output", dict, where), f"{where} output"),)
    else:
        inputs, outputs = (_io_list(take(obj, kind, list, where), f"{where} {kind[:-1]}")
                           for kind in ("inputs", "outputs"))
    return GuestResult(
        load_error=None, inputs=inputs, outputs=outputs,
        tensors=tuple(_tensor(t, f"{where} tensor {i}") for i, t in enumerate(tensors)),
        samples=samples, wall_s=tuple(float(v) for v in wall),
        timing=parse_timing(obj["timing"]) if "timing" in obj else None, **base)

"""Measuring reference models on emulated devices, and calibrating the latency model.

Three jobs, each built on the one before:

1. :func:`build_tflite` builds a model of a registered family with random weights
   (fixed seed) and converts it to float32 or int8 (post-training quantization with
   random calibration images). Cached by what determines the file.
2. :func:`measure` runs that file for one inference on an emulated core (one
   thread: the counts repeat exactly) and keeps the per-class instruction counts.
   Cached on disk, so a repeated ``estimate`` costs no TensorFlow and no qemu::

       $MOBILE_MODEL_CACHE/latency/   (default ~/.cache/mobile-model/latency/)
           models/<key>.tflite        converted reference models
           runs/<key>.json            one emulated run: counts by class, runtime, model hash

3. :func:`calibrate` measures the published architectures (``PUBLISHED``) on the
   cores that emulate the published devices, fits the cost model of
   :mod:`pipeline.latency.model` on all points and under leave-one-out, writes the fitted
   parameters into the profiles' ``latency:`` mappings and a report.

:func:`estimate_model` is what ``mobile-model estimate`` calls.
"""

import csv
import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.devices.profiles import DEVICES, PROFILE_DIR, DeviceProfile, get_device
from pipeline.devices.targets import RUNTIMES
from pipeline.errors import ConfigError, RuntimeIncompatibleError
from pipeline.latency.model import (CLASSES, DEFAULT_TIES, LatencyParams, Point, Prediction, error_summary,
                              fit_costs, fit_parallel_fraction, leave_one_out, predict,
                              predict_cycles, relative_error, speedup)
from pipeline.store.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

Log = Callable[[str], None]

# Bump when building, converting or running reference models changes what a cached
# entry holds (so stale entries are not reused).
MEASURE_VERSION = 1
SEED = 0
VARIANT_NAMES = ("float32", "int8")
# Random images given to the int8 converter as calibration data. Weights are random
# too: the kernels XNNPACK / TFLite pick, and so the instructions, depend on shapes
# and types, not on values.
CALIBRATION_IMAGES = 8


def _noop(msg: str) -> None:
    pass


def cache_root() -> Path:
    """``$MOBILE_MODEL_CACHE/latency`` (default ``~/.cache/mobile-model/latency``)."""
    base = os.environ.get("MOBILE_MODEL_CACHE")
    base_path = Path(base) if base else Path.home() / ".cache" / "mobile-model"
    return base_path.expanduser().resolve() / "latency"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


# Source files that shape a reference model's .tflite: a change to any of them makes
# cached models and runs stale.
_MODEL_SOURCES = ("models", "pipeline/export/convert.py", "pipeline/export/variants.py")
_REPO = Path(__file__).resolve().parents[2]


def _sources_hash() -> str:
    h = hashlib.sha256()
    for entry in _MODEL_SOURCES:
        path = _REPO / entry
        for f in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


# -- reference models ------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A model to estimate: family, width, input size, classes and numeric format.

    Attributes:
        family: a name in ``models.FAMILIES``.
        alpha: width multiplier (> 0).
        input_size: square input side (>= 32).
        classes: output classes (>= 2).
        variant: "float32" or "int8" (full integer, post-training quantization,
            float input and output like the build's ``int8-ptq`` variant).
        channels: input channels, 1 (grey) or 3.
        first_stride: stride of the stem convolution, 1 or 2 (the families' default).

    ``channels`` and ``first_stride`` enter the label and the cache key only when
    they differ from 3 and 2, so entries of the full-size reference models stay valid.
    """

    family: str
    alpha: float = 1.0
    input_size: int = 224
    classes: int = 1000
    variant: str = "float32"
    channels: int = 3
    first_stride: int = 2

    def __post_init__(self):
        from pipeline.train.zoo import family_names

        if self.family not in family_names():
            raise ConfigError(f"unknown model family {self.family!r}; valid: {', '.join(family_names())}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not 0 < self.alpha <= 4:
            raise ConfigError(f"alpha must be a number in (0, 4], got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) \
                or not 32 <= self.input_size <= 1024:
            raise ConfigError(f"input size must be an integer in [32, 1024], got {self.input_size!r}")
        if isinstance(self.classes, bool) or not isinstance(self.classes, int) or self.classes < 2:
            raise ConfigError(f"classes must be an integer >= 2, got {self.classes!r}")
        if self.variant not in VARIANT_NAMES:
            raise ConfigError(f"variant {self.variant!r} is unknown; valid: {', '.join(VARIANT_NAMES)}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels!r}")
        if self.first_stride not in (1, 2) or isinstance(self.first_stride, bool):
            raise ConfigError(f"first_stride must be 1 or 2, got {self.first_stride!r}")

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (self.input_size, self.input_size, self.channels)

    def _extra(self) -> Dict[str, int]:
        # Only what differs from the reference models' 3 channels and stride 2.
        extra = {}
        if self.channels != 3:
            extra["channels"] = self.channels
        if self.first_stride != 2:
            extra["first_stride"] = self.first_stride
        return extra

    @property
    def label(self) -> str:
        extra = self._extra()
        tail = (f"-{extra['channels']}ch" if "channels" in extra else "") + \
               (f"-s{extra['first_stride']}" if "first_stride" in extra else "")
        return (f"{self.family}-{self.alpha:g}-{self.input_size}x{self.input_size}-"
                f"{self.classes}c-{self.variant}{tail}")

    def key(self) -> Dict[str, Any]:
        """What the converted file depends on (its cache key, with library versions)."""
        spec = {k: v for k, v in asdict(self).items() if k not in ("channels", "first_stride")}
        spec.update(self._extra())
        return {"spec": spec, "seed": SEED, "calibration_images": CALIBRATION_IMAGES,
                "measure_version": MEASURE_VERSION, "sources": _sources_hash(),
                "tensorflow": _dist_version("tensorflow"), "tf_keras": _dist_version("tf-keras")}


def _convert(spec: ModelSpec) -> bytes:
    import numpy as np

    from pipeline.train.zoo import build_model
    from pipeline.native import captured_stderr
    from pipeline.export.convert import convert_keras
    from pipeline.train.fit import setup_tensorflow
    from pipeline.export.variants import VARIANTS

    setup_tensorflow(SEED)
    model = build_model(spec.family, spec.alpha, spec.input_shape, spec.classes,
                        first_stride=spec.first_stride)
    calibration = None
    variant = VARIANTS.get("float32")
    if spec.variant == "int8":
        variant = VARIANTS.get("int8-ptq")
        calibration = np.random.default_rng(SEED).random(
            (CALIBRATION_IMAGES, *spec.input_shape), dtype=np.float32)
    with captured_stderr():  # the converter's C++ chatter
        tflite = convert_keras(model, variant, calibration, int8_io=False)
    if spec.variant == "float32":
        # The float file must compute what Keras does (cheap, one image); int8 files of
        # random-weight models have no meaningful accuracy to check, and the device
        # check compares the device's int8 outputs with the host runtime's anyway.
        from pipeline.export.convert import validate_conversion

        x = np.random.default_rng(SEED + 1).random((1, *spec.input_shape), dtype=np.float32)
        validate_conversion(tflite, model.predict(x, verbose=0), x, variant, spec.label)
    return tflite


def build_tflite(spec: ModelSpec, log: Log = _noop) -> Path:
    """The converted .tflite of ``spec`` (random weights, seed ``SEED``), cached.

    Raises:
        ConfigError: an invalid spec (see :class:`ModelSpec`).
        ConversionMismatchError: the float32 file disagrees with Keras.
    """
    path = cache_root() / "models" / f"{spec.label}-{_hash(spec.key())}.tflite"
    if path.is_file():
        return path
    log(f"[latency] building and converting {spec.label}")
    t0 = time.monotonic()
    atomic_write_bytes(path, _convert(spec))
    log(f"[latency] {spec.label}: {path.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - t0:.0f} s")
    return path


@dataclass(frozen=True)
class Measurement:
    """Instructions of one inference of a reference model on one emulated core.

    ``instructions_by_class`` has every class of ``latency.CLASSES``; the counts are
    exact (one interpreter thread) and repeat run to run.
    """

    spec: Dict[str, Any]
    qemu_cpu: str
    runtime: str
    runtime_version: str
    runtime_key: str
    model_sha256: str
    instructions: int
    instructions_by_class: Dict[str, int]
    process_wall_s: float
    cached: bool = False

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        return d


def _run_key(spec: ModelSpec, profile: DeviceProfile) -> Dict[str, Any]:
    from pipeline.devices.runtime import runtime_key

    return {"model": spec.key(), "qemu_cpu": profile.qemu_cpu, "runtime": profile.runtime,
            "runtime_version": profile.runtime_version, "runtime_key": runtime_key()}


def measure(spec: ModelSpec, profile: DeviceProfile, log: Log = _noop,
            runtime=None) -> Measurement:
    """Per-class instructions of one inference of ``spec`` on ``profile``'s core, cached.

    Only the profile's core (``qemu_cpu``) and runtime matter: profiles that share
    them share the entry. The run is single-threaded whatever the profile says.

    Raises:
        RuntimeIncompatibleError: the profile's runtime cannot load the model.
        DeviceUnavailableError: no ARM runtime, a crash or a timeout.
    """
    key = _run_key(spec, profile)
    path = cache_root() / "runs" / f"{spec.label}-{profile.qemu_cpu}-{profile.runtime}-{_hash(key)}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            m = data["measurement"]
            m["instructions_by_class"] = {c: m["instructions_by_class"][c] for c in CLASSES}
            return Measurement(**m, cached=True)
    model_path = build_tflite(spec, log)
    import numpy as np

    from pipeline.devices.check import run_device_check
    from pipeline.devices.runtime import ensure_runtime

    runtime = runtime or ensure_runtime(progress=log)
    x = np.random.default_rng(SEED).random((1, *spec.input_shape), dtype=np.float32)
    log(f"[latency] running {spec.label} on {profile.qemu_cpu} ({profile.runtime} "
        f"{profile.runtime_version}) under qemu")
    # One inference after the runner's warm-up: with one thread the counts repeat exactly,
    # so more inferences would only cost time (~1e8-1e9 guest instructions each).
    result = run_device_check(model_path, replace(profile, default_threads=1), x, threads=1,
                              runtime=runtime).require_loaded()
    if not result.counts_exact:
        raise ConfigError(f"{spec.label}: counts of a multi-threaded run are not repeatable")
    by_class = {c: int(result.instructions_by_class[c]) for c in CLASSES}
    m = Measurement(spec=asdict(spec), qemu_cpu=profile.qemu_cpu, runtime=result.runtime,
                    runtime_version=result.runtime_version, runtime_key=key["runtime_key"],
                    model_sha256=result.model_sha256, instructions=int(result.instructions_median),
                    instructions_by_class=by_class, process_wall_s=result.process_wall_s)
    atomic_write_json(path, {"key": key, "measurement": m.to_dict()})
    log(f"[latency] {spec.label} on {profile.qemu_cpu}: {m.instructions / 1e6:.1f} M instructions "
        f"({result.process_wall_s:.0f} s emulated)")
    return m


# -- published measurements --------------------------------------------------------

# A copy of ../shared/reference/published_latency.csv (the calibration must not
# depend on a file outside the repository; tests check the two agree). Full-size
# models: width 1.0, 224x224x3, 1000 classes, batch 1, one thread.
PUBLISHED_CSV = """\
model,variant,device,threads,latency_ms,runtime,source
mobilenet_v1,float32,pixel1,1,82,xnnpack-2020,google/XNNPACK README.md (single-threaded table; benchmarked 2020-03-27)
mobilenet_v2,float32,pixel1,1,49,xnnpack-2020,google/XNNPACK README.md
mobilenet_v3_large,float32,pixel1,1,39,xnnpack-2020,google/XNNPACK README.md
mobilenet_v3_small,float32,pixel1,1,12,xnnpack-2020,google/XNNPACK README.md
mobilenet_v1,float32,pixel2,1,86,xnnpack-2020,google/XNNPACK README.md
mobilenet_v2,float32,pixel2,1,53,xnnpack-2020,google/XNNPACK README.md
mobilenet_v3_large,float32,pixel2,1,42,xnnpack-2020,google/XNNPACK README.md
mobilenet_v3_small,float32,pixel2,1,14,xnnpack-2020,google/XNNPACK README.md
mobilenet_v1,float32,pixel3a,1,88,xnnpack-2020,google/XNNPACK README.md
mobilenet_v2,float32,pixel3a,1,55,xnnpack-2020,google/XNNPACK README.md
mobilenet_v3_large,float32,pixel3a,1,44,xnnpack-2020,google/XNNPACK README.md
mobilenet_v3_small,float32,pixel3a,1,14,xnnpack-2020,google/XNNPACK README.md
mobilenet_v1,int8_qat,pixel2,1,64,tflite-2019,tensorflow/tensorflow lite/performance/model_optimization.md (one big core)
mobilenet_v2,int8_qat,pixel2,1,54,tflite-2019,tensorflow/tensorflow lite/performance/model_optimization.md (one big core)
"""

# Which guest runtime runs the kernels a published runtime ran. XNNPACK's float
# kernels of 2020 -> ai-edge-litert (XNNPACK). TFLite of 2019 ran int8 on its builtin
# kernels, never XNNPACK -> tflite-runtime 2.14, whose int8 path is also the builtin
# kernels (it never applies XNNPACK to int8). Neither is the same code as in the
# source; the residuals of the fit include that difference.
PUBLISHED_RUNTIMES = {"xnnpack-2020": "litert", "tflite-2019": "tflite-runtime"}
# A QAT model and a PTQ model of the same architecture convert to the same ops and
# types, so they run the same kernels: PTQ with random calibration stands in for QAT.
PUBLISHED_VARIANTS = {"float32": "float32", "int8_qat": "int8", "int8_ptq": "int8"}

# Multi-threaded latencies (ms) next to the single-threaded ones of the same table:
# google/XNNPACK README.md, "multi-threaded (using as many threads as there are big
# cores)", benchmarked 2020-03-27 (Pixel: 2 big cores, Pixel 2: 4, Pixel 3a: 2).
# They fit the Amdahl parallel fraction of the thread scaling, nothing else.
MULTI_THREAD_MS = {
    ("mobilenet_v1", "pixel1"): 43, ("mobilenet_v2", "pixel1"): 26,
    ("mobilenet_v3_large", "pixel1"): 22, ("mobilenet_v3_small", "pixel1"): 7,
    ("mobilenet_v1", "pixel2"): 27, ("mobilenet_v2", "pixel2"): 18,
    ("mobilenet_v3_large", "pixel2"): 16, ("mobilenet_v3_small", "pixel2"): 6,
    ("mobilenet_v1", "pixel3a"): 46, ("mobilenet_v2", "pixel3a"): 28,
    ("mobilenet_v3_large", "pixel3a"): 24, ("mobilenet_v3_small", "pixel3a"): 8,
}


@dataclass(frozen=True)
class Assumption:
    """Costs for a core type with no published point: another core's, scaled.

    These are guesses, stated in the profile and the report; estimates on such a
    core are marked unvalidated.
    """

    base_core: str
    factor: float
    reason: str


ASSUMED_CORES = {
    "neoverse-n1": Assumption(
        "cortex-a76", 1.0,
        "Neoverse N1 is derived from Cortex-A76; its costs are the cortex-a76 group's, "
        "which were fitted on the Pixel 3a's Cortex-A75-based cores"),
    "cortex-a53": Assumption(
        "cortex-a72", 2.0,
        "Cortex-A53 is in-order, 2-wide, with a 64-bit NEON datapath (a 128-bit SIMD "
        "instruction occupies it twice); assumed twice the cycles per instruction of the "
        "cortex-a72 group (fitted on the out-of-order Kryo / Cortex-A73 cores of Pixel and Pixel 2)"),
}


@dataclass(frozen=True)
class PublishedPoint:
    model: str
    variant: str
    device: str
    threads: int
    latency_ms: float
    runtime: str
    source: str

    @property
    def name(self) -> str:
        return f"{self.model} {self.variant} {self.device}"


def load_published(path: Optional[Path] = None) -> List[PublishedPoint]:
    """The published single-thread latencies: ``PUBLISHED_CSV`` or a CSV of its format.

    Raises:
        ConfigError: unreadable file, a missing column, or a value this calibration
            cannot use (the message names the row, the value and what is valid).
    """
    from pipeline.train.zoo import family_names

    if path is None:
        text, source = PUBLISHED_CSV, "published latencies"
    else:
        try:
            text, source = Path(path).read_text(), str(path)
        except OSError as e:
            raise ConfigError(f"published latencies {path}: cannot read: {e}") from None
    header = "model,variant,device,threads,latency_ms,runtime,source"
    lines = []
    for ln in text.splitlines():
        # The shared file writes its header as a comment ("# model,variant,...").
        if ln.lstrip("# ").startswith("model,"):
            ln = ln.lstrip("# ")
        elif not ln.strip() or ln.lstrip().startswith("#"):
            continue
        lines.append(ln)
    if not lines or not lines[0].startswith(header[:header.index(",source")]):
        raise ConfigError(f"{source}: expected the header {header}, got {lines[0] if lines else 'nothing'!r}")
    out = []
    for i, row in enumerate(csv.DictReader(io.StringIO("\n".join(lines))), start=1):
        where = f"{source}, row {i}"
        missing = [k for k in ("model", "variant", "device", "threads", "latency_ms", "runtime")
                   if not row.get(k)]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        if row["model"] not in family_names():
            raise ConfigError(f"{where}: unknown model family {row['model']!r}; valid: {', '.join(family_names())}")
        DEVICES.get(row["device"])
        if row["variant"] not in PUBLISHED_VARIANTS:
            raise ConfigError(f"{where}: variant {row['variant']!r}; valid: {', '.join(PUBLISHED_VARIANTS)}")
        if row["runtime"] not in PUBLISHED_RUNTIMES:
            raise ConfigError(f"{where}: runtime {row['runtime']!r}; valid: {', '.join(PUBLISHED_RUNTIMES)}")
        try:
            threads, ms = int(row["threads"]), float(row["latency_ms"])
        except ValueError:
            raise ConfigError(f"{where}: threads and latency_ms must be numbers, got "
                              f"{row['threads']!r}, {row['latency_ms']!r}") from None
        if threads != 1:
            raise ConfigError(f"{where}: threads {threads}: the cost model is fitted on "
                              f"single-thread latencies only")
        if not ms > 0:
            raise ConfigError(f"{where}: latency_ms must be > 0, got {ms:g}")
        out.append(PublishedPoint(row["model"], row["variant"], row["device"], threads, ms,
                                  row["runtime"], row.get("source") or ""))
    if not out:
        raise ConfigError(f"{source}: no published points")
    return out


def _runtime_profile(profile: DeviceProfile, runtime: str) -> DeviceProfile:
    """``profile`` with another guest runtime (same core and clock)."""
    return replace(profile, runtime=runtime, runtime_version=RUNTIMES[runtime].version)


# -- calibration -----------------------------------------------------------------

FULL_SIZE = dict(alpha=1.0, input_size=224, classes=1000)
# The published order of the four models, slowest first (every column of the table).
PUBLISHED_ORDER = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
# Alternatives to DEFAULT_TIES shown in the report (sensitivity, not selection).
ALTERNATIVE_TIES = {
    "one cost (a plain CPI)": (tuple(CLASSES),),
    "simd_mac | rest (chosen)": DEFAULT_TIES,
    "all SIMD | rest": (("simd_mac", "simd_other"), ("ldst", "branch", "scalar")),
    "simd_mac | ldst | rest": (("simd_mac",), ("ldst",), ("simd_other", "branch", "scalar")),
    "simd_mac | simd_other | rest": (("simd_mac",), ("simd_other",), ("ldst", "branch", "scalar")),
}


def calibration_points(published: Sequence[PublishedPoint], log: Log = _noop,
                       runtime=None) -> List[Point]:
    """Measures each published architecture on its device's core and runtime."""
    points = []
    for pub in published:
        profile = _runtime_profile(get_device(pub.device), PUBLISHED_RUNTIMES[pub.runtime])
        spec = ModelSpec(pub.model, variant=PUBLISHED_VARIANTS[pub.variant], **FULL_SIZE)
        m = measure(spec, profile, log, runtime)
        points.append(Point(pub.name, profile.qemu_cpu, m.instructions_by_class,
                            profile.clock_ghz, pub.latency_ms, pub.device, spec.variant))
    return points


def thread_pairs(published: Sequence[PublishedPoint]) -> List[Tuple[str, int, float, float]]:
    """(label, threads, single-thread ms, multi-thread ms) of ``MULTI_THREAD_MS``."""
    single = {(p.model, p.device): p.latency_ms for p in published
              if p.variant == "float32" and p.runtime == "xnnpack-2020"}
    return [(f"{model} {device}", get_device(device).cores, single[(model, device)], ms)
            for (model, device), ms in MULTI_THREAD_MS.items() if (model, device) in single]


def profile_params(costs: Mapping[str, Mapping[str, float]], parallel_fraction: float,
                   points: Sequence[Point], loo: Sequence[Prediction]
                   ) -> Dict[str, Optional[LatencyParams]]:
    """The parameters of every profile: its core's fitted costs, or assumed ones, or None."""
    out: Dict[str, Optional[LatencyParams]] = {}
    for name in DEVICES.names():
        profile = get_device(name)
        core = profile.qemu_cpu
        if core in costs:
            core_loo = [q for q in loo if q.point.core == core]
            summary = error_summary(core_loo)
            info = {"device_points": sum(1 for p in points if p.device == name),
                    "core_points": len(core_loo),
                    "core_int8_points": sum(1 for p in points
                                            if p.core == core and p.variant == "int8"),
                    "loo_median_abs_error_pct": round(100 * summary["median_abs_error"], 2),
                    "loo_worst_abs_error_pct": round(100 * summary["worst_abs_error"], 2)}
            out[name] = LatencyParams(dict(costs[core]), parallel_fraction, True, info)
        elif core in ASSUMED_CORES and ASSUMED_CORES[core].base_core in costs:
            a = ASSUMED_CORES[core]
            out[name] = LatencyParams({c: a.factor * v for c, v in costs[a.base_core].items()},
                                      parallel_fraction, False,
                                      {"device_points": 0, "core_points": 0, "core_int8_points": 0})
        else:
            out[name] = None
    return out


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def latency_block(params: Optional[LatencyParams], core: str) -> str:
    """The YAML text of a profile's ``latency:`` mapping (with a comment saying what it is)."""
    if params is None:
        return ("latency: {}   # no published point for this core and no assumption: "
                "no estimate\n")
    lines = []
    if params.validated:
        lines.append("# Fitted by `mobile-model calibrate` (docs/latency.md); do not edit by hand.")
    else:
        a = ASSUMED_CORES[core]
        lines.append(f"# ASSUMED, NOT FITTED (validated: 0): no published latency of a {core} "
                     f"core exists in the calibration set.")
        lines.append(f"# Costs = {a.factor:g} x the {a.base_core} group's. {a.reason}.")
        lines.append("# Written by `mobile-model calibrate` (docs/latency.md); do not edit by hand.")
    lines.append("latency:")
    for key, value in params.to_mapping().items():
        v = int(value) if key in ("model_version", "validated", "device_points", "core_points",
                                  "core_int8_points") \
            else _round(value)
        lines.append(f"  {key}: {v}")
    return "\n".join(lines) + "\n"


def _is_latency_comment(line: str) -> bool:
    # The comment lines latency_block() writes above `latency:`.
    return any(mark in line for mark in ("mobile-model calibrate", "ASSUMED, NOT FITTED", "# Costs = "))


def write_profile_latency(path: Path, block: str) -> None:
    """Replaces the ``latency:`` mapping (the profile's last key) and the comments we wrote.

    The new text is validated as a profile before it replaces the file (atomically).

    Raises:
        ConfigError: ``latency:`` is not the file's last key, or the result is not a
            valid profile.
    """
    import yaml

    lines = path.read_text().splitlines(keepends=True)
    idx = [i for i, ln in enumerate(lines) if ln.startswith("latency:")]
    if len(idx) != 1 or any(ln.strip() and not ln[0].isspace() and not ln.startswith("#")
                            for ln in lines[idx[0] + 1:]):
        raise ConfigError(f"{path.name}: expected `latency:` as the last key of the profile")
    start = idx[0]
    while start > 0 and _is_latency_comment(lines[start - 1]):
        start -= 1
    new = "".join(lines[:start]) + block
    profile = DeviceProfile.from_dict(yaml.safe_load(new), f"device profile {path.name}")
    if profile.name != path.stem:
        raise ConfigError(f"{path.name}: name {profile.name!r} must equal the file name")
    LatencyParams.from_mapping(profile.latency, f"device profile {path.name}")
    atomic_write_text(path, new)


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` found (also written as JSON)."""

    points: List[Point]
    fit_all: List[Prediction]
    loo: List[Prediction]
    costs: Dict[str, Dict[str, float]]
    parallel_fraction: float
    thread_pairs: List[Tuple[str, int, float, float]]
    params: Dict[str, Optional[LatencyParams]]
    matrix: List[Dict[str, Any]]
    sensitivity: List[Dict[str, Any]]
    published: List[PublishedPoint]


def _ms(by_class, params: LatencyParams, clock: float) -> float:
    return predict_cycles(by_class, params.costs) / (clock * 1e6)


def _variant_in_fit(params: LatencyParams, variant: str) -> bool:
    """Whether published points of ``variant`` on the profile's core type were in the fit."""
    int8 = params.info.get("core_int8_points", 0)
    return int8 > 0 if variant == "int8" else params.info.get("core_points", 0) - int8 > 0


def _matrix(params: Mapping[str, Optional[LatencyParams]], log: Log, runtime) -> List[Dict[str, Any]]:
    """Single-thread estimates of the full-size families, float32 and int8, on every profile."""
    rows = []
    for name in DEVICES.names():
        profile = get_device(name)
        p = params.get(name)
        for family in PUBLISHED_ORDER:
            for variant in VARIANT_NAMES:
                spec = ModelSpec(family, variant=variant, **FULL_SIZE)
                row = {"device": name, "family": family, "variant": variant,
                       "runtime": f"{profile.runtime} {profile.runtime_version}",
                       "validated": None if p is None else p.validated,
                       "variant_in_fit": None if p is None else _variant_in_fit(p, variant)}
                try:
                    m = measure(spec, profile, log, runtime)
                except RuntimeIncompatibleError as e:  # a result for the report, not a failure
                    row.update(loaded=False, error=str(e))
                    rows.append(row)
                    continue
                row.update(loaded=True, instructions=m.instructions,
                           latency_ms=None if p is None else _ms(m.instructions_by_class, p,
                                                                 profile.clock_ghz))
                rows.append(row)
    return rows


def _sensitivity(published: Sequence[PublishedPoint], points: Sequence[Point],
                 log: Log, runtime) -> List[Dict[str, Any]]:
    rows = []

    def add(label, pts, ties):
        def fit(ps):
            return fit_costs(ps, ties)
        try:
            a, l = error_summary(predict(pts, fit(pts))), error_summary(leave_one_out(pts, fit))
        except ConfigError as e:
            rows.append({"model": label, "error": str(e)})
            return
        rows.append({"model": label, "costs_per_core": len(ties),
                     "fit_median_abs_error": a["median_abs_error"],
                     "fit_worst_abs_error": a["worst_abs_error"],
                     "loo_median_abs_error": l["median_abs_error"],
                     "loo_worst_abs_error": l["worst_abs_error"], "loo_worst_point": l["worst_point"]})

    for label, ties in ALTERNATIVE_TIES.items():
        add(label, points, ties)
    # The same chosen model with the int8 points measured on the profile's runtime
    # (XNNPACK int8) instead of builtin kernels: how much the runtime choice matters.
    alt = []
    for pub, pt in zip(published, points):
        if pub.runtime == "tflite-2019":
            spec = ModelSpec(pub.model, variant=PUBLISHED_VARIANTS[pub.variant], **FULL_SIZE)
            m = measure(spec, get_device(pub.device), log, runtime)
            pt = replace(pt, by_class=m.instructions_by_class)
        alt.append(pt)
    if any(pub.runtime == "tflite-2019" for pub in published):
        add("simd_mac | rest, int8 points run on XNNPACK (litert)", alt, DEFAULT_TIES)
    return rows


def calibrate(published: Optional[Sequence[PublishedPoint]] = None, log: Log = _noop,
              matrix: bool = True, runtime=None) -> Calibration:
    """Measures, fits and validates the cost model (does not write anything).

    Args:
        published: the published points (default :func:`load_published`).
        matrix: also estimate every full-size family x variant on every profile
            (the order check and the int8 speed-ups of the report).

    Raises:
        ConfigError: a core with too few points for its costs.
        DeviceUnavailableError: the ARM runtime or an emulated run failed.
    """
    published = list(published if published is not None else load_published())
    if runtime is None:
        from pipeline.devices.runtime import ensure_runtime

        runtime = ensure_runtime(progress=log)
    points = calibration_points(published, log, runtime)
    costs = fit_costs(points)
    fit_all = predict(points, costs)
    loo = leave_one_out(points)
    pairs = thread_pairs(published)
    p = fit_parallel_fraction([(t, one, many) for _, t, one, many in pairs])
    params = profile_params(costs, p, points, loo)
    rows = _matrix(params, log, runtime) if matrix else []
    sens = _sensitivity(published, points, log, runtime)
    return Calibration(points, fit_all, loo, costs, p, pairs, params, rows, sens, published)


def write_profiles(cal: Calibration, directory: Path = PROFILE_DIR, log: Log = _noop) -> List[Path]:
    """Writes each profile's ``latency:`` mapping; returns the files changed."""
    changed = []
    for name, params in cal.params.items():
        path = Path(directory) / f"{name}.yaml"
        before = path.read_text()
        write_profile_latency(path, latency_block(params, get_device(name).qemu_cpu))
        if path.read_text() != before:
            changed.append(path)
            log(f"[calibrate] wrote the latency parameters of {path.name}")
    return changed


def order_check(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per device and variant: do the estimates rank the families as published?"""
    out = []
    for device in DEVICES.names():
        for variant in VARIANT_NAMES:
            est = {r["family"]: r.get("latency_ms") for r in rows
                   if r["device"] == device and r["variant"] == variant and r.get("loaded")}
            if len(est) != len(PUBLISHED_ORDER) or any(v is None for v in est.values()):
                continue
            ranked = tuple(sorted(est, key=est.get, reverse=True))
            out.append({"device": device, "variant": variant, "order": list(ranked),
                        "as_published": ranked == PUBLISHED_ORDER})
    return out


# Published int8 speed-ups on the Pixel 2 (one big core), model_optimization.md: float
# 124 -> int8 QAT 64 ms (V1) and 89 -> 54 ms (V2), both on TFLite's 2019 builtin kernels.
PUBLISHED_SPEEDUP = {"mobilenet_v1": (124.0, 64.0), "mobilenet_v2": (89.0, 54.0)}


def speedups(cal: Calibration, device: str = "pixel2") -> List[Dict[str, Any]]:
    """Estimated float32/int8 speed-ups on ``device`` next to the published ones."""
    est = {(r["family"], r["variant"]): r.get("latency_ms") for r in cal.matrix
           if r["device"] == device and r.get("loaded")}
    by_name = {pt.name: pr for pt, pr in zip(cal.points, cal.fit_all)}
    xnn = {p.model: p.latency_ms for p in cal.published
           if p.device == device and p.variant == "float32"}
    out = []
    for family, (f_ms, q_ms) in PUBLISHED_SPEEDUP.items():
        f, q = est.get((family, "float32")), est.get((family, "int8"))
        legacy = by_name.get(f"{family} int8_qat {device}")
        out.append({
            "family": family,
            "published_float_2019_ms": f_ms, "published_int8_2019_ms": q_ms,
            "published_speedup": f_ms / q_ms,
            "estimated_float32_ms": f, "estimated_int8_ms": q,
            "estimated_speedup": (f / q) if f and q else None,
            "published_xnnpack_float_over_int8_2019": (xnn[family] / q_ms) if family in xnn else None,
            "estimated_float_over_int8_builtin": (f / legacy.predicted_ms) if f and legacy else None,
        })
    return out


# -- report ----------------------------------------------------------------------

def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _apct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def report_data(cal: Calibration) -> Dict[str, Any]:
    """The calibration as one JSON-serialisable dict."""
    all_s, loo_s = error_summary(cal.fit_all), error_summary(cal.loo)
    return {
        "model": "cycles = sum_c cost_c * count_c per core (ties: "
                 + " | ".join("+".join(g) for g in DEFAULT_TIES)
                 + "); NNLS on relative error; ms = cycles / clock; Amdahl thread scaling",
        "acceptance": {"loo_median_abs_error_max": 0.15, "worst_abs_error_max": 0.35,
                       "loo_median_abs_error": loo_s["median_abs_error"],
                       "loo_worst_abs_error": loo_s["worst_abs_error"],
                       "met": loo_s["median_abs_error"] <= 0.15 and loo_s["worst_abs_error"] <= 0.35},
        "fit_all": all_s, "leave_one_out": loo_s,
        "points": [{"point": pt.name, "core": pt.core, "clock_ghz": pt.clock_ghz,
                    "measured_ms": pt.measured_ms,
                    "instructions": int(sum(pt.by_class.values())),
                    "instructions_by_class": dict(pt.by_class),
                    "fit_all_ms": a.predicted_ms, "fit_all_error": a.error,
                    "loo_ms": l.predicted_ms, "loo_error": l.error}
                   for pt, a, l in zip(cal.points, cal.fit_all, cal.loo)],
        "costs": cal.costs,
        "assumed_cores": {k: asdict(v) for k, v in ASSUMED_CORES.items()},
        "thread_scaling": {"parallel_fraction": cal.parallel_fraction, "pairs": [
            {"pair": label, "threads": t, "single_ms": one, "multi_ms": many,
             "published_speedup": one / many,
             "model_speedup": speedup(t, cal.parallel_fraction),
             "multi_ms_error": relative_error(one / speedup(t, cal.parallel_fraction), many)}
            for label, t, one, many in cal.thread_pairs]},
        "profiles": {k: (None if v is None else v.to_mapping()) for k, v in cal.params.items()},
        "matrix": cal.matrix,
        "order_check": order_check(cal.matrix),
        "pixel2_int8_speedup": speedups(cal) if cal.matrix else [],
        "sensitivity": cal.sensitivity,
        "published": [asdict(p) for p in cal.published],
    }


def report_markdown(data: Mapping[str, Any]) -> str:
    """The calibration report (markdown) from :func:`report_data`."""
    acc, loo, fit = data["acceptance"], data["leave_one_out"], data["fit_all"]
    out = ["# Latency model calibration", "",
           f"Model: {data['model']}. See docs/latency.md.", "",
           f"- {len(data['points'])} published single-thread points; fit on all: median |error| "
           f"{_apct(fit['median_abs_error'])}, worst {_apct(fit['worst_abs_error'])} ({fit['worst_point']})",
           f"- leave-one-out: median |error| {_apct(loo['median_abs_error'])} (limit 15%), worst "
           f"{_apct(loo['worst_abs_error'])} ({loo['worst_point']}; limit 35%): "
           f"**{'met' if acc['met'] else 'NOT met'}**", "",
           "## Each point", "",
           "| point | core | measured ms | M instructions | fit-all ms | error | leave-one-out ms | error |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in data["points"]:
        out.append(f"| {p['point']} | {p['core']} | {p['measured_ms']:g} | {p['instructions'] / 1e6:.1f} | "
                   f"{p['fit_all_ms']:.1f} | {_pct(p['fit_all_error'])} | {p['loo_ms']:.1f} | "
                   f"{_pct(p['loo_error'])} |")
    out += ["", "## Fitted costs (cycles per executed instruction)", "",
            "| core | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
    for core, costs in data["costs"].items():
        out.append(f"| {core} | " + " | ".join(f"{costs[c]:.3f}" for c in CLASSES) + " |")
    for core, a in data["assumed_cores"].items():
        out.append(f"| {core} (ASSUMED: {a['factor']:g} x {a['base_core']}) | "
                   + " | ".join("-" for _ in CLASSES) + " |")
    out += ["", "Assumed cores are not validated by any published point: "
            + " ".join(f"{k}: {v['reason']}." for k, v in data["assumed_cores"].items()), ""]
    ts = data["thread_scaling"]
    out += ["## Thread scaling", "",
            f"Amdahl parallel fraction p = {ts['parallel_fraction']:.3f}, fitted on the XNNPACK "
            "README's multi-threaded table (as many threads as big cores); the estimate caps "
            "threads at the profile's big cores.", "",
            "| model, device | threads | 1-thread ms | published multi ms | published speed-up | "
            "model speed-up | multi ms error |", "|---|---:|---:|---:|---:|---:|---:|"]
    for p in ts["pairs"]:
        out.append(f"| {p['pair']} | {p['threads']} | {p['single_ms']:g} | {p['multi_ms']:g} | "
                   f"{p['published_speedup']:.2f}x | {p['model_speedup']:.2f}x | "
                   f"{_pct(p['multi_ms_error'])} |")
    if data["order_check"]:
        out += ["", "## Order of the four models per device (estimates, single thread)", "",
                "| device | variant | estimated order, slowest first | as published |",
                "|---|---|---|---|"]
        for r in data["order_check"]:
            out.append(f"| {r['device']} | {r['variant']} | {' > '.join(r['order'])} | "
                       f"{'yes' if r['as_published'] else 'NO'} |")
    if data["pixel2_int8_speedup"]:
        out += ["", "## int8 vs float32 on pixel2", "",
                "| model | published float (2019 kernels) / int8 QAT (2019) | estimated float32 / int8 "
                "(profile runtime: XNNPACK both) | published XNNPACK float (2020) / int8 (2019) | "
                "estimated XNNPACK float / int8 on builtin kernels |", "|---|---:|---:|---:|---:|"]
        for r in data["pixel2_int8_speedup"]:
            def x(v):
                return "-" if v is None else f"{v:.2f}x"
            out.append(f"| {r['family']} | {r['published_float_2019_ms']:g} / {r['published_int8_2019_ms']:g} ms"
                       f" = {x(r['published_speedup'])} | "
                       + (f"{r['estimated_float32_ms']:.1f} / {r['estimated_int8_ms']:.1f} ms = "
                          f"{x(r['estimated_speedup'])}" if r['estimated_speedup'] else "-")
                       + f" | {x(r['published_xnnpack_float_over_int8_2019'])} | "
                       f"{x(r['estimated_float_over_int8_builtin'])} |")
    if data["matrix"]:
        out += ["", "## Estimates, full-size models, one thread (ms)", "",
                "| device | runtime | validated | " + " | ".join(
                    f"{f} {v}" for f in PUBLISHED_ORDER for v in VARIANT_NAMES) + " |",
                "|---|---|---|" + "---:|" * (len(PUBLISHED_ORDER) * len(VARIANT_NAMES))]
        for device in DEVICES.names():
            rows = {(r["family"], r["variant"]): r for r in data["matrix"] if r["device"] == device}
            if not rows:
                continue
            first = next(iter(rows.values()))
            cells = []
            for f in PUBLISHED_ORDER:
                for v in VARIANT_NAMES:
                    r = rows.get((f, v))
                    cells.append("-" if r is None else "not loadable" if not r["loaded"]
                                 else "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}"
                                 + ("" if r.get("variant_in_fit") else " *"))
            val = {True: "yes", False: "NO (assumed)", None: "no parameters"}[first["validated"]]
            out.append(f"| {device} | {first['runtime']} | {val} | " + " | ".join(cells) + " |")
        out += ["", "\\* no published point of this numeric format on this core type was in the "
                "fit: the estimate extrapolates the fitted costs to another class mix (unvalidated)."]
    out += ["", "## Sensitivity: other cost structures, same points", "",
            "| model | costs per core | fit median | fit worst | LOO median | LOO worst (point) |",
            "|---|---:|---:|---:|---:|---|"]
    for r in data["sensitivity"]:
        if "error" in r:
            out.append(f"| {r['model']} | - | - | - | - | {r['error']} |")
            continue
        out.append(f"| {r['model']} | {r['costs_per_core']} | {_apct(r['fit_median_abs_error'])} | "
                   f"{_apct(r['fit_worst_abs_error'])} | {_apct(r['loo_median_abs_error'])} | "
                   f"{_apct(r['loo_worst_abs_error'])} ({r['loo_worst_point']}) |")
    out += ["", "## Published points", "", "| model | variant | device | ms | runtime | source |",
            "|---|---|---|---:|---|---|"]
    for p in data["published"]:
        out.append(f"| {p['model']} | {p['variant']} | {p['device']} | {p['latency_ms']:g} | "
                   f"{p['runtime']} | {p['source']} |")
    return "\n".join(out) + "\n"


def write_report(cal: Calibration, out_dir: Path) -> Tuple[Path, Path]:
    """Writes ``report.md`` and ``calibration.json`` under ``out_dir``."""
    data = report_data(cal)
    md, js = Path(out_dir) / "report.md", Path(out_dir) / "calibration.json"
    atomic_write_json(js, data)
    atomic_write_text(md, report_markdown(data))
    return md, js


# -- estimate --------------------------------------------------------------------

def estimate_model(spec: ModelSpec, device: str, threads: int = 1, log: Log = _noop) -> Dict[str, Any]:
    """Estimated latency of ``spec`` on ``device`` (what ``mobile-model estimate`` prints).

    Builds and converts the model and runs it once on the device's emulated core
    (both cached), then applies the profile's cost model.

    Raises:
        ConfigError: unknown device, bad spec or threads, or a profile without
            fitted parameters (run ``mobile-model calibrate``).
        RuntimeIncompatibleError: the device's runtime cannot load the model.
        DeviceUnavailableError: the emulated run failed.
    """
    t0 = time.monotonic()
    profile = get_device(device)
    params = LatencyParams.from_mapping(profile.latency, f"device profile {profile.name}")
    if params is None:
        raise ConfigError(f"device profile {profile.name} has no latency parameters; "
                          f"run `mobile-model calibrate` first")
    s = speedup(threads, params.parallel_fraction, profile.cores)  # validates threads
    effective = min(threads, profile.cores)
    m = measure(spec, profile, log)
    cycles = predict_cycles(m.instructions_by_class, params.costs)
    single_ms = cycles / (profile.clock_ghz * 1e6)
    info = params.info
    return {
        "device_points": int(info.get("device_points", 0)),
        "core_points": int(info.get("core_points", 0)),
        # Whether published points of this numeric format on this core type were in the
        # fit: int8 kernels have another class mix than float ones (docs/latency.md).
        "variant_in_fit": _variant_in_fit(params, spec.variant),
        "latency_ms": single_ms / s,
        "latency_ms_single_thread": single_ms,
        "instructions": m.instructions,
        "instructions_by_class": dict(m.instructions_by_class),
        "cycles_single_thread": cycles,
        "threads": threads, "threads_effective": effective, "thread_speedup": s,
        "device": profile.name, "qemu_cpu": profile.qemu_cpu, "clock_ghz": profile.clock_ghz,
        "runtime": f"{m.runtime} {m.runtime_version}",
        "validated": params.validated,
        # Leave-one-out error over the published points of this profile's core type.
        "loo_median_abs_error_pct": info.get("loo_median_abs_error_pct"),
        "loo_worst_abs_error_pct": info.get("loo_worst_abs_error_pct"),
        "model": asdict(spec), "model_sha256": m.model_sha256,
        "cached": m.cached, "wall_s": round(time.monotonic() - t0, 3),
    }

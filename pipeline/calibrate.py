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
   :mod:`pipeline.latency` on all points and under leave-one-out, writes the fitted
   parameters into the profiles' ``latency:`` mappings and a report.

:func:`estimate_model` is what ``mobile-model estimate`` calls.
"""

import csv
import hashlib
import io
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.devices.profiles import DEVICES, PROFILE_DIR, DeviceProfile, get_device
from pipeline.errors import ConfigError
from pipeline.latency import CLASSES
from pipeline.store import atomic_write_bytes, atomic_write_json, atomic_write_text

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
        input_size: square input side (>= 32); inputs have 3 channels.
        classes: output classes (>= 2).
        variant: "float32" or "int8" (full integer, post-training quantization,
            float input and output like the build's ``int8-ptq`` variant).
    """

    family: str
    alpha: float = 1.0
    input_size: int = 224
    classes: int = 1000
    variant: str = "float32"

    def __post_init__(self):
        from models import FAMILIES

        FAMILIES.get(self.family)  # ConfigError listing the valid families
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

    @property
    def label(self) -> str:
        return (f"{self.family}-{self.alpha:g}-{self.input_size}x{self.input_size}-"
                f"{self.classes}c-{self.variant}")

    def key(self) -> Dict[str, Any]:
        """What the converted file depends on (its cache key, with library versions)."""
        return {"spec": asdict(self), "seed": SEED, "calibration_images": CALIBRATION_IMAGES,
                "measure_version": MEASURE_VERSION,
                "tensorflow": _dist_version("tensorflow"), "tf_keras": _dist_version("tf-keras")}


def _convert(spec: ModelSpec) -> bytes:
    import numpy as np

    from models import build_model
    from pipeline.native import captured_stderr
    from pipeline.stages.convert import convert_keras
    from pipeline.training import setup_tensorflow
    from pipeline.variants import VARIANTS

    setup_tensorflow(SEED)
    model = build_model(spec.family, spec.alpha, (spec.input_size, spec.input_size, 3), spec.classes)
    calibration = None
    variant = VARIANTS.get("float32")
    if spec.variant == "int8":
        variant = VARIANTS.get("int8-ptq")
        calibration = np.random.default_rng(SEED).random(
            (CALIBRATION_IMAGES, spec.input_size, spec.input_size, 3), dtype=np.float32)
    with captured_stderr():  # the converter's C++ chatter
        tflite = convert_keras(model, variant, calibration, int8_io=False)
    if spec.variant == "float32":
        # The float file must compute what Keras does (cheap, one image); int8 files of
        # random-weight models have no meaningful accuracy to check, and the device
        # check compares the device's int8 outputs with the host runtime's anyway.
        from pipeline.stages.convert import validate_conversion

        x = np.random.default_rng(SEED + 1).random((1, spec.input_size, spec.input_size, 3),
                                                   dtype=np.float32)
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
            return Measurement(**data["measurement"], cached=True)
    model_path = build_tflite(spec, log)
    import numpy as np

    from pipeline.devices.check import run_device_check
    from pipeline.devices.runtime import ensure_runtime

    runtime = runtime or ensure_runtime(progress=log)
    x = np.random.default_rng(SEED).random((1, spec.input_size, spec.input_size, 3),
                                           dtype=np.float32)
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

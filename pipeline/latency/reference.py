"""Reference models: built with random weights, run once on an emulated core, cached.

:func:`build_tflite` builds a model of a registered family with random weights (fixed
seed) and converts it to float32 or int8 (post-training quantization with random
calibration images). :func:`run_reference` runs that file for one inference on a
profile's emulated core (one thread: the counts repeat exactly). Both the
calibration (:func:`measure`, instruction counts) and the search's cost tier
(memory, size, load errors too) keep what a run found on disk, through
:func:`cached_entry`, so a repeated ``estimate`` costs no TensorFlow and no qemu::

    $MOBILE_MODEL_CACHE/latency/   (default ~/.cache/mobile-model/latency/)
        models/<key>.tflite        converted reference models
        runs/<key>.json            one emulated run: hot blocks, counts by class, graph bytes
        mca/<key>.json             llvm-mca's cycles of one block on one scheduling model
        search/<key>.json          one emulated run as the search's cost tier keeps it
"""

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from models import MIN_INPUT_SIZE
from pipeline.devices.profiles import DeviceProfile
from pipeline.errors import ConfigError, Log, RuntimeIncompatibleError
from pipeline.devices.insn_counts import CLASSES
from pipeline.latency.published import PUBLISHED_FORMATS
from pipeline.pool import Needs, Pool
from pipeline.store.atomic import atomic_write_bytes, atomic_write_json, json_hash, short_hash
from pipeline.variants import VARIANTS, reference_name


# Bump when building, converting or running reference models changes what a cached
# entry holds (so stale entries are not reused).
MEASURE_VERSION = 2
SEED = 0
#: What a reference model may be (``ModelSpec.variant``) -> the build variant it is
#: converted as: the published formats, and the QAT graph the search prices.
REFERENCE_VARIANTS = {reference_name(v): v for v in ("float32", "int8-ptq", "int8-qat")}
SPEC_VARIANTS = tuple(REFERENCE_VARIANTS)
if SPEC_VARIANTS[:len(PUBLISHED_FORMATS)] != PUBLISHED_FORMATS:
    raise ValueError(f"reference models {SPEC_VARIANTS} do not cover the published formats {PUBLISHED_FORMATS}")
# Random images given to the int8 converter as calibration data. Weights are random
# too: the kernels XNNPACK / TFLite pick, and so the instructions, depend on shapes
# and types, not on values.
CALIBRATION_IMAGES = 8


def noop(msg: str) -> None:
    """A log that drops every message."""


def cache_root() -> Path:
    """``$MOBILE_MODEL_CACHE/latency`` (default ``~/.cache/mobile-model/latency``)."""
    base = os.environ.get("MOBILE_MODEL_CACHE")
    base_path = Path(base) if base else Path.home() / ".cache" / "mobile-model"
    return base_path.expanduser().resolve() / "latency"


def key_hash(obj: Any) -> str:
    """A short hash of a JSON-serialisable cache key (part of a cache file name)."""
    return json_hash(obj, 20)


# Source files that shape a reference model's .tflite: a change to any of them makes
# cached models and runs stale.
_MODEL_SOURCES = ("models", "pipeline/export/convert.py", "pipeline/variants.py")
_REPO = Path(__file__).resolve().parents[2]


def sources_hash() -> str:
    """A hash of the sources that shape a reference model's .tflite (``_MODEL_SOURCES``)."""
    parts = []
    for entry in _MODEL_SOURCES:
        path = _REPO / entry
        for f in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            parts.append(f.name.encode() + b"\0" + f.read_bytes())
    return short_hash(b"".join(parts), 16)


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@dataclass(frozen=True)
class ModelSpec:
    """A model to estimate: family, width, input size, classes and numeric format.

    Attributes:
        family: a name in ``models.FAMILIES``.
        alpha: width multiplier (> 0).
        input_size: square input side (``models.MIN_INPUT_SIZE`` to 1024).
        classes: output classes (>= 2).
        variant: "float32", "int8" (full integer, post-training quantization,
            float input and output like the build's ``int8-ptq`` variant) or
            "int8-qat" (the model wrapped for quantization-aware training, untrained,
            then converted like the build's ``int8-qat`` variant: its graph, which
            can hold ops post-training quantization folds away, such as the
            hard-sigmoid's ADD after a squeeze-excite conv).
        channels: input channels, 1 (grey) or 3.
        first_stride: stride of the stem convolution, 1 or 2 (the families' default).

        genotype: with family ``mbconv``, the block-level architecture
            (:class:`models.genotype.Genotype`) as its canonical JSON
            (:meth:`models.genotype.Genotype.json`); alpha must then be 1.

    ``channels`` and ``first_stride`` enter the label and the cache key only when
    they differ from 3 and 2, so entries of the full-size reference models stay valid;
    so does ``genotype``, only when set.
    """

    family: str
    alpha: float = 1.0
    input_size: int = 224
    classes: int = 1000
    variant: str = "float32"
    channels: int = 3
    first_stride: int = 2
    genotype: Optional[str] = None

    def __post_init__(self):
        from pipeline.recipe.schema import GENOTYPE_FAMILY
        from pipeline.train.zoo import family_names

        if self.family == GENOTYPE_FAMILY or self.genotype is not None:
            from models.genotype import Genotype

            if self.family != GENOTYPE_FAMILY or self.genotype is None or self.alpha != 1:
                given = "set" if self.genotype else "unset"
                raise ConfigError(f"a genotype goes with family {GENOTYPE_FAMILY} at alpha 1 (got family "
                                  f"{self.family!r}, alpha {self.alpha!r}, genotype {given})")
            try:
                Genotype.from_dict(json.loads(self.genotype))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"bad genotype: {e}") from None
        elif self.family not in family_names():
            raise ConfigError(f"unknown model family {self.family!r}; valid: {', '.join(family_names())}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not 0 < self.alpha <= 4:
            raise ConfigError(f"alpha must be a number in (0, 4], got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) \
                or not MIN_INPUT_SIZE <= self.input_size <= 1024:
            raise ConfigError(f"input size must be an integer in [{MIN_INPUT_SIZE}, 1024], got {self.input_size!r}")
        if isinstance(self.classes, bool) or not isinstance(self.classes, int) or self.classes < 2:
            raise ConfigError(f"classes must be an integer >= 2, got {self.classes!r}")
        if self.variant not in SPEC_VARIANTS:
            raise ConfigError(f"variant {self.variant!r} is unknown; valid: {', '.join(SPEC_VARIANTS)}")
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
        name = f"{self.family}-{self.genotype_obj().key()}" if self.genotype else f"{self.family}-{self.alpha:g}"
        return f"{name}-{self.input_size}x{self.input_size}-{self.classes}c-{self.variant}{tail}"

    def genotype_obj(self):
        """The :class:`models.genotype.Genotype` of a genotype spec (None otherwise)."""
        from models.genotype import Genotype

        return Genotype.from_dict(json.loads(self.genotype)) if self.genotype else None

    def key(self) -> Dict[str, Any]:
        """What the converted file depends on (its cache key, with library versions)."""
        spec = {k: v for k, v in asdict(self).items() if k not in ("channels", "first_stride", "genotype")}
        spec.update(self._extra())
        if self.genotype:
            spec["genotype"] = self.genotype
        return {"spec": spec, "seed": SEED, "calibration_images": CALIBRATION_IMAGES,
                "measure_version": MEASURE_VERSION, "sources": sources_hash(),
                "tensorflow": _dist_version("tensorflow"), "tf_keras": _dist_version("tf-keras")}


def _convert(spec: ModelSpec) -> bytes:
    import numpy as np

    from pipeline.export.convert import convert_keras
    from pipeline.native import captured_stderr
    from pipeline.train.fit import setup_tensorflow
    from pipeline.train.zoo import build_model

    setup_tensorflow(SEED)
    model = build_model(spec.family, spec.alpha, spec.input_shape, spec.classes, genotype=spec.genotype_obj(),
                        first_stride=spec.first_stride)
    calibration = None
    variant = VARIANTS.get(REFERENCE_VARIANTS[spec.variant])
    if variant.full_integer:
        calibration = np.random.default_rng(SEED).random(
            (CALIBRATION_IMAGES, *spec.input_shape), dtype=np.float32)
    if variant.source == "qat":
        from pipeline.train.zoo import quantize_model

        model = quantize_model(model)
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


def _model_path(spec: ModelSpec) -> Path:
    return cache_root() / "models" / f"{spec.label}-{key_hash(spec.key())}.tflite"


def build_tflite(spec: ModelSpec, log: Log = noop) -> Path:
    """The converted .tflite of ``spec`` (random weights, seed ``SEED``), cached.

    Raises:
        ConfigError: an invalid spec (see :class:`ModelSpec`).
        ConversionMismatchError: the float32 file disagrees with Keras.
    """
    path = _model_path(spec)
    if path.is_file():
        return path
    log(f"[latency] building and converting {spec.label}")
    t0 = time.monotonic()
    atomic_write_bytes(path, _convert(spec))
    log(f"[latency] {spec.label}: {path.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - t0:.0f} s")
    return path


def run_key(spec: ModelSpec, profile: DeviceProfile) -> Dict[str, Any]:
    """What one emulated run of ``spec`` depends on: the model, the core and the runtime."""
    from pipeline.devices.runtime import runtime_key

    return {"model": spec.key(), "qemu_cpu": profile.qemu_cpu, "runtime": profile.runtime,
            "runtime_version": profile.runtime_version, "runtime_key": runtime_key()}


def _entry_path(kind: str, spec, profile: DeviceProfile, key: Dict[str, Any]) -> Path:
    return cache_root() / kind / f"{spec.label}-{profile.qemu_cpu}-{profile.runtime}-{key_hash(key)}.json"


def _stored_entry(kind: str, spec, profile: DeviceProfile, key: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The cache file's contents for ``key``; None when absent, unreadable or another key's."""
    path = _entry_path(kind, spec, profile, key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    return data if data.get("key") == key else None


def has_entry(kind: str, spec, profile: DeviceProfile, key: Dict[str, Any]) -> bool:
    """Whether :func:`cached_entry` would find ``key`` in the cache (nothing is computed)."""
    return _stored_entry(kind, spec, profile, key) is not None


def cached_entry(kind: str, spec: ModelSpec, profile: DeviceProfile, key: Dict[str, Any],
                 field: str, compute: Callable[[], Dict[str, Any]]) -> Tuple[Dict[str, Any], bool]:
    """The entry ``field`` of ``cache_root()/kind`` for ``key``, computed and kept if absent.

    An entry is reused only when its stored key equals ``key`` (a hash collision, a
    stale or an unreadable file is recomputed).

    Returns:
        (the entry, whether it came from the cache).
    """
    data = _stored_entry(kind, spec, profile, key)
    if data is not None:
        return data[field], True
    entry = compute()
    keep_entry(kind, spec, profile, key, field, entry)
    return entry, False


def keep_entry(kind: str, spec, profile: DeviceProfile, key: Dict[str, Any], field: str,
               entry: Dict[str, Any]) -> None:
    """Writes ``entry`` (computed elsewhere, e.g. by a job of a pool) as :func:`cached_entry` keeps it."""
    atomic_write_json(_entry_path(kind, spec, profile, key), {"key": key, field: entry})


def run_reference(spec: ModelSpec, profile: DeviceProfile, log: Log = noop, runtime=None):
    """One inference of ``spec``'s random-weight file on ``profile``'s emulated core.

    One thread whatever the profile says (the counts then repeat exactly), one
    inference after the runner's warm-up (more would only cost time, ~1e8-1e9 guest
    instructions each). Not cached: see :func:`measure` and :func:`cached_entry`.

    Returns:
        (the device check's result, which may say the model does not load; the file).

    Raises:
        DeviceUnavailableError: no ARM runtime, a crash or a timeout.
    """
    import numpy as np

    from pipeline.devices.check import run_device_check
    from pipeline.devices.runtime import ensure_runtime

    path = build_tflite(spec, log)
    runtime = runtime or ensure_runtime(progress=log)
    x = np.random.default_rng(SEED).random((1, *spec.input_shape), dtype=np.float32)
    result = run_device_check(path, replace(profile, default_threads=1), x, threads=1, runtime=runtime)
    return result, path


@dataclass(frozen=True)
class Measurement:
    """One inference of a reference model on one emulated core: what estimates need.

    ``instructions_by_class`` has every class of ``CLASSES``; the counts are exact
    (one interpreter thread) and repeat run to run. ``block_profile`` holds the hot
    blocks (``DeviceResult.to_dict()["block_profile"]``), ``traffic`` the graph's bytes
    (:meth:`pipeline.latency.traffic.GraphTraffic.to_dict`).
    """

    spec: Dict[str, Any]
    qemu_cpu: str
    runtime: str
    runtime_version: str
    runtime_key: str
    model_sha256: str
    instructions: int
    instructions_by_class: Dict[str, int]
    block_profile: Dict[str, Any]
    traffic: Dict[str, Any]
    process_wall_s: float
    cached: bool = False

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        return d


def measure(spec: ModelSpec, profile: DeviceProfile, log: Log = noop,
            runtime=None) -> Measurement:
    """Per-class instructions of one inference of ``spec`` on ``profile``'s core, cached.

    Only the profile's core (``qemu_cpu``) and runtime matter: profiles that share
    them share the entry. The run is single-threaded whatever the profile says.

    Raises:
        RuntimeIncompatibleError: the profile's runtime cannot load the model.
        DeviceUnavailableError: no ARM runtime, a crash or a timeout.
    """

    key = run_key(spec, profile)
    if key_hash(key) in _REFUSED:  # a job of measure_all found it does not load
        raise RuntimeIncompatibleError(_REFUSED[key_hash(key)])

    def run() -> Dict[str, Any]:
        path = build_tflite(spec, log)  # before the message: converting is its own step
        log(f"[latency] running {spec.label} on {profile.qemu_cpu} ({profile.runtime} "
            f"{profile.runtime_version}) under qemu")
        m = _measured_run(spec, profile, path, runtime)
        _log_measured(spec, profile, m, log)
        return m

    data, cached = cached_entry("runs", spec, profile, key, "measurement", run)
    data = dict(data, instructions_by_class={c: data["instructions_by_class"][c] for c in CLASSES})
    return Measurement(**data, cached=cached)


def _measured_run(spec: ModelSpec, profile: DeviceProfile, path: Path, runtime=None) -> Dict[str, Any]:
    """One inference of the file of ``spec`` at ``path`` on ``profile``'s core: a
    :class:`Measurement` as its dict (what the ``runs`` cache keeps)."""
    import numpy as np

    from pipeline.devices.check import run_device_check
    from pipeline.devices.runtime import ensure_runtime, runtime_key
    from pipeline.latency.traffic import graph_traffic

    x = np.random.default_rng(SEED).random((1, *spec.input_shape), dtype=np.float32)
    result = run_device_check(path, replace(profile, default_threads=1), x, threads=1,
                              runtime=runtime or ensure_runtime()).require_loaded()
    if not result.counts_exact:
        raise ConfigError(f"{spec.label}: counts of a multi-threaded run are not repeatable")
    return Measurement(spec=asdict(spec), qemu_cpu=profile.qemu_cpu, runtime=result.runtime,
                       runtime_version=result.runtime_version, runtime_key=runtime_key(),
                       model_sha256=result.model_sha256, instructions=int(result.instructions_median),
                       instructions_by_class={c: int(result.instructions_by_class[c]) for c in CLASSES},
                       block_profile=result.to_dict()["block_profile"],
                       traffic=graph_traffic(path).to_dict(), process_wall_s=result.process_wall_s).to_dict()


def _log_measured(spec: ModelSpec, profile: DeviceProfile, m: Dict[str, Any], log: Log) -> None:
    log(f"[latency] {spec.label} on {profile.qemu_cpu}: {m['instructions'] / 1e6:.1f} M instructions "
        f"({m['process_wall_s']:.0f} s emulated)")


#: What a reference job declares: one core, and TensorFlow converting a full-size model
#: (224x224, 1000 classes) beside its emulated run.
REFERENCE_NEEDS = Needs(cpus=1, memory_mb=4096)
#: Runs that a job of :func:`measure_all` found the runtime does not load, by run key hash:
#: :func:`measure` raises their error instead of running them again (not loading is not cached).
_REFUSED: Dict[str, str] = {}


def reference_job(spec: ModelSpec, profile: DeviceProfile, tflite: Optional[bytes]) -> Dict[str, Any]:
    """Job: one inference of ``spec``'s random-weight file on ``profile``'s core.

    Args:
        tflite: the converted file, or None to convert it here.

    Returns:
        ``measurement`` (a :class:`Measurement` dict) or ``refused`` (why the runtime does
        not load the model), and ``tflite``: the bytes converted here (None when given).
    """
    from pipeline.native import tf_environment

    tf_environment()
    converted = None if tflite is not None else _convert(spec)
    with tempfile.TemporaryDirectory(prefix="mm-job-") as tmp:
        path = Path(tmp) / f"{spec.label}.tflite"
        path.write_bytes(tflite if tflite is not None else converted)
        try:
            return {"measurement": _measured_run(spec, profile, path), "tflite": converted}
        except RuntimeIncompatibleError as e:
            return {"refused": str(e), "tflite": converted}


def measure_all(runs: Sequence[Tuple[ModelSpec, DeviceProfile]], pool: Pool, log: Log = noop) -> int:
    """Runs every (spec, profile) of ``runs`` that the cache lacks, each a job of ``pool``, and
    keeps what comes back as :func:`measure` would (the converted file, the run's entry), so
    that :func:`measure` then finds it.

    Returns:
        How many runs were measured.
    """
    todo: Dict[str, Tuple[ModelSpec, DeviceProfile, Dict[str, Any]]] = {}
    for spec, profile in runs:
        key = run_key(spec, profile)
        if key_hash(key) not in todo and key_hash(key) not in _REFUSED and not has_entry("runs", spec, profile, key):
            todo[key_hash(key)] = (spec, profile, key)
    futures = {}
    for h, (spec, profile, key) in todo.items():
        model = _model_path(spec)
        log(f"[latency] {'running' if model.is_file() else 'converting and running'} {spec.label} on "
            f"{profile.qemu_cpu} ({profile.runtime} {profile.runtime_version}) under qemu")
        futures[h] = pool.submit(reference_job, spec, profile, model.read_bytes() if model.is_file() else None,
                                 name=f"reference/{spec.label}/{profile.qemu_cpu}/{profile.runtime}",
                                 needs=REFERENCE_NEEDS)
    for h, future in futures.items():
        spec, profile, key = todo[h]
        out = future.result()
        if out["tflite"] is not None and not _model_path(spec).is_file():
            atomic_write_bytes(_model_path(spec), out["tflite"])
        if "refused" in out:
            _REFUSED[h] = out["refused"]
            continue
        keep_entry("runs", spec, profile, key, "measurement", out["measurement"])
        _log_measured(spec, profile, out["measurement"], log)
    return len(todo)

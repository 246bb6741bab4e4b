"""Regression gates: compare a build with a baseline, variant by variant and device by device.

``mobile-model compare BASELINE CURRENT`` reads two *snapshots* (a build
directory, its ``summary.json`` or ``manifest.json``, or a committed baseline
file written by ``mobile-model baseline``) and checks, for every variant on the
host and every variant x device:

    host:    top-1, file size, gzip size
    device:  loads, top-1, instructions per inference, estimated latency, peak memory

Each check allows a change of ``max(absolute, relative * |baseline|)`` in the bad
direction (:data:`THRESHOLDS`); a larger bad change is a regression, a larger
good change an improvement. Instruction counts and file sizes are deterministic
for identical ``.tflite`` files (see DESIGN.md), so their default tolerance is
tight (0.1%); accuracy of a retrained model moves a little between machines, so
top-1 gets an absolute allowance in points.

Thresholds, lowest precedence first: the defaults below, a ``thresholds`` mapping
in the baseline file, a ``regressions`` mapping in CURRENT's recipe, then the
command-line options. The keys are the option names with underscores
(``max_instr_increase: 0.001``).

The baseline file format (``format: mobile-model-baseline``, ``version: 1``) is a
trimmed summary: the recipe, per-variant host figures with the ``.tflite``
sha256, per-device figures with the runtime, and library versions. It carries
no time stamp, so re-writing it from an identical build gives an identical file.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple
from xml.sax.saxutils import quoteattr

import yaml

from pipeline.errors import MobileModelError
from pipeline.store.atomic import atomic_write_json, atomic_write_text, sha256_file

BASELINE_FORMAT = "mobile-model-baseline"
BASELINE_VERSION = 1


class UnusableInputError(MobileModelError):
    """A compare input is missing, is not a build, or is not in a format we read (exit 2)."""

    exit_code = 2


# -- thresholds -----------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """One tolerance: its option name, default, unit and help text."""

    name: str
    default: float
    unit: str
    help: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


THRESHOLDS: Dict[str, Threshold] = {t.name: t for t in (
    # Test splits are small (a smoke build tests 128 images: one image = 0.78 points)
    # and a retrained model moves a little between machines: allow a point.
    Threshold("max_top1_drop", 1.0, "points", "Largest allowed host top-1 drop, in percentage points."),
    # Devices run a subset of the test split (recipe devices.samples: 100 in the default
    # recipe, so one image is one point): allow two images there.
    Threshold("max_device_top1_drop", 2.0, "points", "Largest allowed top-1 drop on a device, in percentage points."),
    # A .tflite's size depends on the architecture and variant, not on trained values.
    Threshold("max_size_increase", 0.001, "fraction", "Largest allowed relative file-size increase."),
    Threshold("max_size_increase_bytes", 0.0, "bytes", "Largest allowed absolute file-size increase."),
    # gzip size depends on the trained values (zeros, repeats): a retrain moves it a little.
    Threshold("max_gzip_increase", 0.01, "fraction", "Largest allowed relative gzip-size increase."),
    Threshold("max_gzip_increase_bytes", 0.0, "bytes", "Largest allowed absolute gzip-size increase."),
    # Counts repeat exactly run to run for an identical model and runtime (DESIGN.md).
    Threshold("max_instr_increase", 0.001, "fraction",
              "Largest allowed relative increase of instructions per inference."),
    Threshold("max_instr_increase_abs", 0.0, "instructions",
              "Largest allowed absolute increase of instructions per inference."),
    Threshold("max_latency_increase", 0.001, "fraction",
              "Largest allowed relative increase of estimated latency (compared when both sides have one)."),
    Threshold("max_latency_increase_ms", 0.0, "ms", "Largest allowed absolute increase of estimated latency."),
    Threshold("max_memory_increase", 0.01, "fraction", "Largest allowed relative peak-memory increase."),
    Threshold("max_memory_increase_bytes", 0.0, "bytes", "Largest allowed absolute peak-memory increase."),
)}

DEFAULT_THRESHOLDS: Dict[str, float] = {name: t.default for name, t in THRESHOLDS.items()}


def validate_thresholds(values: Any, where: str, error: type = UnusableInputError) -> Dict[str, float]:
    """Checks a thresholds mapping (from a recipe, a baseline or options).

    Args:
        where: how the mapping is named in messages (``recipe.regressions``).
        error: the exception type to raise (``ConfigError`` when validating a recipe).

    Returns:
        The mapping with float values.

    Raises:
        UnusableInputError (or ``error``): not a mapping, an unknown key (the message
            lists the valid keys), or a value that is not a non-negative number.
    """
    if not isinstance(values, Mapping):
        raise error(f"{where}: expected a mapping of threshold name to number, got {values!r}")
    out = {}
    for key, value in values.items():
        if key not in THRESHOLDS:
            raise error(f"{where}: unknown threshold {key!r}; valid: {', '.join(THRESHOLDS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
            raise error(f"{where}.{key}: expected a number >= 0 ({THRESHOLDS[key].unit}), got {value!r}")
        out[key] = float(value)
    return out


# -- metrics --------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One compared figure.

    Attributes:
        key: field of a snapshot record.
        scope: ``host`` (per variant) or ``device`` (per device x variant).
        lower_is_better: direction of a good change.
        rel, abs_: threshold names (relative, absolute); either may be None.
        scale, fmt, unit: how the value is shown in tables.
    """

    key: str
    label: str
    scope: str
    lower_is_better: bool
    rel: Optional[str]
    abs_: Optional[str]
    scale: float
    fmt: str
    unit: str


METRICS: Tuple[Metric, ...] = (
    Metric("top1", "top-1 %", "host", False, None, "max_top1_drop", 1.0, ".2f", "%"),
    Metric("size_bytes", "size KiB", "host", True, "max_size_increase", "max_size_increase_bytes",
           1 / 1024, ".1f", "KiB"),
    Metric("gzip_bytes", "gzip KiB", "host", True, "max_gzip_increase", "max_gzip_increase_bytes",
           1 / 1024, ".1f", "KiB"),
    Metric("top1", "top-1 %", "device", False, None, "max_device_top1_drop", 1.0, ".2f", "%"),
    Metric("instructions_per_inference", "M instr / inference", "device", True, "max_instr_increase",
           "max_instr_increase_abs", 1e-6, ".4f", "M"),
    Metric("latency_ms", "est. latency ms", "device", True, "max_latency_increase", "max_latency_increase_ms",
           1.0, ".3f", "ms"),
    Metric("peak_memory_bytes", "memory MiB", "device", True, "max_memory_increase", "max_memory_increase_bytes",
           1 / 2 ** 20, ".3f", "MiB"),
)

HOST_FIELDS = ("top1", "size_bytes", "gzip_bytes")
DEVICE_FIELDS = ("loaded", "load_error_op", "load_error_op_version", "top1", "instructions_per_inference",
                 "latency_ms", "peak_memory_bytes", "runtime")


# -- snapshots ------------------------------------------------------------------


@dataclass
class Snapshot:
    """What a comparison reads from one side, whatever the input format was.

    ``variants`` maps variant -> {top1, size_bytes, gzip_bytes, sha256}; ``devices``
    maps device -> variant -> {loaded, load_error_op, ..., runtime}. Absent figures
    are None.
    """

    source: str
    kind: str
    name: str
    variants: Dict[str, Dict[str, Any]]
    devices: Dict[str, Dict[str, Dict[str, Any]]]
    recipe: Optional[Dict[str, Any]] = None
    deploy_variant: Optional[str] = None
    float_top1: Optional[float] = None
    thresholds: Dict[str, float] = field(default_factory=dict)
    versions: Dict[str, str] = field(default_factory=dict)


def load_snapshot(path: "str | Path", role: str = "input") -> Snapshot:
    """Reads a build directory, ``summary.json``, ``manifest.json`` or baseline file.

    Args:
        role: how the input is named in messages (``BASELINE``, ``CURRENT``).

    Raises:
        UnusableInputError: the path is missing, is not a build, or the file is not
            one of the formats above (the message says which and what was expected).
    """
    return _in_recipe_order(_load_snapshot(Path(path), role))


def _load_snapshot(p: Path, role: str) -> Snapshot:
    if not p.exists():
        raise UnusableInputError(f"{role} {p}: no such file or directory")
    if p.is_dir():
        if (p / "summary.json").is_file():
            return _from_summary(_read_json(p / "summary.json", role), str(p), p, role)
        if (p / "manifest.json").is_file():
            return _from_manifest(_read_json(p / "manifest.json", role), str(p), p, role)
        raise UnusableInputError(f"{role} {p}: not a build directory (no summary.json or manifest.json in it)")
    data = _read_json(p, role)
    if not isinstance(data, dict):
        raise UnusableInputError(f"{role} {p}: expected a JSON object, got {type(data).__name__}")
    if "format" in data:
        return _from_baseline(data, str(p), role)
    if "stages" in data:
        return _from_manifest(data, str(p), p.parent, role)
    if "variants" in data:
        return _from_summary(data, str(p), p.parent, role)
    raise UnusableInputError(f"{role} {p}: not a mobile-model summary, manifest or baseline "
                             f"(expected a 'variants', 'stages' or 'format' key; found "
                             f"{', '.join(sorted(map(str, data))[:8]) or 'none'})")


def _read_json(p: Path, role: str) -> Any:
    try:
        return json.loads(p.read_text())
    except UnicodeDecodeError:
        raise UnusableInputError(f"{role} {p}: not a JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise UnusableInputError(f"{role} {p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _number(value: Any, where: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnusableInputError(f"{where}: expected a number or null, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UnusableInputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _host_record(rec: Any, where: str, sha256: Optional[str] = None) -> Dict[str, Any]:
    rec = _mapping(rec, where)
    out = {k: _number(rec.get(k), f"{where}.{k}") for k in HOST_FIELDS}
    out["sha256"] = rec.get("sha256", sha256)
    return out


def _device_record(rec: Any, where: str) -> Dict[str, Any]:
    rec = _mapping(rec, where)
    if "loaded" not in rec:
        raise UnusableInputError(f"{where}: missing 'loaded' (not a device result)")
    out = {k: rec.get(k) for k in DEVICE_FIELDS}
    out["loaded"] = bool(rec["loaded"])
    for k in ("top1", "instructions_per_inference", "latency_ms", "peak_memory_bytes"):
        out[k] = _number(rec.get(k), f"{where}.{k}")
    return out


def _devices(data: Any, where: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
    return {dev: {v: _device_record(rec, f"{where}.{dev}.{v}") for v, rec in _mapping(per, f"{where}.{dev}").items()}
            for dev, per in _mapping(data, where).items()}


def _recipe_from(root: Path) -> Optional[Dict[str, Any]]:
    p = root / "recipe.yaml"
    if not p.is_file():
        return None
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        return None  # the recipe only adds notes and thresholds; the figures stand without it
    return data if isinstance(data, dict) else None


def _manifest_hashes(root: Path) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(variant -> .tflite sha256, library versions) from a build's manifest, if readable."""
    p = root / "manifest.json"
    if not p.is_file():
        return {}, {}
    try:
        stages = json.loads(p.read_text()).get("stages", {})
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return {}, {}
    return _stage_hashes(stages), _stage_versions(stages)


def _stage_hashes(stages: Mapping[str, Any]) -> Dict[str, str]:
    out = {}
    for name, rec in stages.items():
        if name.startswith("convert/") and isinstance(rec, dict):
            sha = rec.get("outputs", {}).get("tflite", {}).get("sha256")
            if sha:
                out[name.split("/", 1)[1]] = sha
    return out


def _stage_versions(stages: Mapping[str, Any]) -> Dict[str, str]:
    for rec in stages.values():
        if isinstance(rec, dict) and isinstance(rec.get("versions"), dict):
            return dict(rec["versions"])
    return {}


def _in_recipe_order(snap: Snapshot) -> Snapshot:
    """Variants and devices in the recipe's order when it is known (summary.json sorts keys)."""
    recipe = snap.recipe or {}
    convert, devices = recipe.get("convert"), recipe.get("devices")
    variants = (convert.get("variants") if isinstance(convert, dict) else None) or []
    targets = (devices.get("targets") if isinstance(devices, dict) else None) or []
    snap.variants = _ordered(snap.variants, variants)
    snap.devices = {d: _ordered(per, variants) for d, per in _ordered(snap.devices, targets).items()}
    return snap


def _ordered(mapping: Mapping[str, Any], order: Iterable[str]) -> Dict[str, Any]:
    order = [k for k in order if isinstance(k, str)]
    keys = [k for k in order if k in mapping] + [k for k in mapping if k not in order]
    return {k: mapping[k] for k in keys}


def _recipe_thresholds(recipe: Optional[Dict[str, Any]], where: str) -> Dict[str, float]:
    if not recipe or recipe.get("regressions") is None:
        return {}
    return validate_thresholds(recipe["regressions"], f"{where}: recipe.regressions")


def _from_summary(data: Dict[str, Any], source: str, root: Path, role: str) -> Snapshot:
    where = f"{role} {source}"
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        raise UnusableInputError(f"{where}: not a build summary (no 'variants' object)")
    hashes, versions = _manifest_hashes(root)
    variants = {}
    for v, rec in data["variants"].items():
        sha = hashes.get(v)
        if sha is None and isinstance(rec, dict) and rec.get("path") and Path(rec["path"]).is_file():
            sha = sha256_file(Path(rec["path"]))
        variants[v] = _host_record(rec, f"{where}: variants.{v}", sha)
    recipe = _recipe_from(root)
    return Snapshot(source, "build", str(data.get("recipe") or (recipe or {}).get("name") or "?"), variants,
                    _devices(data.get("devices"), f"{where}: devices"), recipe, data.get("deploy_variant"),
                    _number(data.get("float_top1"), f"{where}: float_top1"),
                    _recipe_thresholds(recipe, where), versions)


def _from_manifest(data: Dict[str, Any], source: str, root: Path, role: str) -> Snapshot:
    where = f"{role} {source}"
    stages = _mapping(data.get("stages"), f"{where}: stages")
    variants: Dict[str, Dict[str, Any]] = {}
    devices: Dict[str, Dict[str, Dict[str, Any]]] = {}
    hashes = _stage_hashes(stages)
    for name, rec in stages.items():
        metrics = _mapping(rec, f"{where}: stages.{name}").get("metrics")
        if name.startswith("evaluate/"):
            v = name.split("/", 1)[1]
            variants[v] = _host_record(metrics, f"{where}: stages.{name}.metrics", hashes.get(v))
        elif name.startswith("device/") and name.count("/") == 2:
            _, dev, v = name.split("/")
            devices.setdefault(dev, {})[v] = _device_record(metrics, f"{where}: stages.{name}.metrics")
    if not variants:
        raise UnusableInputError(f"{where}: the manifest records no evaluated variant "
                                 "(an unfinished build, or not a mobile-model manifest)")
    recipe = data.get("recipe") if isinstance(data.get("recipe"), dict) else _recipe_from(root)
    # Keep only what the recipe builds: a manifest also holds records of variants or
    # devices an earlier recipe of the same directory had.
    if recipe:
        keep_v = set(_mapping(recipe.get("convert"), "recipe.convert").get("variants") or variants)
        keep_d = set(_mapping(recipe.get("devices"), "recipe.devices").get("targets") or devices)
        variants = {v: r for v, r in variants.items() if v in keep_v}
        devices = {d: {v: r for v, r in per.items() if v in keep_v} for d, per in devices.items() if d in keep_d}
    train = _mapping(stages.get("train"), f"{where}: stages.train").get("metrics") or {}
    name = (recipe or {}).get("name") or "?"
    if (recipe or {}).get("smoke_form"):
        name += "-smoke"
    return Snapshot(source, "manifest", name, variants, devices, recipe, (recipe or {}).get("deploy_variant"),
                    _number(train.get("test_top1"), f"{where}: stages.train.metrics.test_top1"),
                    _recipe_thresholds(recipe, where), _stage_versions(stages))


def _from_baseline(data: Dict[str, Any], source: str, role: str) -> Snapshot:
    where = f"{role} {source}"
    if data.get("format") != BASELINE_FORMAT:
        raise UnusableInputError(f"{where}: unknown format {data.get('format')!r} (expected {BASELINE_FORMAT!r})")
    if data.get("version") != BASELINE_VERSION:
        raise UnusableInputError(f"{where}: baseline version {data.get('version')!r} is not supported "
                                 f"(this mobile-model reads version {BASELINE_VERSION}); write it again with "
                                 "`mobile-model baseline`")
    variants = {v: _host_record(rec, f"{where}: variants.{v}")
                for v, rec in _mapping(data.get("variants"), f"{where}: variants").items()}
    if not variants:
        raise UnusableInputError(f"{where}: the baseline holds no variant")
    recipe = data.get("recipe") if isinstance(data.get("recipe"), dict) else None
    return Snapshot(source, "baseline", str(data.get("name") or "?"), variants,
                    _devices(data.get("devices"), f"{where}: devices"), recipe, data.get("deploy_variant"),
                    _number(data.get("float_top1"), f"{where}: float_top1"),
                    validate_thresholds(data.get("thresholds") or {}, f"{where}: thresholds"),
                    dict(_mapping(data.get("versions"), f"{where}: versions")))


def baseline_dict(snap: Snapshot, thresholds: Optional[Mapping[str, float]] = None) -> Dict[str, Any]:
    """The committed-baseline form of a snapshot (no time stamps: reproducible)."""
    out: Dict[str, Any] = {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "name": snap.name,
        "deploy_variant": snap.deploy_variant,
        "float_top1": snap.float_top1,
        "recipe": snap.recipe,
        "versions": snap.versions,
        "variants": snap.variants,
        "devices": snap.devices,
    }
    if thresholds:
        out["thresholds"] = dict(thresholds)
    return out


def write_baseline(build: "str | Path", out: "str | Path",
                   thresholds: Optional[Mapping[str, float]] = None) -> Snapshot:
    """Writes the baseline file ``out`` from a build (directory, summary or manifest).

    Keeps the ``thresholds`` of an existing baseline at ``out`` unless new ones are given.

    Raises:
        UnusableInputError: ``build`` is not a readable build.
    """
    snap = load_snapshot(build, "BUILD")
    if snap.kind == "baseline":
        raise UnusableInputError(f"BUILD {build}: is already a baseline file; give a build directory")
    out = Path(out)
    if thresholds is None and out.is_file():
        try:
            old = json.loads(out.read_text())
            thresholds = validate_thresholds(old.get("thresholds") or {}, f"{out}: thresholds") \
                if isinstance(old, dict) else None
        except json.JSONDecodeError:
            thresholds = None
    atomic_write_json(out, baseline_dict(snap, thresholds))
    return snap


# -- comparison -----------------------------------------------------------------

OK, REGRESSION, IMPROVED, SKIPPED, MISSING, NEW = "ok", "regression", "improved", "skipped", "missing", "new"


@dataclass
class Check:
    """One compared figure: where (``host`` or a device), variant, metric, verdict."""

    where: str
    variant: str
    metric: str
    label: str
    baseline: Optional[float]
    current: Optional[float]
    allowed: Optional[float]
    status: str
    message: str
    metric_def: Optional[Metric] = None
    why: str = ""  # for a load check whose current side fails: the failing op

    @property
    def failed(self) -> bool:
        return self.status in (REGRESSION, MISSING)

    @property
    def delta(self) -> Optional[float]:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    def to_dict(self) -> Dict[str, Any]:
        return {"where": self.where, "variant": self.variant, "metric": self.metric, "baseline": self.baseline,
                "current": self.current, "delta": self.delta, "allowed": self.allowed, "status": self.status,
                "message": self.message}


@dataclass
class Comparison:
    baseline: Snapshot
    current: Snapshot
    thresholds: Dict[str, float]
    checks: List[Check]
    notes: List[str]

    @property
    def regressions(self) -> List[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def improvements(self) -> List[Check]:
        return [c for c in self.checks if c.status == IMPROVED]

    @property
    def ok(self) -> bool:
        return not self.regressions

    def to_dict(self) -> Dict[str, Any]:
        return {"baseline": self.baseline.source, "current": self.current.source, "ok": self.ok,
                "regressions": len(self.regressions), "improvements": len(self.improvements),
                "thresholds": self.thresholds, "notes": self.notes, "checks": [c.to_dict() for c in self.checks]}


def resolve_thresholds(baseline: Snapshot, current: Snapshot,
                       options: Optional[Mapping[str, Optional[float]]] = None) -> Dict[str, float]:
    """Defaults < baseline file ``thresholds`` < CURRENT's recipe ``regressions`` < options."""
    out = dict(DEFAULT_THRESHOLDS)
    out.update(baseline.thresholds)
    out.update(current.thresholds)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    out.update(validate_thresholds(given, "options"))
    return out


def _allowed(metric: Metric, base: float, th: Mapping[str, float]) -> float:
    rel = th[metric.rel] * abs(base) if metric.rel else 0.0
    ab = th[metric.abs_] if metric.abs_ else 0.0
    return max(rel, ab)


def _judge(metric: Metric, where: str, variant: str, base: Optional[float], cur: Optional[float],
           th: Mapping[str, float]) -> Check:
    def make(status, allowed, msg):
        return Check(where, variant, metric.key, metric.label, base, cur, allowed, status, msg, metric)

    if base is None and cur is None:
        return make(SKIPPED, None, "not measured on either side")
    if base is None:
        return make(SKIPPED, None, "not measured in the baseline")
    if cur is None:
        return make(SKIPPED, None, "not measured in the current build")
    allowed = _allowed(metric, base, th)
    worse = (cur - base) if metric.lower_is_better else (base - cur)
    text = f"{_fmt(metric, base)} -> {_fmt(metric, cur)} {metric.unit} ({_delta_text(metric, base, cur)}; " \
           f"allowed {_allowed_text(metric, allowed, th)})"
    if worse > allowed:
        return make(REGRESSION, allowed, text)
    if -worse > allowed:
        return make(IMPROVED, allowed, text)
    return make(OK, allowed, text)


def compare_snapshots(baseline: Snapshot, current: Snapshot,
                      thresholds: Optional[Mapping[str, float]] = None) -> Comparison:
    """Checks every figure of ``baseline`` against ``current``.

    A variant or device the baseline has and the current build lacks is a failed
    check (``missing``); one only the current build has is ``new`` (not a failure).
    A device result that loaded in the baseline and fails to load now is a regression.

    Args:
        thresholds: complete thresholds (see :func:`resolve_thresholds`); defaults if None.
    """
    th = dict(DEFAULT_THRESHOLDS)
    th.update(thresholds or {})
    checks: List[Check] = []
    host_metrics = [m for m in METRICS if m.scope == "host"]
    dev_metrics = [m for m in METRICS if m.scope == "device"]

    for v in _union(baseline.variants, current.variants):
        b, c = baseline.variants.get(v), current.variants.get(v)
        if b is None:
            checks.append(Check("host", v, "present", "present", None, None, None, NEW,
                                "variant only in the current build"))
            continue
        if c is None:
            checks.append(Check("host", v, "present", "present", None, None, None, MISSING,
                                "variant missing from the current build"))
            continue
        checks.extend(_judge(m, "host", v, b.get(m.key), c.get(m.key), th) for m in host_metrics)

    for dev in _union(baseline.devices, current.devices):
        bd, cd = baseline.devices.get(dev), current.devices.get(dev)
        if bd is None:
            checks.append(Check(dev, "*", "present", "present", None, None, None, NEW,
                                "device only in the current build"))
            continue
        if cd is None:
            checks.append(Check(dev, "*", "present", "present", None, None, None, MISSING,
                                "no results for this device in the current build (built with --no-devices?)"))
            continue
        for v in _union(bd, cd):
            b, c = bd.get(v), cd.get(v)
            if b is None:
                checks.append(Check(dev, v, "loads", "loads", None, None, None, NEW, "only in the current build"))
                continue
            if c is None:
                checks.append(Check(dev, v, "loads", "loads", None, None, None, MISSING,
                                    "missing from the current build"))
                continue
            checks.append(_load_check(dev, v, b, c))
            if b["loaded"] and c["loaded"]:
                checks.extend(_judge(m, dev, v, b.get(m.key), c.get(m.key), th) for m in dev_metrics)
    return Comparison(baseline, current, th, checks, _notes(baseline, current))


def _load_check(dev: str, v: str, b: Dict[str, Any], c: Dict[str, Any]) -> Check:
    def why(rec):
        op = rec.get("load_error_op")
        return f"{op} v{rec.get('load_error_op_version')}" if op else "load error"

    bl, cl = float(b["loaded"]), float(c["loaded"])
    if b["loaded"] and not c["loaded"]:
        status, msg = REGRESSION, f"no longer loads on {c.get('runtime') or 'the device runtime'}: {why(c)}"
    elif not b["loaded"] and c["loaded"]:
        status, msg = IMPROVED, f"now loads on {c.get('runtime') or 'the device runtime'} (was: {why(b)})"
    elif not c["loaded"]:
        status, msg = OK, f"does not load, as in the baseline ({why(c)})"
    else:
        status, msg = OK, "loads"
    return Check(dev, v, "loads", "loads", bl, cl, None, status, msg, why="" if c["loaded"] else why(c))


def _union(a: Iterable[str], b: Iterable[str]) -> List[str]:
    out = list(a)
    out += [k for k in b if k not in out]
    return out


def _notes(baseline: Snapshot, current: Snapshot) -> List[str]:
    notes = []
    if baseline.name != current.name:
        notes.append(f"recipe names differ: baseline `{baseline.name}`, current `{current.name}`")
    if baseline.recipe and current.recipe:
        diffs = _dict_diff(baseline.recipe, current.recipe)
        if diffs:
            shown = ", ".join(diffs[:8]) + (f", ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
            notes.append(f"recipe differs: {shown}")
    same = [v for v, b in baseline.variants.items()
            if b.get("sha256") and b.get("sha256") == (current.variants.get(v) or {}).get("sha256")]
    if same:
        notes.append(f"identical .tflite files (sha256): {', '.join(same)}")
    for dev in baseline.devices:
        b_rt = {r.get("runtime") for r in baseline.devices[dev].values()} - {None}
        c_rt = {r.get("runtime") for r in current.devices.get(dev, {}).values()} - {None}
        if b_rt and c_rt and b_rt != c_rt:
            notes.append(f"{dev}: runtime {', '.join(sorted(b_rt))} -> {', '.join(sorted(c_rt))}")
    for lib in sorted(set(baseline.versions) & set(current.versions)):
        if baseline.versions[lib] != current.versions[lib]:
            notes.append(f"{lib} {baseline.versions[lib]} -> {current.versions[lib]}")
    return notes


def _dict_diff(a: Any, b: Any, prefix: str = "") -> List[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in _union(a, b):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a:
                out.append(f"{key} added")
            elif k not in b:
                out.append(f"{key} removed")
            else:
                out.extend(_dict_diff(a[k], b[k], key))
        return out
    return [] if a == b else [f"{prefix} {_short(a)} -> {_short(b)}"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- formatting -----------------------------------------------------------------


def _fmt(metric: Optional[Metric], value: Optional[float]) -> str:
    if value is None:
        return "-"
    if metric is None:
        return f"{value:g}"
    return format(value * metric.scale, metric.fmt)


def _delta_text(metric: Metric, base: float, cur: float) -> str:
    d = cur - base
    if d == 0:
        return "="
    if metric.rel is None:  # accuracy: points
        return f"{d:+.2f} points"
    rel = f", {d / abs(base):+.2%}" if base else ""
    return f"{d * metric.scale:+{metric.fmt}} {metric.unit}{rel}"


def _allowed_text(metric: Metric, allowed: float, th: Mapping[str, float]) -> str:
    word = "drop" if not metric.lower_is_better else "increase"
    if metric.rel is None:
        return f"{word} <= {allowed:g} points"
    return f"{word} <= {allowed * metric.scale:{metric.fmt}} {metric.unit} = max({th[metric.rel]:.2%}, " \
           f"{th[metric.abs_]:g} {THRESHOLDS[metric.abs_].unit})"


MARK = {REGRESSION: " **REGRESSED**", MISSING: " **MISSING**", IMPROVED: " _improved_", OK: "", SKIPPED: "",
        NEW: " _new_"}


def _cell(check: Optional[Check]) -> str:
    if check is None:
        return ""
    if check.metric == "loads":
        if check.status in (NEW, MISSING):
            return check.status.upper() if check.status == MISSING else "new"
        yes = {1.0: "yes", 0.0: "no"}
        now = yes[check.current] + (f" ({check.why})" if check.why else "")
        if check.baseline == check.current:
            return now + MARK[check.status]
        return f"{yes[check.baseline]} -> {now}{MARK[check.status]}"
    m = check.metric_def
    if check.status == SKIPPED:
        return f"{_fmt(m, check.baseline)} -> {_fmt(m, check.current)}" if check.baseline != check.current \
            else "-"
    if check.delta == 0:
        return f"{_fmt(m, check.current)} (=)"
    rel = f"{check.delta / abs(check.baseline):+.2%}" if check.baseline and m.rel is not None \
        else f"{check.delta:+.2f}"
    return f"{_fmt(m, check.baseline)} -> {_fmt(m, check.current)} ({rel}){MARK[check.status]}"


def format_markdown(comp: Comparison) -> str:
    """The comparison as Markdown: verdict, host table, device table, regressions, notes."""
    regs, imps = comp.regressions, comp.improvements
    counted = [c for c in comp.checks if c.status != SKIPPED]
    lines = [f"### mobile-model compare: `{comp.baseline.source}` (baseline) vs `{comp.current.source}`", ""]
    if regs:
        lines.append(f"**FAIL: {len(regs)} regression(s)**, {len(imps)} improvement(s) in {len(counted)} checks.")
    else:
        lines.append(f"**PASS: no regression** in {len(counted)} checks ({len(imps)} improvement(s)).")
    lines.append("")
    index = {(c.where, c.variant, c.metric): c for c in comp.checks}
    host = [m for m in METRICS if m.scope == "host"]
    variants = _union(comp.baseline.variants, comp.current.variants)
    lines += ["| host | " + " | ".join(m.label for m in host) + " |",
              "|---|" + "---:|" * len(host)]
    for v in variants:
        pres = index.get(("host", v, "present"))
        if pres is not None:
            lines.append(f"| {v} | {pres.status.upper()}: {pres.message} |" + " |" * (len(host) - 1))
            continue
        lines.append(f"| {v} | " + " | ".join(_cell(index.get(("host", v, m.key))) for m in host) + " |")
    devs = _union(comp.baseline.devices, comp.current.devices)
    if devs:
        dev_m = [m for m in METRICS if m.scope == "device"]
        lines += ["", "| device | variant | loads | " + " | ".join(m.label for m in dev_m) + " |",
                  "|---|---|---|" + "---:|" * len(dev_m)]
        for dev in devs:
            pres = index.get((dev, "*", "present"))
            if pres is not None:
                lines.append(f"| {dev} | * | {pres.status.upper()}: {pres.message} |" + " |" * len(dev_m))
                continue
            for v in _union(comp.baseline.devices.get(dev, {}), comp.current.devices.get(dev, {})):
                cells = [_cell(index.get((dev, v, "loads")))]
                cells += [_cell(index.get((dev, v, m.key))) for m in dev_m]
                lines.append(f"| {dev} | {v} | " + " | ".join(cells) + " |")
    if regs:
        lines += ["", "**Regressions**", ""]
        lines += [f"- {c.where} / {c.variant}: {c.label}: {c.message}" for c in regs]
    if imps:
        lines += ["", "**Improvements**", ""]
        lines += [f"- {c.where} / {c.variant}: {c.label}: {c.message}" for c in imps]
    if comp.notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in comp.notes]
    th = comp.thresholds
    lines += ["", "Thresholds: " + ", ".join(f"{k}={th[k]:g}" for k in THRESHOLDS) + "."]
    return "\n".join(lines) + "\n"


def format_junit(comp: Comparison, suite: str = "mobile-model.compare") -> str:
    """JUnit XML: one testcase per check (``skipped`` for figures one side lacks)."""
    failures = len(comp.regressions)
    skipped = sum(c.status == SKIPPED for c in comp.checks)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f"<testsuites name={quoteattr(suite)} tests=\"{len(comp.checks)}\" failures=\"{failures}\">",
           f"  <testsuite name={quoteattr(suite)} tests=\"{len(comp.checks)}\" failures=\"{failures}\" "
           f"errors=\"0\" skipped=\"{skipped}\">"]
    for c in comp.checks:
        cls = f"{suite}.{c.where}.{c.variant}"
        name = c.metric
        head = f"    <testcase classname={quoteattr(cls)} name={quoteattr(name)}"
        if c.failed:
            out += [head + ">",
                    f"      <failure message={quoteattr(c.status + ': ' + c.message)} type={quoteattr(c.status)}>"
                    f"{_xml_text(c.message)}</failure>",
                    "    </testcase>"]
        elif c.status == SKIPPED:
            out += [head + ">", f"      <skipped message={quoteattr(c.message)}/>", "    </testcase>"]
        else:
            out += [head + ">", f"      <system-out>{_xml_text(c.status + ': ' + c.message)}</system-out>",
                    "    </testcase>"]
    out += ["  </testsuite>", "</testsuites>"]
    return "\n".join(out) + "\n"


def _xml_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_junit(comp: Comparison, path: "str | Path") -> None:
    atomic_write_text(Path(path), format_junit(comp))


def compare_paths(baseline: "str | Path", current: "str | Path",
                  options: Optional[Mapping[str, Optional[float]]] = None) -> Comparison:
    """Loads both inputs, resolves the thresholds and compares (what the CLI calls).

    Raises:
        UnusableInputError: either input is unusable, or a threshold is invalid.
    """
    b = load_snapshot(baseline, "BASELINE")
    c = load_snapshot(current, "CURRENT")
    return compare_snapshots(b, c, resolve_thresholds(b, c, options))

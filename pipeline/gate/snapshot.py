"""What the regression gate reads from one side of a comparison: a :class:`Snapshot`.

A snapshot comes from one of three inputs, each read by its own function:

* a build directory or its ``summary.json``: the :class:`pipeline.summary.BuildSummary`
  the build wrote, read through :func:`pipeline.summary.load_summary` (typed; the
  ``.tflite`` hashes and library versions come from the manifest beside it);
* a build's ``manifest.json`` (or a build directory holding only a manifest): the
  figures recorded by its ``evaluate/*`` and ``device/*/*`` stages. Kept because an
  interrupted build has no summary yet and still deserves a comparison, and because
  comparing a build's summary with its own manifest checks that the two agree;
* a committed baseline file (``format: mobile-model-baseline``, ``version: 1``),
  written by :func:`pipeline.gate.baseline.write_baseline`: the trimmed figures of
  an accepted build, with no time stamp.

Every malformed input is an :class:`~pipeline.errors.UnusableInputError` naming the
input's role (``BASELINE``, ``CURRENT``), its path and the offending field.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import yaml

from pipeline.errors import ConfigError, DataError, UnusableInputError
from pipeline.gate.thresholds import validate_thresholds
from pipeline.store.atomic import sha256_file
from pipeline.recipe.targets import parse_entry
from pipeline.summary import (SUMMARY_FILE, BuildSummary, DeviceSummary, MeasuredLatency, Record, float_stage_name,
                              load_summary)

BASELINE_FORMAT = "mobile-model-baseline"
BASELINE_VERSION = 1
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class HostFigures(Record):
    """The compared host figures of one variant, and its ``.tflite`` sha256 when known."""

    top1: Optional[float] = None
    size_bytes: Optional[int] = None
    gzip_bytes: Optional[int] = None
    sha256: Optional[str] = None


@dataclass(frozen=True)
class DeviceFigures(Record):
    """The compared figures of one variant on one device (a trimmed :class:`DeviceSummary`)."""

    loaded: bool
    load_error_op: Optional[str] = None
    load_error_op_version: Optional[int] = None
    top1: Optional[float] = None
    instructions_per_inference: Optional[int] = None
    latency_ms: Optional[float] = None
    peak_memory_bytes: Optional[int] = None
    runtime: Optional[str] = None
    # The latency's provenance (None in baselines written before it was recorded).
    latency_validated: Optional[bool] = None
    latency_model: Optional[str] = None
    latency_cycles: Optional[float] = None
    latency_ipc: Optional[float] = None
    # The mean latency measured on the entry's real device, its spread and where (None:
    # an emulated-only entry, or a baseline written before real devices were measured).
    measured_ms: Optional[float] = None
    measured_std_ms: Optional[float] = None
    measured_runs: Optional[int] = None
    measured_target: Optional[str] = None

    @classmethod
    def of(cls, result: DeviceSummary, measured: Optional[MeasuredLatency] = None) -> "DeviceFigures":
        """The compared subset of a device result (with ``measured``: those figures instead of its own)."""
        m = measured or result.measured
        own = {f.name: getattr(result, f.name) for f in dataclasses.fields(cls) if not f.name.startswith("measured")}
        if m is None:
            return cls(**own)
        return cls(**own, measured_ms=m.mean_ms, measured_std_ms=m.std_ms, measured_runs=m.runs,
                   measured_target=m.target)


HOST_FIELDS = tuple(f.name for f in dataclasses.fields(HostFigures) if f.name != "sha256")


@dataclass(frozen=True)
class Snapshot:
    """What a comparison reads from one side, whatever the input format was.

    ``variants`` maps variant -> host figures; ``devices`` maps device -> variant ->
    device figures, both in the recipe's order when the recipe is known.
    """

    source: str
    kind: str
    name: str
    variants: Dict[str, HostFigures]
    devices: Dict[str, Dict[str, DeviceFigures]]
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
    p = Path(path)
    try:
        return _in_recipe_order(_load(p, role))
    except DataError as exc:  # a typed reader's message: "<path>: <field>: what was wrong"
        raise UnusableInputError(f"{role} {exc}") from None


def _load(p: Path, role: str) -> Snapshot:
    if not p.exists():
        raise UnusableInputError(f"{role} {p}: no such file or directory")
    if p.is_dir():
        if (p / SUMMARY_FILE).is_file():
            return _from_summary(load_summary(p), str(p), p, role)
        if (p / MANIFEST_FILE).is_file():
            return _from_manifest(_read_json(p / MANIFEST_FILE, role), str(p), p, role)
        raise UnusableInputError(f"{role} {p}: not a build directory (no {SUMMARY_FILE} or {MANIFEST_FILE} in it)")
    data = _read_json(p, role)
    if not isinstance(data, dict):
        raise UnusableInputError(f"{role} {p}: expected a JSON object, got {type(data).__name__}")
    if "format" in data:
        return _from_baseline(data, str(p), role)
    if "stages" in data:
        return _from_manifest(data, str(p), p.parent, role)
    if "variants" in data:
        return _from_summary(BuildSummary.from_dict(data, f"{p}: summary"), str(p), p.parent, role)
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
    return float(value)


def _mapping(value: Any, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UnusableInputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _recipe_from(root: Path) -> Optional[Dict[str, Any]]:
    p = root / "recipe.yaml"
    if not p.is_file():
        return None
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        return None  # the recipe only adds notes and thresholds; the figures stand without it
    return data if isinstance(data, dict) else None


# -- a build's summary ------------------------------------------------------------


def _from_summary(summary: BuildSummary, source: str, root: Path, role: str) -> Snapshot:
    hashes, versions = _manifest_hashes(root)
    variants = {}
    for v, rec in summary.variants.items():
        sha = hashes.get(v)
        if sha is None and Path(rec.path).is_file():
            sha = sha256_file(Path(rec.path))
        variants[v] = HostFigures(rec.top1, rec.size_bytes, rec.gzip_bytes, sha)
    devices = {dev: {v: DeviceFigures.of(r) for v, r in per.items()} for dev, per in summary.devices.items()}
    recipe = _recipe_from(root)
    return Snapshot(source, "build", summary.recipe, variants, devices, recipe, summary.deploy_variant,
                    summary.float_top1, {}, versions)


def _manifest_hashes(root: Path) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(variant -> .tflite sha256, library versions) from a build's manifest, if readable."""
    p = root / MANIFEST_FILE
    if not p.is_file():
        return {}, {}
    try:
        stages = json.loads(p.read_text()).get("stages", {})
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return {}, {}
    return _stage_hashes(stages), _stage_versions(stages)


# -- a build's manifest -------------------------------------------------------------


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


def _from_manifest(data: Dict[str, Any], source: str, root: Path, role: str) -> Snapshot:
    """The figures of the ``evaluate/<variant>``, ``device/<device>/<variant>`` and
    ``measure/<entry>/<variant>`` stage records."""
    where = f"{role} {source}"
    stages = _mapping(data.get("stages"), f"{where}: stages")
    variants: Dict[str, HostFigures] = {}
    devices: Dict[str, Dict[str, DeviceSummary]] = {}
    measured: Dict[str, Dict[str, MeasuredLatency]] = {}
    hashes = _stage_hashes(stages)
    for name, rec in stages.items():
        metrics = _mapping(_mapping(rec, f"{where}: stages.{name}").get("metrics"), f"{where}: stages.{name}.metrics")
        if name.startswith("evaluate/"):
            v = name.split("/", 1)[1]
            host = {k: metrics.get(k) for k in HOST_FIELDS}
            variants[v] = HostFigures.from_dict({**host, "sha256": hashes.get(v)}, f"{source}: stages.{name}.metrics")
        elif name.startswith("device/") and name.count("/") == 2:
            _, dev, v = name.split("/")
            devices.setdefault(dev, {})[v] = DeviceSummary.from_dict(metrics, f"{source}: stages.{name}.metrics")
        elif name.startswith("measure/"):
            entry, _, v = name[len("measure/"):].rpartition("/")
            measured.setdefault(entry, {})[v] = MeasuredLatency.from_dict(metrics, f"{source}: stages.{name}.metrics")
    if not variants:
        raise UnusableInputError(f"{where}: the manifest records no evaluated variant "
                                 "(an unfinished build, or not a mobile-model manifest)")
    recipe = data.get("recipe") if isinstance(data.get("recipe"), dict) else _recipe_from(root)
    figures = _entries(devices, measured, recipe, where)
    # Keep only what the recipe builds: a manifest also holds records of variants or
    # devices an earlier recipe of the same directory had.
    if recipe:
        keep_v = set(_mapping(recipe.get("convert"), "recipe.convert").get("variants") or variants)
        variants = {v: r for v, r in variants.items() if v in keep_v}
        figures = {d: {v: r for v, r in per.items() if v in keep_v} for d, per in figures.items()}
    float_stage = float_stage_name(stages)
    train = _mapping(stages.get(float_stage), f"{where}: stages.{float_stage}").get("metrics") or {}
    float_top1 = _number(train.get("test_top1"), f"{where}: stages.{float_stage}.metrics.test_top1")
    name = (recipe or {}).get("name") or "?"
    if (recipe or {}).get("smoke_form"):
        name += "-smoke"
    return Snapshot(source, "manifest", name, variants, figures, recipe, (recipe or {}).get("deploy_variant"),
                    float_top1, {}, _stage_versions(stages))


def _entries(devices: Dict[str, Dict[str, DeviceSummary]], measured: Dict[str, Dict[str, MeasuredLatency]],
             recipe: Optional[Dict[str, Any]], where: str) -> Dict[str, Dict[str, DeviceFigures]]:
    """The figures of each ``devices.targets`` entry (every recorded profile when the recipe
    is not known): its profile's emulated results, with what its real device measured."""
    targets = _mapping((recipe or {}).get("devices"), "recipe.devices").get("targets") if recipe else None
    if not targets:
        return {d: {v: DeviceFigures.of(r) for v, r in per.items()} for d, per in devices.items()}
    out = {}
    for text in targets:
        try:
            entry = parse_entry(text, f"{where}: recipe.devices.targets")
        except ConfigError as e:
            raise UnusableInputError(str(e)) from None
        per = devices.get(entry.profile, {})
        if per:
            out[text] = {v: DeviceFigures.of(r, measured.get(text, {}).get(v)) for v, r in per.items()}
    return out


# -- a committed baseline -----------------------------------------------------------


def _from_baseline(data: Dict[str, Any], source: str, role: str) -> Snapshot:
    where = f"{role} {source}"
    if data.get("format") != BASELINE_FORMAT:
        raise UnusableInputError(f"{where}: unknown format {data.get('format')!r} (expected {BASELINE_FORMAT!r})")
    if data.get("version") != BASELINE_VERSION:
        raise UnusableInputError(f"{where}: baseline version {data.get('version')!r} is not supported "
                                 f"(this mobile-model reads version {BASELINE_VERSION}); write it again with "
                                 "`mobile-model baseline`")
    variants = {v: HostFigures.from_dict(rec, f"{source}: variants.{v}")
                for v, rec in _mapping(data.get("variants"), f"{where}: variants").items()}
    if not variants:
        raise UnusableInputError(f"{where}: the baseline holds no variant")
    devices = {dev: {v: DeviceFigures.from_dict(rec, f"{source}: devices.{dev}.{v}")
                     for v, rec in _mapping(per, f"{where}: devices.{dev}").items()}
               for dev, per in _mapping(data.get("devices"), f"{where}: devices").items()}
    recipe = data.get("recipe") if isinstance(data.get("recipe"), dict) else None
    float_top1 = _number(data.get("float_top1"), f"{where}: float_top1")
    return Snapshot(source, "baseline", str(data.get("name") or "?"), variants, devices, recipe,
                    data.get("deploy_variant"), float_top1,
                    validate_thresholds(data.get("thresholds") or {}, f"{where}: thresholds"),
                    dict(_mapping(data.get("versions"), f"{where}: versions")))


# -- order ----------------------------------------------------------------------------


def _in_recipe_order(snap: Snapshot) -> Snapshot:
    """Variants and devices in the recipe's order when it is known (summary.json sorts keys)."""
    recipe = snap.recipe or {}
    convert, devices = recipe.get("convert"), recipe.get("devices")
    variants = (convert.get("variants") if isinstance(convert, dict) else None) or []
    targets = (devices.get("targets") if isinstance(devices, dict) else None) or []
    return dataclasses.replace(
        snap, variants=_ordered(snap.variants, variants),
        devices={d: _ordered(per, variants) for d, per in _ordered(snap.devices, targets).items()})


def _ordered(mapping: Mapping[str, Any], order: Iterable[str]) -> Dict[str, Any]:
    order = [k for k in order if isinstance(k, str)]
    keys = [k for k in order if k in mapping] + [k for k in mapping if k not in order]
    return {k: mapping[k] for k in keys}

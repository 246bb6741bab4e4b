"""Committed baselines: the figures of an accepted build, as a reviewable JSON file.

The file format (``format: mobile-model-baseline``, ``version: 1``) is a trimmed
summary: the recipe, per-variant host figures with the ``.tflite`` sha256,
per-device figures with the runtime and the latency's provenance (model, validated,
cycles, IPC), and library versions. It carries no time
stamp, so re-writing it from an identical build gives an identical file.
:func:`pipeline.gate.snapshot.load_snapshot` reads it back.
"""

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from pipeline.errors import UnusableInputError
from pipeline.gate.snapshot import BASELINE_FORMAT, BASELINE_VERSION, Snapshot, load_snapshot
from pipeline.gate.thresholds import validate_thresholds
from pipeline.store.atomic import atomic_write_json
from pipeline.plain import to_plain


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
        "variants": to_plain(snap.variants),
        "devices": to_plain(snap.devices),
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
        thresholds = _kept_thresholds(out)
    atomic_write_json(out, baseline_dict(snap, thresholds))
    return snap


def _kept_thresholds(path: Path) -> Optional[Dict[str, float]]:
    """The reviewed ``thresholds`` of the baseline being replaced (None when it is not JSON)."""
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(old, dict):
        return None
    return validate_thresholds(old.get("thresholds") or {}, f"{path}: thresholds")

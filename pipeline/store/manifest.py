"""The build manifest and stage caching.

The manifest (``manifest.json``) holds one record per stage: its config, input and
output sha256, library versions, wall time, peak resident memory
(:mod:`pipeline.store.memory`) and metrics. A stage whose cache key
(config + input hashes + code version) matches its record, and whose outputs still
hash as recorded, is not run again.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from pipeline.errors import Log, ModelFileError
from pipeline.store.atomic import atomic_write_json, config_hash, sha256_file
from pipeline.store.memory import measure_stage
from pipeline.store.reproduce import library_versions

# Bumped when a stage's code changes what it produces, so old caches are not reused.
STAGE_CODE_VERSION = "1"


def verify_recorded_models(root: Path) -> int:
    """Checks that every ``tflite/*.tflite`` of a build is the file its manifest recorded.

    Such files were produced by the pipeline and may be loaded in process; a file
    changed or added after the build is not, and is refused.

    Returns:
        How many files were checked.

    Raises:
        ModelFileError: a .tflite with no record in ``manifest.json`` or whose
            sha256 differs from the record.
    """
    root = Path(root)
    recorded = {}
    for rec in Manifest(root).stages.values():
        for out in (rec.get("outputs") or {}).values() if isinstance(rec, dict) else ():
            if isinstance(out, dict) and "path" in out:
                recorded[out["path"]] = out.get("sha256")
    files = sorted((root / "tflite").glob("*.tflite"))
    for p in files:
        rel = p.relative_to(root).as_posix()
        if rel not in recorded:
            raise ModelFileError(f"{p}: not recorded in {root / 'manifest.json'} (not produced by this build); "
                                 "rebuild, or check it with `mobile-model inspect`")
        if sha256_file(p) != recorded[rel]:
            raise ModelFileError(f"{p}: sha256 differs from the one recorded in {root / 'manifest.json'} "
                                 "(changed after the build); rebuild, or check it with `mobile-model inspect`")
    return len(files)


@dataclass
class StageResult:
    """What :meth:`Manifest.run_stage` returns; a cached stage has the figures of the run that made it.

    ``peak_rss_mb`` is None for a cached stage recorded before peaks were kept.
    """

    metrics: Dict[str, Any]
    cached: bool
    wall_s: float
    peak_rss_mb: Optional[float] = None


class Manifest:
    """The record of a build directory: one entry per stage, saved atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / "manifest.json"
        self.data: Dict[str, Any] = {"stages": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                # A manifest is only ever replaced atomically, so this is outside damage:
                # start over rather than trust any cached stage.
                self.data = {"stages": {}}
            self.data.setdefault("stages", {})

    @property
    def stages(self) -> Dict[str, Any]:
        return self.data["stages"]

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data)

    def rel(self, p: Path) -> str:
        p = Path(p)
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    @staticmethod
    def stage_key(config: Any, input_hashes: Mapping[str, str], extra_key: Any = None) -> str:
        """The cache key of a stage: its config, its inputs' sha256 and the code version."""
        return config_hash({"config": config, "inputs": dict(input_hashes), "extra": extra_key,
                            "code": STAGE_CODE_VERSION})

    def is_cached(self, stage: str, config: Any, inputs: Mapping[str, Path], outputs: Mapping[str, Path],
                  extra_key: Any = None) -> bool:
        """Whether :meth:`run_stage` with these arguments would skip the work."""
        key = self.stage_key(config, {n: sha256_file(Path(p)) for n, p in inputs.items()}, extra_key)
        return self.cached(stage, key, outputs) is not None

    def cached(self, stage: str, key: str, outputs: Mapping[str, Path]) -> Optional[Dict[str, Any]]:
        """The stage's record if its key matches and every output hashes as recorded."""
        rec = self.stages.get(stage)
        if not rec or rec.get("key") != key:
            return None
        recorded = rec.get("outputs", {})
        for name, p in outputs.items():
            entry = recorded.get(name)
            if entry is None or not Path(p).exists() or sha256_file(Path(p)) != entry["sha256"]:
                return None
        return rec

    def run_stage(
        self,
        stage: str,
        config: Any,
        inputs: Mapping[str, Path],
        outputs: Mapping[str, Path],
        fn: Callable[[], Dict[str, Any]],
        extra_key: Any = None,
        log: Log = print,
    ) -> StageResult:
        """Runs ``fn`` unless the stage is cached; records it in the manifest.

        Args:
            stage: unique stage name within the build (e.g. ``convert/int8-ptq``).
            config: plain data (dict) that determines the stage's outputs.
            inputs: named input artifact paths; their sha256 enter the cache key.
            outputs: named output paths ``fn`` must write (atomically).
            fn: does the work; returns a metrics dict (JSON-serialisable).
            extra_key: other things that determine the outputs (e.g. a data fingerprint).

        Returns:
            StageResult with the metrics, whether it was cached, wall time and the
            peak resident memory of this process during ``fn`` (MiB; see
            :func:`pipeline.store.memory.measure_stage` for what it covers).
        """
        input_hashes = {n: sha256_file(Path(p)) for n, p in inputs.items()}
        key = self.stage_key(config, input_hashes, extra_key)
        rec = self.cached(stage, key, outputs)
        if rec is not None:
            log(f"[{stage}] up to date (cached)")
            return StageResult(rec.get("metrics", {}), True, rec.get("wall_s", 0.0), rec.get("peak_rss_mb"))
        with measure_stage() as measured:
            metrics = fn()
        missing = [n for n, p in outputs.items() if not Path(p).exists()]
        if missing:
            raise RuntimeError(f"stage {stage} did not write its outputs: {missing}")
        self.stages[stage] = {
            "key": key,
            "config": config,
            "inputs": {n: {"path": self.rel(p), "sha256": input_hashes[n]} for n, p in inputs.items()},
            "outputs": {n: {"path": self.rel(p), "sha256": sha256_file(Path(p))} for n, p in outputs.items()},
            "versions": library_versions(),
            **measured.record(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metrics": metrics,
        }
        self.save()
        return StageResult(metrics, False, measured.wall_s, measured.record()["peak_rss_mb"])

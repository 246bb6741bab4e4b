"""One build: prepare the data, run the stages (:mod:`pipeline.build.stages`), check the budgets, publish.

``build(recipe)`` wires the stages together through the manifest, so every stage
is cached by its config and input hashes: a repeated build with nothing changed
runs no stage, and an interrupted build resumes at the first unfinished stage.
Its figures are one :class:`pipeline.summary.BuildSummary`, written once as
``summary.json`` when every stage has run, then rendered into the report and the
bundle. The artifact tree is in :mod:`pipeline.build`'s docstring.
"""

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import yaml

from pipeline.build.stages import StageRunner, compress_stages, float_stage, variant_stages
from pipeline.gate.budgets import check_budgets
from pipeline.recipe.schema import Recipe
from pipeline.native import import_tensorflow
from pipeline.store.manifest import Manifest
from pipeline.store.memory import measure_stage, process_peak_rss_mb
from pipeline.store.atomic import atomic_write_text
from pipeline.store.lock import build_lock
from pipeline.store.reproduce import reproducibility_record
from pipeline.summary import (SUMMARY_FILE, BudgetResult, BuildSummary, DeviceSummary, FloatChoice, InitWeights,
                              write_summary)
from pipeline.errors import Log


@dataclass
class BuildResult:
    """What a build produced: where, its figures, and how long it took."""

    root: Path
    summary: BuildSummary
    wall_s: float = 0.0

    @property
    def budgets(self) -> Tuple[BudgetResult, ...]:
        return self.summary.budgets

    @property
    def budgets_ok(self) -> bool:
        return self.summary.budgets_ok

    @property
    def stages_run(self) -> List[str]:
        return list(self.summary.stages_run)


def data_fingerprint(splits) -> str:
    """sha256 over every split and the labels: the data's identity for caching.

    Images held in memory enter by their bytes; images in the decoded-image cache by
    their files' content hashes (the cache key holds the decoding settings), so a
    rerun over 40,000 photos reads no pixel to know that nothing changed."""
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        value = getattr(splits, name)
        if name.startswith("x_"):
            value.update_hash(h, name)
            continue
        arr = np.ascontiguousarray(value)
        h.update(f"{name}{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    h.update("\n".join(splits.labels).encode())
    return h.hexdigest()


def default_build_dir(recipe: Recipe) -> Path:
    return Path("build") / recipe.build_name


def build(recipe: Recipe, out: Optional[Path] = None, log: Log = print,
          run_devices: bool = True) -> BuildResult:
    """Runs every stage of ``recipe`` that is not already up to date.

    Args:
        recipe: a validated recipe (``Recipe.smoke()`` for the tiny form).
        out: the build directory (default ``build/<recipe name>``).
        run_devices: run the emulated-device checks of the recipe's targets.

    Returns:
        BuildResult; budgets are checked but not raised on (the CLI decides the exit code).

    Raises:
        MobileModelError subclasses for bad data, failed conversion validation, etc.
    """
    root = Path(out) if out else default_build_dir(recipe)
    t0 = time.perf_counter()
    with build_lock(root):
        manifest, splits, fingerprint = _prepare(recipe, root, log)
        stage = StageRunner(manifest, fingerprint, log)
        figures = float_stage(recipe, splits, stage, root / "keras", log)
        sources = compress_stages(recipe, splits, stage, root / "keras" / "float.h5", root / "keras", log,
                                  float_epochs=figures.epochs)
        variants = variant_stages(recipe, splits, stage, sources, figures, root, log)
        devices: Dict[str, Dict[str, DeviceSummary]] = {}
        if run_devices and recipe.devices.targets:
            from pipeline.build.matrix import run_device_matrix

            devices = run_device_matrix(recipe, root, variants, splits, stage, log)
        summary = BuildSummary(
            recipe=recipe.build_name, float_top1=figures.test_top1, float_val_top1=figures.val_top1,
            params=figures.params, macs=figures.macs,
            deploy_variant=recipe.deploy_variant, labels=tuple(splits.labels), variants=variants,
            devices=devices, stages_run=tuple(stage.ran),
            init=InitWeights.from_dict(figures.init, "init") if figures.init is not None else None,
            float_choice=FloatChoice.from_dict(figures.choice, "float_choice") if figures.choice else None)
        summary = _check_budgets(recipe, summary, devices_run=bool(devices), log=log)
        wall = time.perf_counter() - t0
        write_summary(summary, root)
        manifest.set("summary", {"stages_run": list(summary.stages_run), "wall_s": round(wall, 2),
                                 "budgets_ok": summary.budgets_ok,
                                 "peak_rss_mb": round(process_peak_rss_mb(), 1)})
        _publish(recipe, root, summary, log)
        return BuildResult(root, summary, wall)


def _prepare(recipe: Recipe, root: Path, log: Log) -> Tuple[Manifest, Any, str]:
    """Sets the last summary aside, records the recipe, loads and records the data.

    Returns:
        (the build's manifest, the data splits, the data's fingerprint).
    """
    from pipeline.data import load_dataset

    # Until this build finishes, the last finished one's figures are kept aside
    # (summary.previous.json) so that nothing reads them as this build's.
    if (root / SUMMARY_FILE).exists():
        os.replace(root / SUMMARY_FILE, root / "summary.previous.json")
    manifest = Manifest(root)
    atomic_write_text(root / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    log(f"[data] loading {recipe.data.dataset} for input {recipe.model.input_shape}")
    with measure_stage() as measured:
        splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed, log)
        fp = data_fingerprint(splits)
    import_tensorflow()
    log(f"[data] train {len(splits.x_train)}, val {len(splits.x_val)}, test {len(splits.x_test)}, "
        f"{splits.num_classes} classes")
    manifest.set("recipe", recipe.to_dict())
    manifest.set("reproduce", reproducibility(recipe.seed))
    manifest.set("data", {"fingerprint": fp, "labels": list(splits.labels),
                          "counts": {"train": len(splits.x_train), "val": len(splits.x_val),
                                     "test": len(splits.x_test)},
                          "report": splits.report, "loading": splits.loading, **measured.record()})
    return manifest, splits, fp


def reproducibility(seed: int) -> Dict[str, Any]:
    """The manifest's ``reproduce`` record: seed, op determinism, libraries, ARM runtime,
    and the latency parameters file the device figures are estimated with."""
    from pipeline.devices.runtime import runtime_key
    from pipeline.latency.params import params_file
    from pipeline.store.atomic import sha256_file
    from pipeline.train.fit import OP_DETERMINISM

    params, source = params_file()
    record = reproducibility_record(seed, OP_DETERMINISM, runtime_key())
    record["latency_params"] = {"source": source, "path": str(params), "sha256": sha256_file(params)}
    return record


def _check_budgets(recipe: Recipe, summary: BuildSummary, devices_run: bool = True,
                   log: Log = print) -> BuildSummary:
    """``summary`` with the verdict of every budget of the recipe.

    A build without device runs (``--no-devices``) checks no device budget: there is
    nothing to measure them on, which is neither a pass nor a miss; the log says so.
    """
    from pipeline.recipe.budgets import BUDGETS

    budgets = recipe.budgets
    if not devices_run:
        skipped = [k for k in budgets if BUDGETS[k].scope == "device"]
        if skipped:
            log(f"[budgets] device budgets not checked (no device runs): {', '.join(skipped)}")
        budgets = {k: v for k, v in budgets.items() if k not in skipped}
    checks = check_budgets(budgets, summary, recipe.devices.targets)
    return dataclasses.replace(summary, budgets=tuple(c.to_result() for c in checks))


def _publish(recipe: Recipe, root: Path, summary: BuildSummary, log: Log) -> None:
    """The report (report.md, report.html, plots/), then the bundle rendered from ``summary``."""
    from pipeline.publish.bundle import write_bundle
    from pipeline.publish.report import write_report

    write_report(recipe, root, summary, log)
    write_bundle(recipe, root, summary, log)



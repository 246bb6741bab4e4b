"""The build: recipe -> trained, optimized, converted, evaluated (and device-checked) models.

``build(recipe)`` wires the stages together through the manifest, so every stage
is cached by its config and input hashes: a repeated build with nothing changed
runs no stage, and an interrupted build resumes at the first unfinished stage.

Artifact tree under ``build/<recipe>/``::

    manifest.json  recipe.yaml  summary.json
    keras/float.h5  keras/pruned.h5  keras/qat.h5  keras/float_test_pred.npy
    keras/cluster.h5  keras/cqat-weights.h5                  (int8-cqat)
    keras/cluster-pruned.h5  keras/pcqat-weights.h5          (int8-pcqat)
    tflite/<variant>.tflite
    devices/<device>/<variant>.json
"""

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import yaml

from pipeline.gate.budgets import BudgetCheck, check_budgets, format_budget_table
from pipeline.recipe.schema import Recipe
from pipeline.native import import_tensorflow
from pipeline.store.manifest import Manifest
from pipeline.store.atomic import atomic_write_json, atomic_write_text
from pipeline.store.lock import build_lock
from pipeline.store.reproduce import reproducibility_record
from pipeline.export.variants import VARIANTS, chain_of

Log = Callable[[str], None]


@dataclass
class BuildResult:
    """What a build produced: where, the metrics, and the budget verdicts."""

    root: Path
    metrics: Dict[str, Any]
    budgets: List[BudgetCheck] = field(default_factory=list)
    stages_run: List[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def budgets_ok(self) -> bool:
        return all(c.ok for c in self.budgets)


class StageRunner:
    """Runs named stages of one build through its manifest, keyed also by the data."""

    def __init__(self, manifest: Manifest, data_fp: str, log: Log):
        self.manifest, self.data_fp, self.log = manifest, data_fp, log
        self.ran: List[str] = []

    def __call__(self, name: str, config: Any, inputs: Dict[str, Path], outputs: Dict[str, Path],
                 fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        res = self.manifest.run_stage(name, config, inputs, outputs, fn, extra_key=self.data_fp, log=self.log)
        if not res.cached:
            self.ran.append(name)
        return res.metrics

    def is_cached(self, name: str, config: Any, inputs: Dict[str, Path], outputs: Dict[str, Path]) -> bool:
        return self.manifest.is_cached(name, config, inputs, outputs, extra_key=self.data_fp)


def data_fingerprint(splits) -> str:
    """sha256 over every split array and the labels: the data's identity for caching."""
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        arr = np.ascontiguousarray(getattr(splits, name))
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
    from pipeline.data import load_dataset

    root = Path(out) if out else default_build_dir(recipe)
    t0 = time.perf_counter()
    with build_lock(root):
        # Until this build finishes, the last finished one's figures are kept aside
        # (summary.previous.json) so that nothing reads them as this build's.
        if (root / "summary.json").exists():
            os.replace(root / "summary.json", root / "summary.previous.json")
        manifest = Manifest(root)
        atomic_write_text(root / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        log(f"[data] loading {recipe.data.dataset} for input {recipe.model.input_shape}")
        splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed)
        fp = data_fingerprint(splits)
        import_tensorflow()
        log(f"[data] train {len(splits.x_train)}, val {len(splits.x_val)}, test {len(splits.x_test)}, "
            f"{splits.num_classes} classes")
        manifest.set("recipe", recipe.to_dict())
        manifest.set("reproduce", reproducibility(recipe.seed))
        manifest.set("data", {"fingerprint": fp, "labels": list(splits.labels),
                              "counts": {"train": len(splits.x_train), "val": len(splits.x_val),
                                         "test": len(splits.x_test)},
                              "report": splits.report})
        stage = StageRunner(manifest, fp, log)
        ran = stage.ran

        keras_dir, tfl_dir = root / "keras", root / "tflite"
        float_h5, preds = keras_dir / "float.h5", keras_dir / "float_test_pred.npy"
        model_cfg = {"seed": recipe.seed, "model": recipe.to_dict()["model"], "train": recipe.to_dict()["train"]}
        train_m = stage("train", model_cfg, {}, {"model": float_h5, "test_pred": preds},
                        lambda: _train(recipe, splits, float_h5, preds, log))
        sources = _optimize(recipe, splits, stage, float_h5, keras_dir, log)

        float_classes = np.load(preds)
        variants: Dict[str, Dict[str, Any]] = {}
        for name in recipe.convert.variants:
            variant = VARIANTS.get(name)
            src = sources[variant.source]  # {"keras": model or weights[, "base": model]}
            tfl = tfl_dir / f"{name}.tflite"
            conv_cfg = {"variant": name, "convert": recipe.to_dict()["convert"], "seed": recipe.seed}
            conv_m = stage(f"convert/{name}", conv_cfg, src, {"tflite": tfl},
                           lambda: _convert(recipe, name, src, splits, tfl, log))
            # "kernels": the figures include the per-kernel table (older cached records lack it).
            eval_m = stage(f"evaluate/{name}", {"variant": name, "kernels": True},
                           {"tflite": tfl, "float_pred": preds}, {},
                           lambda: _evaluate(tfl, splits, float_classes))
            variants[name] = {**eval_m, "validation": conv_m, "macs": train_m["macs"], "path": str(tfl),
                              "chain": chain_of(variant.source, recipe.prune.enabled)}

        metrics: Dict[str, Any] = {
            "recipe": recipe.build_name,
            "float_top1": train_m["test_top1"],
            "params": train_m["params"],
            "macs": train_m["macs"],
            "deploy_variant": recipe.deploy_variant,
            "variants": variants,
            "devices": {},
            "labels": list(splits.labels),
        }
        if run_devices and recipe.devices.targets:
            from pipeline.devices.matrix import run_device_matrix

            metrics["devices"] = run_device_matrix(recipe, root, variants, splits, stage, log)

        checks = check_budgets(recipe.budgets, metrics, recipe.devices.targets)
        metrics["budgets"] = [c.to_dict() for c in checks]
        wall = time.perf_counter() - t0
        metrics["stages_run"] = ran
        atomic_write_json(root / "summary.json", metrics)
        manifest.set("summary", {"stages_run": ran, "wall_s": round(wall, 2),
                                 "budgets_ok": all(c.ok for c in checks)})
        _report(recipe, root, metrics, log)
        return BuildResult(root, metrics, checks, ran, wall)


def reproducibility(seed: int) -> Dict[str, Any]:
    from pipeline.devices.runtime import runtime_key
    from pipeline.train.fit import OP_DETERMINISM

    return reproducibility_record(seed, OP_DETERMINISM, runtime_key())


def _train(recipe, splits, float_h5, preds, log):
    from pipeline.train.stage import train_float

    return train_float(recipe, splits, float_h5, preds, log)


def _optimize(recipe: Recipe, splits, stage, float_h5: Path, keras_dir: Path,
              log: Log) -> Dict[str, Dict[str, Path]]:
    """Runs the optimization stages the requested variants need.

    Stages (each cached through the manifest, each run only when a variant's
    source needs it): ``prune`` (float -> pruned, whenever ``prune.enabled``),
    ``qat`` (PQAT of the pruned model, or plain QAT of the float one), ``cluster``
    and ``cqat`` (float -> clustered -> CQAT), ``cluster-pruned`` and ``pcqat``
    (pruned -> sparsity-preserving clustered -> PCQAT).

    Returns:
        For each source name (:data:`pipeline.export.variants.SOURCES`), the files the
        converter reads: ``{"keras": model.h5}``, or for CQAT/PCQAT, whose models
        only reload by rebuilding, ``{"keras": weights.h5, "base": clustered.h5}``.
    """
    needed = {VARIANTS.get(v).source for v in recipe.convert.variants}
    cfg = recipe.to_dict()
    batch = recipe.train.batch_size
    sources = {"float": {"keras": float_h5}}
    pruned = None
    if recipe.prune.enabled:
        from pipeline.compress.optimize import prune_model

        pruned = keras_dir / "pruned.h5"
        stage("prune", {"prune": cfg["prune"], "batch": batch}, {"keras": float_h5},
              {"model": pruned}, lambda: prune_model(recipe, splits, float_h5, pruned, log))
        sources["float"] = {"keras": pruned}
    if "qat" in needed:
        from pipeline.compress.optimize import qat_model

        qat = keras_dir / "qat.h5"
        src = sources["float"]["keras"]
        stage("qat", {"qat": cfg["qat"], "preserve_sparsity": recipe.prune.enabled,
                      "batch": batch}, {"keras": src},
              {"model": qat}, lambda: qat_model(recipe, splits, src, qat, log))
        sources["qat"] = {"keras": qat}
    # Clustering chains: (source, stage names, model clustered, sparsity-preserving).
    chains = (("cqat", "cluster", float_h5, False), ("pcqat", "cluster-pruned", pruned, True))
    for scheme, cluster_stage, src, preserve in chains:
        if scheme not in needed:
            continue
        from pipeline.compress.cluster import cluster_model, cluster_qat_model

        clustered = keras_dir / f"{cluster_stage}.h5"
        weights = keras_dir / f"{scheme}-weights.h5"
        stage(cluster_stage, {"cluster": cfg["cluster"], "preserve_sparsity": preserve, "batch": batch},
              {"keras": src}, {"model": clustered},
              lambda: cluster_model(recipe, splits, src, clustered, preserve, log))
        stage(scheme, {"qat": cfg["qat"], "scheme": scheme, "clusters": recipe.cluster.clusters,
                       "batch": batch}, {"keras": clustered}, {"weights": weights},
              lambda: cluster_qat_model(recipe, splits, clustered, weights, scheme, log))
        sources[scheme] = {"keras": weights, "base": clustered}
    return sources


def _convert(recipe, name, src, splits, tfl, log):
    from pipeline.export.convert import convert_variant

    return convert_variant(recipe, name, src["keras"], splits, tfl, log, base=src.get("base"))


def _evaluate(tfl, splits, float_classes):
    from pipeline.export.evaluate import evaluate_tflite

    return evaluate_tflite(tfl, splits.x_test, splits.y_test, float_classes)


def _report(recipe: Recipe, root: Path, metrics: Dict[str, Any], log: Log) -> None:
    try:
        from pipeline.publish.report import write_report
    except ImportError:
        return
    write_report(recipe, root, metrics, log)


def summary_table(metrics: Dict[str, Any]) -> str:
    """Markdown table of every variant: the chain it comes from, size, gzip size, top-1,
    agreement, zeros and distinct values per output channel; then, when a clustered
    variant was built, the per-kernel table of every full-integer variant."""
    lines = [f"float Keras top-1: {metrics['float_top1']:.2f}%   params {metrics['params']:,}   "
             f"MACs {metrics['macs']:,}",
             "",
             "| variant | from | size KiB | gzip KiB | top-1 % | agree w/ float % | zeros (prunable) | "
             "distinct/channel (max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, v in metrics["variants"].items():
        lines.append(f"| {name} | {v.get('chain', '')} | {v['size_bytes'] / 1024:.1f} | "
                     f"{v['gzip_bytes'] / 1024:.1f} | {v['top1']:.2f} | {v['agreement_with_float']:.2f} | "
                     f"{v['zeros_prunable']:.1%} | {v.get('max_unique_per_kernel', '')} |")
    table = kernel_summary(metrics)
    return "\n".join(lines) + (f"\n\n{table}" if table else "")


def kernel_summary(metrics: Dict[str, Any]) -> str:
    """Per-kernel zeros and distinct values per output channel of the full-integer
    variants, as Markdown; empty unless a clustered variant (CQAT, PCQAT) was built."""
    variants = {name: v for name, v in metrics["variants"].items()
                if name in VARIANTS and VARIANTS.get(name).full_integer and v.get("kernels")}
    if not any(VARIANTS.get(name).source in ("cqat", "pcqat") for name in variants):
        return ""
    by_layer = {name: {k["layer"]: k for k in v["kernels"]} for name, v in variants.items()}
    head = " | ".join(f"{name} zeros / distinct" for name in variants)
    lines = ["Per kernel (int8 files): zeros, and most distinct values in any output channel",
             "",
             f"| kernel | op | params | {head} |",
             "|---|---|---:|" + "---:|" * len(variants)]
    for row in next(iter(variants.values()))["kernels"]:
        cells = []
        for kernels in by_layer.values():
            k = kernels.get(row["layer"])
            cells.append(f"{k['zeros']:.0%} / {k['unique_per_channel']}" if k else "")
        lines.append(f"| {row['layer']} | {row['op']} | {row['params']:,} | {' | '.join(cells)} |")
    return "\n".join(lines)


def budget_summary(checks: List[BudgetCheck]) -> str:
    return format_budget_table(checks) if checks else "(no budgets in this recipe)"

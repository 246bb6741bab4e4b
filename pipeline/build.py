"""The build: recipe -> trained, optimized, converted, evaluated (and device-checked) models.

``build(recipe)`` wires the stages together through the manifest, so every stage
is cached by its config and input hashes: a repeated build with nothing changed
runs no stage, and an interrupted build resumes at the first unfinished stage.
Its figures are one :class:`pipeline.summary.BuildSummary`, written once as
``summary.json`` when every stage has run, then rendered into the report and the
bundle.

Artifact tree under ``build/<recipe>/``::

    manifest.json  recipe.yaml  summary.json
    keras/float.h5  keras/pruned.h5  keras/qat.h5  keras/float_test_pred.npy
    keras/head.h5                                            (model.init: the head phase)
    keras/cluster.h5  keras/cqat-weights.h5                  (int8-cqat)
    keras/cluster-pruned.h5  keras/pcqat-weights.h5          (int8-pcqat)
    tflite/<variant>.tflite  tflite/<variant>.pred.npy  tflite/test_labels.npy
    devices/<device>/<variant>.json
"""

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from pipeline.gate.budgets import check_budgets, format_budget_table
from pipeline.recipe.schema import Recipe
from pipeline.native import import_tensorflow
from pipeline.store.manifest import Manifest
from pipeline.store.memory import measure_stage, process_peak_rss_mb
from pipeline.store.atomic import atomic_write_text
from pipeline.store.lock import build_lock
from pipeline.store.reproduce import reproducibility_record
from pipeline.variants import VARIANTS, chain_of
from pipeline.summary import (SUMMARY_FILE, BudgetResult, BuildSummary, DeviceSummary, InitWeights,
                              VariantSummary, write_summary)
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
        train = _float(recipe, splits, stage, root, log)
        sources = compress_stages(recipe, splits, stage, root / "keras" / "float.h5", root / "keras", log,
                                  float_epochs=train.get("epochs"))
        # A channel-pruned model computes fewer MACs than the float one (CQAT starts from float).
        thinned_macs = manifest.stages["channels"]["metrics"]["macs"] if recipe.prune.channels else None
        variants = _variants(recipe, splits, stage, sources, train["macs"], root, log, thinned_macs)
        devices: Dict[str, Dict[str, DeviceSummary]] = {}
        if run_devices and recipe.devices.targets:
            from pipeline.devices.matrix import run_device_matrix

            devices = run_device_matrix(recipe, root, variants, splits, stage, log)
        summary = BuildSummary(
            recipe=recipe.build_name, float_top1=float(train["test_top1"]),
            float_val_top1=float(train["val_top1"]), params=int(train["params"]),
            macs=int(train["macs"]),
            deploy_variant=recipe.deploy_variant, labels=tuple(splits.labels), variants=variants,
            devices=devices, stages_run=tuple(stage.ran),
            init=InitWeights.from_dict(train["init"], "init") if "init" in train else None)
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


def _float(recipe: Recipe, splits, stage: StageRunner, root: Path, log: Log) -> Dict[str, Any]:
    """The float Keras model and its test predictions; returns its figures.

    From scratch: the ``train`` stage. From ``model.init``: the ``transfer-head`` and
    ``transfer-finetune`` stages (:mod:`pipeline.train.finetune`).
    """
    from pipeline.train.stage import train_float

    from pipeline.train.schedule import float_plan

    if recipe.model.init:
        from pipeline.train.finetune import transfer_stages

        return transfer_stages(recipe, splits, stage, root / "keras", log)
    float_h5, preds = root / "keras" / "float.h5", root / "keras" / "float_test_pred.npy"
    cfg = recipe.to_dict()
    model = {k: v for k, v in cfg["model"].items() if k != "init"}  # unset here; keeps older keys valid
    # "plan": the schedule as resolved (train.epochs unset depends on the data set);
    # "fit": epoch-at-a-time training with augmentation, early stopping, warm-up.
    model_cfg = {"seed": recipe.seed, "model": model, "train": cfg["train"],
                 "plan": float_plan(recipe).to_dict(), "fit": 2}
    return stage("train", model_cfg, {}, {"model": float_h5, "test_pred": preds},
                 lambda: train_float(recipe, splits, float_h5, preds, log))


def compress_stages(recipe: Recipe, splits, stage, float_h5: Path, keras_dir: Path,
                    log: Log, float_epochs: Optional[int] = None) -> Dict[str, Dict[str, Path]]:
    """Runs the optimization stages the requested variants need.

    Stages (each cached through the manifest, each run only when a variant's
    source needs it): ``channels`` (float -> thinned, ``prune.structure`` channels or
    channels+unstructured), ``prune`` (float or thinned -> pruned, unstructured or
    channels+unstructured),
    ``qat`` (PQAT of the pruned model, or plain QAT of the float one), ``cluster``
    and ``cqat`` (float -> clustered -> CQAT), ``cluster-pruned`` and ``pcqat``
    (pruned -> sparsity-preserving clustered -> PCQAT). ``prune.epochs`` and
    ``qat.epochs`` set to ``auto`` follow ``float_epochs`` (the epochs float training
    ran; :func:`pipeline.train.schedule.finetune_epochs`); the stage keys hold the
    resolved lengths and the augmentation every fine-tune trains with.

    Returns:
        For each source name (:data:`pipeline.variants.SOURCES`), the files the
        converter reads: ``{"keras": model.h5}``, or for CQAT/PCQAT, whose models
        only reload by rebuilding, ``{"keras": weights.h5, "base": clustered.h5}``.
    """
    from pipeline.train.schedule import finetune_epochs

    r = dataclasses.replace
    recipe = r(recipe, prune=r(recipe.prune, epochs=finetune_epochs(recipe.prune.epochs, float_epochs, "prune")),
               qat=r(recipe.qat, epochs=finetune_epochs(recipe.qat.epochs, float_epochs, "qat")))
    needed = {VARIANTS.get(v).source for v in recipe.convert.variants}
    cfg = recipe.to_dict()
    # Every fine-tune trains epoch by epoch with the float stage's augmentation and class weights.
    fit_key = {"batch": recipe.train.batch_size, "augment": cfg["train"]["augment"],
             "class_weight": recipe.train.class_weight, "fit": 2}
    sources = {"float": {"keras": float_h5}}
    pruned = None
    if recipe.prune.channels:
        from pipeline.compress.structured import channel_prune_model

        # Thinner, not sparse: every later stage starts from it as from the float model.
        pruned = keras_dir / "channels.h5"
        stage("channels", {"prune": cfg["prune"], "threads": recipe.devices.threads, **fit_key},
              {"keras": float_h5}, {"model": pruned},
              lambda: channel_prune_model(recipe, splits, float_h5, pruned, log))
        sources["float"] = {"keras": pruned}
    if recipe.prune.unstructured:
        from pipeline.compress.prune import prune_model
        from pipeline.recipe.schema import CHANNEL_KEYS

        # Magnitude pruning of the float model, or of the thinned one (channels+unstructured).
        src = sources["float"]["keras"]
        pruned = keras_dir / "pruned.h5"
        prune_key = {k: v for k, v in cfg["prune"].items() if k not in CHANNEL_KEYS}
        stage("prune", {"prune": prune_key, **fit_key}, {"keras": src},
              {"model": pruned}, lambda: prune_model(recipe, splits, src, pruned, log))
        sources["float"] = {"keras": pruned}
    if "qat" in needed:
        from pipeline.compress.qat import qat_model

        qat = keras_dir / "qat.h5"
        src = sources["float"]["keras"]
        stage("qat", {"qat": cfg["qat"], "preserve_sparsity": recipe.prune.unstructured,
                      **fit_key}, {"keras": src},
              {"model": qat}, lambda: qat_model(recipe, splits, src, qat, log))
        sources["qat"] = {"keras": qat}
    # Clustering chains: (source, stage names, model clustered, sparsity-preserving).
    chains = (("cqat", "cluster", float_h5, False),
              ("pcqat", "cluster-pruned", pruned, recipe.prune.unstructured))
    for scheme, cluster_stage, src, preserve in chains:
        if scheme not in needed:
            continue
        from pipeline.compress.cluster import cluster_model, cluster_qat_model

        clustered = keras_dir / f"{cluster_stage}.h5"
        weights = keras_dir / f"{scheme}-weights.h5"
        stage(cluster_stage, {"cluster": cfg["cluster"], "preserve_sparsity": preserve, **fit_key},
              {"keras": src}, {"model": clustered},
              lambda: cluster_model(recipe, splits, src, clustered, preserve, log))
        stage(scheme, {"qat": cfg["qat"], "scheme": scheme, "clusters": recipe.cluster.clusters,
                       **fit_key}, {"keras": clustered}, {"weights": weights},
              lambda: cluster_qat_model(recipe, splits, clustered, weights, scheme, log))
        sources[scheme] = {"keras": weights, "base": clustered}
    return sources


def _variants(recipe: Recipe, splits, stage: StageRunner, sources: Dict[str, Dict[str, Path]], macs: int,
              root: Path, log: Log, thinned_macs: Optional[int] = None) -> Dict[str, VariantSummary]:
    """The ``convert/<variant>`` and ``evaluate/<variant>`` stages of every variant, in recipe order.

    Evaluation saves each variant's test predictions (``tflite/<variant>.pred.npy``)
    beside its ``.tflite`` file, and the test labels (``tflite/test_labels.npy``, the
    same file for every variant), for later stages to read.
    """
    from pipeline.export.convert import convert_variant
    from pipeline.export.evaluate import evaluate_tflite, labels_path, predictions_path

    float_pred = root / "keras" / "float_test_pred.npy"
    float_classes = np.load(float_pred)
    convert_cfg = recipe.to_dict()["convert"]
    out = {}
    for name in recipe.convert.variants:
        variant = VARIANTS.get(name)
        src = sources[variant.source]  # {"keras": model or weights[, "base": model]}
        tfl = root / "tflite" / f"{name}.tflite"
        pred = predictions_path(tfl)
        validation = stage(f"convert/{name}", {"variant": name, "convert": convert_cfg, "seed": recipe.seed},
                           src, {"tflite": tfl},
                           lambda: convert_variant(recipe, name, src["keras"], splits, tfl, log, base=src.get("base")))
        # "kernels", "val": the figures include the per-kernel table and the validation
        # top-1 (older cached records lack them).
        evaluation = stage(f"evaluate/{name}", {"variant": name, "kernels": True, "val": True},
                           {"tflite": tfl, "float_pred": float_pred},
                           {"predictions": pred, "labels": labels_path(pred)},
                           lambda: evaluate_tflite(tfl, splits.x_test, splits.y_test, float_classes, pred,
                                                   splits.x_val, splits.y_val))
        # Paths are this build directory's, whatever directory a cached record was made in.
        out[name] = VariantSummary.from_dict(
            {**evaluation, "predictions": str(pred), "validation": validation,
             "macs": thinned_macs if thinned_macs and variant.source != "cqat" else macs, "path": str(tfl),
             "chain": chain_of(variant.source, recipe.prune.enabled, recipe.prune.structure)}, f"evaluate/{name}")
    return out


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


def summary_table(summary: BuildSummary) -> str:
    """Markdown table of every variant: the chain it comes from, size, gzip size, top-1,
    agreement, zeros and distinct values per output channel; then, when a clustered
    variant was built, the per-kernel table of every full-integer variant."""
    lines = [f"float Keras top-1: {summary.float_top1:.2f}%   params {summary.params:,}   "
             f"MACs {summary.macs:,}",
             "",
             "| variant | from | size KiB | gzip KiB | top-1 % | agree w/ float % | zeros (prunable) | "
             "distinct/channel (max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, v in summary.variants.items():
        lines.append(f"| {name} | {v.chain} | {v.size_bytes / 1024:.1f} | "
                     f"{v.gzip_bytes / 1024:.1f} | {v.top1:.2f} | {v.agreement_with_float:.2f} | "
                     f"{v.zeros_prunable:.1%} | {v.max_unique_per_kernel} |")
    table = kernel_summary(summary)
    return "\n".join(lines) + (f"\n\n{table}" if table else "")


def kernel_summary(summary: BuildSummary) -> str:
    """Per-kernel zeros and distinct values per output channel of the full-integer
    variants, as Markdown; empty unless a clustered variant (CQAT, PCQAT) was built."""
    variants = {name: v for name, v in summary.variants.items()
                if name in VARIANTS and VARIANTS.get(name).full_integer and v.kernels}
    if not any(VARIANTS.get(name).source in ("cqat", "pcqat") for name in variants):
        return ""
    by_layer = {name: {k.layer: k for k in v.kernels} for name, v in variants.items()}
    head = " | ".join(f"{name} zeros / distinct" for name in variants)
    lines = ["Per kernel (int8 files): zeros, and most distinct values in any output channel",
             "",
             f"| kernel | op | params | {head} |",
             "|---|---|---:|" + "---:|" * len(variants)]
    for row in next(iter(variants.values())).kernels:
        cells = []
        for kernels in by_layer.values():
            k = kernels.get(row.layer)
            cells.append(f"{k.zeros:.0%} / {k.unique_per_channel}" if k else "")
        lines.append(f"| {row.layer} | {row.op} | {row.params:,} | {' | '.join(cells)} |")
    return "\n".join(lines)


def budget_summary(budgets: Sequence[BudgetResult]) -> str:
    """The budget table of a build, or a line saying its recipe sets none."""
    return format_budget_table(budgets) if budgets else "(no budgets in this recipe)"

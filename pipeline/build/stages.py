"""The stages of a build as data: what each starts from, makes, runs and is cached by.

The float model comes from ``train`` (from scratch) or the two transfer stages
(``model.init``). The compression stages are rows of :data:`COMPRESS_STAGES`, run in
table order, each only when the recipe asks for it and a requested variant's source
needs it. Each row names the model it starts from and the model it makes; the
models of one build are held by name:

    trained         the float model as trained (``keras/float.h5``)
    compressed      the float model after channel and/or magnitude pruning, else
                    ``trained``: the ``float`` source of the variants
    <row name>      what that row made (its ``file`` under ``keras/``: a model, or the
                    weights of a clustered QAT model)

Every row is keyed by its recipe section(s) and :func:`fit_key` (how every fine-tune
trains), plus what the row adds; the manifest re-runs a row when its key or its
input file changes.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pipeline.variants import VARIANTS
from pipeline.recipe.schema import Recipe
from pipeline.store.manifest import Manifest
from pipeline.errors import Log

# Cache-key versions. Each is part of its stages' keys: bump one when what its
# stages make changes for the same recipe, so that cached results are not reused.

# Training: epoch at a time, with augmentation, early stopping and warm-up (train
# and every compression fine-tune).
FIT_VERSION = 2
# evaluate/<variant>: the figures include the per-kernel table ("kernels") and the
# validation top-1 ("val"); records made before either lack them.
EVALUATE_KEY = {"kernels": True, "val": True}


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


@dataclass(frozen=True)
class FloatFigures:
    """What the float stage(s) report that the rest of the build reads.

    Attributes:
        epochs: epochs trained (head and fine-tune together after a transfer); the
            ``auto`` fine-tune lengths follow it.
        init: the starting weights' record (``model.init``), else None.
        choice: transfer against scratch (:class:`pipeline.summary.FloatChoice` as a
            dict) when both were trained, else None.
        stage: the stage that made ``keras/float.h5`` (one of
            :data:`pipeline.summary.FLOAT_STAGES`).
    """

    test_top1: float
    val_top1: float
    params: int
    macs: int
    epochs: Optional[int] = None
    init: Optional[Dict[str, Any]] = None
    choice: Optional[Dict[str, Any]] = None
    stage: str = "train"

    @classmethod
    def from_metrics(cls, m: Dict[str, Any], stage: str) -> "FloatFigures":
        return cls(float(m["test_top1"]), float(m["val_top1"]), int(m["params"]), int(m["macs"]),
                   m.get("epochs"), m.get("init"), m.get("choice"), stage)


def float_mode(recipe: Recipe, splits) -> str:
    """``scratch``, ``transfer`` or ``best`` (both, the better kept): ``transfer.choose``
    with ``auto`` resolved on the training split's smallest class."""
    import numpy as np

    if not recipe.model.init:
        return "scratch"
    choose = recipe.transfer.choose
    if choose != "auto":
        return choose
    smallest = int(np.bincount(np.asarray(splits.y_train), minlength=splits.num_classes).min())
    return "best" if smallest <= recipe.transfer.few_per_class else "transfer"


def float_stage(recipe: Recipe, splits, stage: StageRunner, keras_dir: Path, log: Log) -> FloatFigures:
    """The float Keras model (``keras/float.h5``) and its test predictions.

    From scratch: the ``train`` stage. From ``model.init``: the ``transfer-head`` and
    ``transfer-finetune`` stages (:mod:`pipeline.train.transfer`); with
    ``transfer.choose`` resolving to ``best``, the ``train`` stage too, then the
    ``float-choice`` stage keeps the one with the higher validation top-1.
    """
    from pipeline.train.transfer import keep_better, transfer_stages

    mode = float_mode(recipe, splits)
    if mode == "scratch":
        if recipe.model.init:
            log(f"[train] transfer.choose: scratch: training from random weights (model.init {recipe.model.init} "
                "is not used)")
        return FloatFigures.from_metrics(_scratch_stage(recipe, splits, stage, keras_dir, "float", log), "train")
    if mode == "transfer":
        return FloatFigures.from_metrics(transfer_stages(recipe, splits, stage, keras_dir, log),
                                         "transfer-finetune")
    log(f"[train] transfer.choose: {recipe.transfer.choose}: training by transfer and from scratch, keeping the "
        "better on validation")
    transferred = transfer_stages(recipe, splits, stage, keras_dir, log, out="transfer")
    scratch = _scratch_stage(recipe, splits, stage, keras_dir, "scratch", log)
    files = {m: {"model": keras_dir / f"{m}.h5", "test_pred": keras_dir / f"{m}_test_pred.npy"}
             for m in ("transfer", "scratch", "float")}
    chosen = stage("float-choice", {"choose": recipe.transfer.choose},
                   {f"{m}_{k}": p for m in ("transfer", "scratch") for k, p in files[m].items()}, files["float"],
                   lambda: keep_better(transferred, scratch, files, log))
    return FloatFigures.from_metrics(chosen, "float-choice")


def _scratch_stage(recipe: Recipe, splits, stage: StageRunner, keras_dir: Path, name: str, log: Log):
    """The ``train`` stage: the recipe's model from random weights, to ``keras/<name>.h5``."""
    from pipeline.train.schedule import float_plan
    from pipeline.train.stage import train_float

    model_h5, preds = keras_dir / f"{name}.h5", keras_dir / f"{name}_test_pred.npy"
    cfg = recipe.to_dict()
    model = {k: v for k, v in cfg["model"].items() if k != "init"}  # not used here; keeps older keys valid
    # "plan": the schedule as resolved (train.epochs unset depends on the data set).
    model_cfg = {"seed": recipe.seed, "model": model, "train": cfg["train"],
                 "plan": float_plan(recipe).to_dict(), "fit": FIT_VERSION}
    return stage("train", model_cfg, {}, {"model": model_h5, "test_pred": preds},
                 lambda: train_float(recipe, splits, model_h5, preds, log))


def fit_key(recipe: Recipe) -> Dict[str, Any]:
    """Key parts of every compression fine-tune: it trains epoch by epoch with the float
    stage's batch size, augmentation and class weights."""
    return {"batch": recipe.train.batch_size, "augment": recipe.to_dict()["train"]["augment"],
            "class_weight": recipe.train.class_weight, "fit": FIT_VERSION}


def _channels(recipe, splits, src, out, log):
    from pipeline.compress.structured import channel_prune_model

    return channel_prune_model(recipe, splits, src, out, log)


def _prune(recipe, splits, src, out, log):
    from pipeline.compress.prune import prune_model

    return prune_model(recipe, splits, src, out, log)


def _qat(recipe, splits, src, out, log):
    from pipeline.compress.qat import qat_model

    return qat_model(recipe, splits, src, out, log)


def _cluster(sparse: bool):
    def run(recipe, splits, src, out, log):
        from pipeline.compress.cluster import cluster_model

        return cluster_model(recipe, splits, src, out, sparse and recipe.prune.unstructured, log)
    return run


def _cluster_qat(scheme: str):
    def run(recipe, splits, src, out, log):
        from pipeline.compress.cluster import cluster_qat_model

        return cluster_qat_model(recipe, splits, src, out, scheme, log)
    return run


def _channels_key(r: Recipe) -> Dict[str, Any]:
    from pipeline.compress.netadapt import STATE_VERSION
    from pipeline.train.schedule import recovery_plan

    # The fine-tune's plan as resolved, and the schedule's version (what a step does).
    return {"prune": r.to_dict()["prune"], "threads": r.devices.threads,
            "recovery": recovery_plan(r.prune.epochs).to_dict(), "schedule": STATE_VERSION}


def _prune_key(r: Recipe) -> Dict[str, Any]:
    from pipeline.recipe.schema import CHANNEL_KEYS

    return {"prune": {k: v for k, v in r.to_dict()["prune"].items() if k not in CHANNEL_KEYS}}


@dataclass(frozen=True)
class CompressStage:
    """One compression stage.

    Attributes:
        name: the manifest's stage name.
        file: what it writes under ``keras/``: a model, or only weights when ``weights_only``.
        start: the model it starts from (a name in the module docstring's list).
        run: ``(recipe, splits, start file, out file, log) -> metrics``.
        key: the stage's key parts besides :func:`fit_key`.
        wanted: whether the recipe asks for it, given the variant sources needed.
        compresses: its model becomes ``compressed`` (the ``float`` source).
        weights_only: it saves weights; the model reloads by rebuilding ``start``
            (clustered QAT), so its source is ``{"keras": weights, "base": start}``.
        source: the variant source (:data:`pipeline.variants.SOURCES`) it makes.
        own_epochs: it reads ``prune.epochs`` as the recipe has it (its ``auto`` is early
            stopping, :func:`pipeline.train.schedule.recovery_plan`), not as resolved from
            the float epochs.
    """

    name: str
    file: str
    start: str
    run: Callable[..., Dict[str, Any]]
    key: Callable[[Recipe], Dict[str, Any]]
    wanted: Callable[[Recipe, frozenset], bool]
    compresses: bool = False
    weights_only: bool = False
    source: Optional[str] = None
    own_epochs: bool = False


COMPRESS_STAGES: Tuple[CompressStage, ...] = (
    # Thinner, not sparse: every later stage starts from it as from the float model.
    CompressStage("channels", "channels.h5", "trained", _channels, _channels_key,
                  lambda r, needed: r.prune.channels, compresses=True, own_epochs=True),
    # Magnitude pruning of the float model, or of the thinned one (channels+unstructured).
    CompressStage("prune", "pruned.h5", "compressed", _prune, _prune_key,
                  lambda r, needed: r.prune.unstructured, compresses=True),
    # PQAT of the pruned model, or plain QAT of the float (or thinned) one.
    CompressStage("qat", "qat.h5", "compressed", _qat,
                  lambda r: {"qat": r.to_dict()["qat"], "preserve_sparsity": r.prune.unstructured},
                  lambda r, needed: "qat" in needed, source="qat"),
    CompressStage("cluster", "cluster.h5", "trained", _cluster(sparse=False),
                  lambda r: {"cluster": r.to_dict()["cluster"], "preserve_sparsity": False},
                  lambda r, needed: "cqat" in needed),
    CompressStage("cqat", "cqat-weights.h5", "cluster", _cluster_qat("cqat"),
                  lambda r: {"qat": r.to_dict()["qat"], "scheme": "cqat", "clusters": r.cluster.clusters},
                  lambda r, needed: "cqat" in needed, weights_only=True, source="cqat"),
    # Sparsity-preserving clustering of the pruned (or thinned) model.
    CompressStage("cluster-pruned", "cluster-pruned.h5", "compressed", _cluster(sparse=True),
                  lambda r: {"cluster": r.to_dict()["cluster"], "preserve_sparsity": r.prune.unstructured},
                  lambda r, needed: "pcqat" in needed),
    CompressStage("pcqat", "pcqat-weights.h5", "cluster-pruned", _cluster_qat("pcqat"),
                  lambda r: {"qat": r.to_dict()["qat"], "scheme": "pcqat", "clusters": r.cluster.clusters},
                  lambda r, needed: "pcqat" in needed, weights_only=True, source="pcqat"),
)


def wanted_rows(recipe: Recipe) -> Tuple[CompressStage, ...]:
    """The rows of :data:`COMPRESS_STAGES` that ``recipe`` runs, in table order."""
    needed = frozenset(VARIANTS.get(v).source for v in recipe.convert.variants)
    return tuple(row for row in COMPRESS_STAGES if row.wanted(recipe, needed))


def compress_stages(recipe: Recipe, splits, stage, float_h5: Path, keras_dir: Path,
                    log: Log, float_epochs: Optional[int] = None) -> Dict[str, Dict[str, Path]]:
    """Runs the rows of :data:`COMPRESS_STAGES` the requested variants need.

    ``prune.epochs`` and ``qat.epochs`` set to ``auto`` follow ``float_epochs`` (the
    epochs float training ran; :func:`pipeline.train.schedule.finetune_epochs`); the
    stage keys hold the resolved lengths. A row with ``own_epochs`` (channel pruning's
    fine-tune, whose ``auto`` stops on validation) reads ``prune.epochs`` as asked.

    Returns:
        For each source name (:data:`pipeline.variants.SOURCES`), the files the
        converter reads: ``{"keras": model.h5}``, or for CQAT/PCQAT, whose models
        only reload by rebuilding, ``{"keras": weights.h5, "base": clustered.h5}``.
    """
    from pipeline.train.schedule import finetune_epochs

    r = dataclasses.replace
    asked = recipe.prune
    recipe = r(recipe, prune=r(recipe.prune, epochs=finetune_epochs(recipe.prune.epochs, float_epochs, "prune")),
               qat=r(recipe.qat, epochs=finetune_epochs(recipe.qat.epochs, float_epochs, "qat")))
    files = {"trained": float_h5, "compressed": float_h5}  # the build's models by name
    sources: Dict[str, Dict[str, Path]] = {}
    common = fit_key(recipe)
    for row in wanted_rows(recipe):
        src, out = files[row.start], keras_dir / row.file
        output = {"weights" if row.weights_only else "model": out}
        rr = r(recipe, prune=asked) if row.own_epochs else recipe
        stage(row.name, {**row.key(rr), **common}, {"keras": src}, output,
              lambda row=row, rr=rr, src=src, out=out: row.run(rr, splits, src, out, log))
        files[row.name] = out
        if row.compresses:
            files["compressed"] = out
        if row.source:
            sources[row.source] = {"keras": out, "base": src} if row.weights_only else {"keras": out}
    return {"float": {"keras": files["compressed"]}, **sources}


def source_stages(recipe: Recipe, float_made_by: str) -> Dict[str, str]:
    """The stage that made each variant source of ``recipe``: ``float`` from the last
    compressing row that runs (else ``float_made_by``, the float stage), the others
    from their row."""
    made = {"float": float_made_by}
    for row in wanted_rows(recipe):
        if row.compresses:
            made["float"] = row.name
        if row.source:
            made[row.source] = row.name
    return made


def source_top1(stage: StageRunner, name: str) -> Optional[float]:
    """The test top-1 that stage ``name`` recorded for its Keras model, if it recorded one."""
    top1 = stage.manifest.stages.get(name, {}).get("metrics", {}).get("test_top1")
    return None if top1 is None else float(top1)


def thinned_macs(recipe: Recipe, stage: StageRunner) -> Optional[int]:
    """The MACs of the channel-pruned model, when the recipe thins channels (its
    ``channels`` stage ran or was cached in this build)."""
    return int(stage.manifest.stages["channels"]["metrics"]["macs"]) if recipe.prune.channels else None


def _rebuilt(recipe: Recipe, variant, files: Dict[str, Path]):
    """For CQAT/PCQAT (weights only), the clustered model rebuilt with those weights;
    None for a source the converter loads from its file."""
    if "base" not in files:
        return None
    from pipeline.compress.cluster import load_cluster_qat
    from pipeline.train.fit import setup_tensorflow

    setup_tensorflow(recipe.seed, recipe.train.logical_devices)
    return load_cluster_qat(files["base"], files["keras"], variant.source)


def variant_stages(recipe: Recipe, splits, stage: StageRunner, sources: Dict[str, Dict[str, Path]],
                   figures: FloatFigures, root: Path, log: Log) -> Dict[str, Any]:
    """The ``convert/<variant>`` and ``evaluate/<variant>`` stages of every variant, in recipe order.

    Evaluation saves each variant's test predictions (``tflite/<variant>.pred.npy``)
    beside its ``.tflite`` file, and the test labels (``tflite/test_labels.npy``, the
    same file for every variant), for later stages to read.

    Returns:
        ``{variant: VariantSummary}``.
    """
    import numpy as np

    from pipeline.export.convert import convert_variant
    from pipeline.export.evaluate import evaluate_tflite, labels_path, predictions_path
    from pipeline.variants import chain_of
    from pipeline.summary import VariantSummary

    # A channel-pruned model computes fewer MACs than the float one (CQAT starts from float).
    thinned = thinned_macs(recipe, stage)
    made_by = source_stages(recipe, figures.stage)
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
                           lambda: convert_variant(recipe, name, src["keras"], splits, tfl, log,
                                                   model=_rebuilt(recipe, variant, src)))
        evaluation = stage(f"evaluate/{name}", {"variant": name, **EVALUATE_KEY},
                           {"tflite": tfl, "float_pred": float_pred},
                           {"predictions": pred, "labels": labels_path(pred)},
                           lambda: evaluate_tflite(tfl, splits.x_test, splits.y_test, float_classes, pred,
                                                   splits.x_val, splits.y_val))
        # Paths are this build directory's, whatever directory a cached record was made in.
        out[name] = VariantSummary.from_dict(
            {**evaluation, "predictions": str(pred), "validation": validation,
             "macs": thinned if thinned and variant.source != "cqat" else figures.macs, "path": str(tfl),
             "source_top1": source_top1(stage, made_by[variant.source]),
             "chain": chain_of(variant.source, recipe.prune.enabled, recipe.prune.structure)}, f"evaluate/{name}")
    return out

"""What the report reads besides the summary: the manifest, the saved predictions, the kernels.

Everything here reads files the build wrote; nothing loads the data set or runs a
model. :func:`read_build_record` parses ``manifest.json`` once into a typed
:class:`BuildRecord`, so the report sections read attributes, not nested dicts.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pipeline.errors import DataError
from pipeline.summary import BuildSummary, float_stage_name, still_learning

DEPTHWISE_NOTE = "DepthwiseConv2D kernels are never pruned (tfmot has no prunable weights for them)"

# TFLite kernel ops and the Keras layer kinds the report names them by.
KERNEL_KINDS = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D", "FULLY_CONNECTED": "Dense"}


@dataclass(frozen=True)
class SparsityRow:
    """One kernel of the per-layer sparsity table."""

    layer: str
    kind: str
    shape: Tuple[int, ...]
    params: int
    zeros: float
    pruned: bool


@dataclass(frozen=True)
class PruneFigures:
    """The prune stage's figures as its manifest record holds them."""

    sparsity: float
    sparsity_all_kernels: float
    target_sparsity: Optional[float]
    layers: Tuple[SparsityRow, ...]


@dataclass(frozen=True)
class ChannelLayer:
    """One layer of the channel-pruned model: width (a group's producer) and MACs, before and after."""

    layer: str
    channels_before: Optional[int]
    channels_after: Optional[int]
    macs_before: int
    macs_after: int


@dataclass(frozen=True)
class ChannelStep:
    """One step of the channel-pruning schedule: what it thinned, the cost and the validation figures.

    ``cost_before``/``cost`` are in the target's unit (MACs, or estimated int8 ms on
    the target device); ``instructions`` is the target device's int8 count per
    inference after the step (None for a MACs target). ``channels_proposed``: the
    proposal's width, narrower than ``channels_after`` when the step's width was
    bisected onto the budget (None in records made before the bisection).
    """

    step: int
    layer: str
    channels_before: int
    channels_after: int
    cost_before: float
    cost: float
    macs: Optional[int]
    instructions: Optional[int]
    loss_oneshot: float
    top1_oneshot: float
    loss: float
    top1: float
    channels_proposed: Optional[int] = None


@dataclass(frozen=True)
class ChannelFigures:
    """The ``channels`` stage's figures: target, the schedule's start and end, steps, per-layer table.

    ``start``/``end`` hold the cost figures of the unpruned and the scheduled
    architecture (``cost``, ``macs``; with a device target ``latency_ms`` and
    ``instructions``; ``loss``/``top1`` on the schedule's validation images).
    """

    kind: str                   # "macs" or "latency_ms"
    budget: float
    device: Optional[str]
    criterion: str
    start: Mapping[str, Any]
    end: Mapping[str, Any]
    steps: Tuple[ChannelStep, ...]
    layers: Tuple[ChannelLayer, ...]
    float_macs: int
    macs: int
    schedule_s: float

    def saved_by_layer(self) -> Dict[str, float]:
        """Target cost removed by the steps that thinned each layer (target units)."""
        out: Dict[str, float] = {}
        for s in self.steps:
            out[s.layer] = out.get(s.layer, 0.0) + s.cost_before - s.cost
        return out


@dataclass(frozen=True)
class StageTiming:
    """One stage record of the manifest: wall time, peak resident memory (MiB) and when it finished.

    ``peak_rss_mb`` is None in a record from before peaks were kept.
    """

    name: str
    wall_s: float
    finished_at: str
    peak_rss_mb: Optional[float] = None


#: Stages that train, in the order the report shows their curves.
TRAINING_STAGES = ("train", "transfer-head", "transfer-finetune", "channels", "prune", "qat", "cluster", "cqat",
                   "cluster-pruned", "pcqat")


@dataclass(frozen=True)
class StageCurve:
    """The per-epoch figures of one training stage (top-1 as fractions, as Keras logs them).

    ``best_epoch`` is 1-based, by validation top-1; ``stopped`` says why training
    ended (``fixed``, ``patience``, ``max_epochs``, ``time_budget``; empty for a
    record from before it was kept); ``auto`` whether the length was chosen by
    early stopping; ``restored`` whether the best epoch's weights were put back.
    """

    stage: str
    loss: Tuple[float, ...]
    accuracy: Tuple[float, ...]
    val_loss: Tuple[float, ...]
    val_accuracy: Tuple[float, ...]
    best_epoch: int
    stopped: str
    auto: bool
    restored: bool

    @property
    def epochs(self) -> int:
        return len(self.loss)

    @property
    def still_learning(self) -> bool:
        """Validation top-1 was still rising when training ended (:func:`pipeline.summary.still_learning`)."""
        return still_learning(self.val_accuracy, fixed=self.stopped == "fixed")


@dataclass(frozen=True)
class BuildRecord:
    """What the report takes from ``manifest.json``."""

    counts: Mapping[str, int]
    prune: Optional[PruneFigures]
    stages: Tuple[StageTiming, ...]
    versions: Mapping[str, str]
    curves: Tuple[StageCurve, ...] = ()
    class_counts: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    class_weight: Optional[Mapping[str, float]] = None
    channels: Optional[ChannelFigures] = None
    data_step: Optional[StageTiming] = None  # loading the data, where its record has a wall time


@dataclass(frozen=True)
class Confusion:
    """Counts [true, predicted] of the deploy variant on the test split, and its top-1 (percent)."""

    counts: np.ndarray
    top1: float


def _sparsity_row(rec: Mapping[str, Any]) -> SparsityRow:
    return SparsityRow(rec["layer"], rec["kind"], tuple(rec["shape"]), int(rec["params"]), float(rec["zeros"]),
                       bool(rec["pruned"]))


def _prune_figures(stages: Mapping[str, Any]) -> Optional[PruneFigures]:
    rec = stages.get("prune")
    metrics = rec.get("metrics") if isinstance(rec, dict) else None
    if not metrics:
        return None
    return PruneFigures(sparsity=metrics.get("sparsity", 0),
                        sparsity_all_kernels=metrics.get("sparsity_all_kernels", 0),
                        target_sparsity=metrics.get("target_sparsity"),
                        layers=tuple(_sparsity_row(r) for r in metrics.get("layers") or ()))


def _channel_figures(stages: Mapping[str, Any]) -> Optional[ChannelFigures]:
    metrics = (stages.get("channels") or {}).get("metrics")
    if not isinstance(metrics, dict) or "steps" not in metrics:
        return None
    target = metrics["target"]
    steps = tuple(ChannelStep(
        step=int(s["step"]), layer=s["layer"], channels_before=int(s["channels_before"]),
        channels_after=int(s["channels_after"]), cost_before=float(s["cost_before"]), cost=float(s["cost"]),
        macs=s.get("macs"), instructions=s.get("instructions"), loss_oneshot=float(s["loss_oneshot"]),
        top1_oneshot=float(s["top1_oneshot"]), loss=float(s["loss"]), top1=float(s["top1"]),
        channels_proposed=s.get("channels_proposed"))
        for s in metrics["steps"])
    layers = tuple(ChannelLayer(r["layer"], r.get("channels_before"), r.get("channels_after"), int(r["macs_before"]),
                                int(r["macs_after"])) for r in metrics.get("layers") or ())
    return ChannelFigures(kind=target["kind"], budget=float(target["budget"]), device=target.get("device"),
                          criterion=str(metrics.get("criterion", "")), start=metrics.get("start") or {},
                          end=metrics.get("end") or {}, steps=steps, layers=layers,
                          float_macs=int(metrics.get("float_macs") or 0), macs=int(metrics.get("macs") or 0),
                          schedule_s=float(metrics.get("schedule_s") or 0.0))


def _curve(name: str, metrics: Mapping[str, Any]) -> Optional[StageCurve]:
    history = metrics.get("history")
    if not isinstance(history, dict) or not history.get("loss"):
        return None
    series = {k: tuple(float(v) for v in history.get(k) or ()) for k in ("loss", "accuracy", "val_loss",
                                                                          "val_accuracy")}
    val = series["val_accuracy"]
    best = int(metrics.get("best_epoch") or (int(np.argmax(val)) + 1 if val else 0))
    plan = metrics.get("plan") or {}
    return StageCurve(name, **series, best_epoch=best, stopped=str(metrics.get("stopped") or ""),
                      auto=plan.get("epochs") == "auto", restored=bool(metrics.get("restored")))


def _curves(stages: Mapping[str, Any]) -> Tuple[StageCurve, ...]:
    out = []
    for name in TRAINING_STAGES:
        metrics = (stages.get(name) or {}).get("metrics")
        curve = _curve(name, metrics) if isinstance(metrics, dict) else None
        if curve is not None:
            out.append(curve)
    return tuple(out)


def _figure(value: Any) -> Optional[float]:
    """A recorded number, or None where it is missing (an older manifest) or not a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _data_step(data_record: Mapping[str, Any]) -> Optional[StageTiming]:
    wall = _figure(data_record.get("wall_s"))
    if wall is None:
        return None
    return StageTiming("data", wall, str(data_record.get("finished_at") or ""),
                       _figure(data_record.get("peak_rss_mb")))


def read_build_record(root: Path) -> BuildRecord:
    """Parses ``root/manifest.json``; a missing or unreadable manifest reads as an empty one."""
    path = Path(root) / "manifest.json"
    data: Any = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:  # shown as a report without stage figures, as without a manifest
            data = {}
    if not isinstance(data, dict):
        data = {}
    stages = {name: rec for name, rec in (data.get("stages") or {}).items() if isinstance(rec, dict)}
    versions = next((rec["versions"] for rec in stages.values() if rec.get("versions")), {})
    data_record = data.get("data") or {}
    train_metrics = (stages.get(float_stage_name(stages)) or {}).get("metrics") or {}
    return BuildRecord(
        counts=data_record.get("counts") or {},
        prune=_prune_figures(stages),
        stages=tuple(StageTiming(name, _figure(rec.get("wall_s")) or 0.0, rec.get("finished_at", ""),
                                 _figure(rec.get("peak_rss_mb")))
                     for name, rec in stages.items()),
        versions=versions,
        curves=_curves(stages),
        class_counts=(data_record.get("report") or {}).get("counts") or {},
        class_weight=train_metrics.get("class_weight"),
        channels=_channel_figures(stages),
        data_step=_data_step(data_record))


def short_tensor_name(name: str) -> str:
    """The layer name inside a converter tensor name.

    ``"m/quant_block1_project_conv/Conv2D;m/.../FakeQuant..."`` -> ``"block1_project_conv"``: the
    converter joins the names of fused ops with ";"; the kernel's own op ends in
    Conv2D, depthwise or MatMul, and QAT layers carry a ``quant_`` prefix.
    """
    parts = name.split(";")
    main = next((p for p in parts if p.rsplit("/", 1)[-1] in ("Conv2D", "depthwise", "MatMul")), parts[0])
    pieces = main.split("/")
    layer = pieces[-2] if len(pieces) >= 2 else pieces[0]
    return layer[len("quant_"):] if layer.startswith("quant_") else layer


def sparsity_rows(root: Path, record: BuildRecord, variant: str) -> Tuple[List[SparsityRow], str]:
    """Per-layer kernel rows and where they come from: the prune stage's table when the
    build pruned, else the kernels of ``variant``'s .tflite."""
    if record.prune is not None and record.prune.layers:
        return list(record.prune.layers), "prune stage (Keras model after strip_pruning)"
    from pipeline.tflite.reader import read_tflite, weight_kernels

    rows = [SparsityRow(short_tensor_name(name), KERNEL_KINDS[op], tuple(arr.shape), int(arr.size),
                        float(np.count_nonzero(arr == 0) / arr.size), False)
            for op, name, arr in weight_kernels(read_tflite(Path(root) / "tflite" / f"{variant}.tflite"))]
    return rows, f"{variant}.tflite kernels (the build did not prune)"


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, classes: int) -> Confusion:
    """Counts of (true, predicted) class pairs over the test split.

    Raises:
        DataError: the two arrays differ in length or hold a class outside ``range(classes)``.
    """
    predicted, truth = np.asarray(predicted).astype(np.int64), np.asarray(truth).astype(np.int64)
    if predicted.ndim != 1 or predicted.shape != truth.shape:
        raise DataError(f"{len(predicted)} saved predictions for {len(truth)} test labels")
    if len(truth) and (min(predicted.min(), truth.min()) < 0 or max(predicted.max(), truth.max()) >= classes):
        raise DataError(f"saved predictions or test labels outside the {classes} classes")
    cm = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(cm, (truth, predicted), 1)
    top1 = float(np.mean(predicted == truth) * 100.0) if len(truth) else 0.0
    return Confusion(cm, top1)


def _ordered(mapping: Mapping[str, Any], order: Sequence[str]) -> Dict[str, Any]:
    keys = [k for k in order if k in mapping] + [k for k in mapping if k not in order]
    return {k: mapping[k] for k in keys}


def in_recipe_order(recipe, summary: BuildSummary) -> BuildSummary:
    """``summary`` with variants and devices in the recipe's order (summary.json sorts its keys)."""
    variants = list(recipe.convert.variants)
    devices = {dev: _ordered(per, variants) for dev, per in _ordered(summary.devices, recipe.devices.targets).items()}
    return dataclasses.replace(summary, variants=_ordered(summary.variants, variants), devices=devices)


def device_profile(name: str):
    """The registered profile of device ``name``, or None for a device of an older build
    that is no longer registered."""
    from pipeline.devices.profiles import get_device
    from pipeline.errors import ConfigError

    try:
        return get_device(name)
    except ConfigError:
        return None


def most_confused(confusion: Confusion, labels: Sequence[str], top: int = 5) -> List[Tuple[str, str, int, float]]:
    """The ``top`` most frequent (true, predicted) mistakes: labels, count, share of the true class."""
    cm = confusion.counts
    pairs = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j]]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [(labels[i], labels[j], n, n / max(int(cm[i].sum()), 1)) for n, i, j in pairs[:top]]


def _load_classes(path: Path, what: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"no saved {what} ({path})") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable saved {what} ({exc})") from None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DataError(f"{path}: saved {what} are not one class index per test image ({arr.dtype}, {arr.shape})")
    return arr


def saved_confusion(root: Path, summary: BuildSummary) -> Confusion:
    """The deploy variant's confusion matrix from what evaluation saved beside its ``.tflite``:
    the predicted classes (:attr:`VariantSummary.predictions`) and the test labels.

    Raises:
        DataError: a file is missing or unreadable, or the two do not match.
    """
    from pipeline.summary import labels_path

    # The summary records the path as the build saw it (maybe relative to its working
    # directory); the file lives in the build's tflite/, which may have moved since.
    predictions = Path(root) / "tflite" / Path(summary.variants[summary.deploy_variant].predictions).name
    predicted = _load_classes(predictions, "predictions")
    truth = _load_classes(labels_path(predictions), "test labels")
    return confusion_matrix(predicted, truth, len(summary.labels))

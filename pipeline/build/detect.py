"""The detection build: an SSDLite detector trained, pruned, quantized, converted and checked.

    cfg = load_detect_recipe("detect-shapes")     # or DetectConfig.from_dict({...})
    result = build_detector(cfg, Path("build/detect-shapes"), log=print)
    result.check_budgets()          # BudgetExceededError when a budget was missed

The stages (:data:`pipeline.build.detect_stages.STAGES`, in order): data -> float training
-> magnitude pruning (prune -> strip) -> prune-preserving QAT -> export of every variant
-> host evaluation (COCO mAP on the test split) -> device runs of every variant on every
device -> the bundle (the deploy variant with MediaPipe object-detector metadata, run by
MediaPipe Tasks' ObjectDetector) -> budgets -> ``summary.json``, ``report.md`` and
side-by-side pictures of the float and deploy variants' detections. Each stage is timed
and writes its files atomically under ``out``.

Budgets are on the host's mAP@0.5 (a fraction in [0, 1]): ``min_map`` for every
variant, ``max_map_drop`` for the int8 variants against ``float32``. The float variants
convert the pruned model (as the classifier build does when pruning is on), so the
drop measures quantization alone; the dense float model's mAP is recorded beside it.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from pipeline.build.detect_config import DetectConfig
from pipeline.errors import BudgetExceededError, ConfigError, DataError, Log
from pipeline.plain import from_plain, to_plain
from pipeline.table import Table
from pipeline.variants import VARIANTS

#: Version of ``summary.json``'s layout.
SCHEMA_VERSION = 2
#: Agreement of device and host detections: same class, IoU at least this (issue 33).
AGREEMENT_IOU = 0.9


@dataclass(frozen=True)
class DeviceFigures:
    """One variant on one emulated device.

    ``agreement``: the share of the host's ``host_detections`` (score >= 0.5) that the
    device has too (same class, IoU >= :data:`AGREEMENT_IOU`; 1.0 when there are none);
    ``map``/``map_50`` on the device samples.
    """

    loaded: bool
    verdict: str
    samples: int
    instructions: Optional[int] = None
    latency_ms: Optional[float] = None
    agreement: Optional[float] = None
    reverse_agreement: Optional[float] = None
    map: Optional[float] = None
    map_50: Optional[float] = None
    host_detections: Optional[int] = None


@dataclass(frozen=True)
class VariantFigures:
    """One exported variant: its file, kernel sparsity, host mAP on the test split and devices."""

    name: str
    size_bytes: int
    sparsity: float
    map: float
    map_50: float
    devices: Dict[str, DeviceFigures] = field(default_factory=dict)


@dataclass(frozen=True)
class BundleFigures:
    """The bundle: the deploy variant with object-detector metadata, and what MediaPipe
    Tasks' ObjectDetector made of it on ``images`` test images: the share of our
    ``detections`` (every one the postprocess op returns) that it reports too, with the
    same class, score and box to within a pixel (``agreement``,
    :func:`pipeline.publish.detector_metadata.matches_mediapipe`), and the share of its
    detections that are ours (``reverse_agreement``)."""

    path: str
    variant: str
    size_bytes: int
    sha256: str
    images: int
    detections: int
    agreement: float
    reverse_agreement: float


@dataclass(frozen=True)
class DetectResult:
    """What a detection build measured (``summary.json``)."""

    config: DetectConfig
    labels: Tuple[str, ...]
    data_source: str
    counts: Dict[str, int]
    dense_map_50: float
    variants: Tuple[VariantFigures, ...]
    stage_seconds: Dict[str, float]
    budget_failures: Tuple[str, ...] = ()
    bundle: Optional[BundleFigures] = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> Dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any) -> "DetectResult":
        """From ``summary.json``'s data; a malformed one is a DataError."""
        return from_plain(cls, data, "detect summary", DataError)

    def variant(self, name: str) -> VariantFigures:
        for v in self.variants:
            if v.name == name:
                return v
        raise ConfigError(f"no variant {name!r} in this build; built: {', '.join(v.name for v in self.variants)}")

    def check_budgets(self) -> None:
        """Raises BudgetExceededError listing the missed budgets (files are written already)."""
        if self.budget_failures:
            raise BudgetExceededError("detection budgets missed: " + "; ".join(self.budget_failures))


def budget_failures(cfg: DetectConfig, variants: Tuple[VariantFigures, ...]) -> Tuple[str, ...]:
    """The budgets ``variants`` miss, one line each (see the module docstring)."""
    out = []
    base = next((v for v in variants if v.name == "float32"), None)
    for v in variants:
        budgets = cfg.budgets
        if budgets.min_map is not None and v.map_50 < budgets.min_map:
            out.append(f"{v.name}: mAP@0.5 {v.map_50:.3f} < min_map {budgets.min_map:.3f}")
        int8 = VARIANTS.get(v.name).number_format == "int8"
        if int8 and base is not None and budgets.max_map_drop is not None:
            drop = base.map_50 - v.map_50
            if drop > budgets.max_map_drop:
                out.append(f"{v.name}: mAP@0.5 {v.map_50:.3f} is {drop:.3f} under float32's {base.map_50:.3f} "
                           f"(max_map_drop {budgets.max_map_drop:.3f})")
    return tuple(out)


def _f(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _device_cells(m: Optional[DeviceFigures]) -> list:
    """loads / M instructions / estimated ms / agreement / device mAP@0.5 of one run."""
    if m is None:
        return ["-"] * 5
    if not m.loaded:
        return [("no", "bad"), "-", "-", "-", "-"]
    instr = None if m.instructions is None else m.instructions / 1e6
    agree = _f(m.agreement, ".1%") + ("" if m.host_detections is None else f" of {m.host_detections}")
    return ["yes", _f(instr, ".2f"), _f(m.latency_ms, ".2f"), agree, _f(m.map_50, ".3f")]


def variant_table(result: DetectResult) -> Table:
    """Variant, size, sparsity, host mAP and, per target device (every variant runs there),
    loads / instructions / latency / agreement / device mAP@0.5."""
    devices = [d for d in result.config.target_devices() if any(d in v.devices for v in result.variants)]
    headers = ["variant", "KiB", "sparsity", "mAP", "mAP@0.5"]
    for d in devices:
        headers += [f"{d} loads", f"{d} M instr", f"{d} est. ms", f"{d} agree", f"{d} mAP@0.5"]
    rows = [[v.name, f"{v.size_bytes / 1024:.1f}", f"{v.sparsity:.1%}", f"{v.map:.3f}", f"{v.map_50:.3f}",
             *(c for d in devices for c in _device_cells(v.devices.get(d)))] for v in result.variants]
    return Table(headers, rows)


def deploy_table(result: DetectResult) -> Table:
    """The deploy variant on every device it ran on, one row each."""
    deploy = result.variant(result.config.deploy_variant)
    return Table(["device", "loads", "M instr", "est. ms", "agreement", "device mAP@0.5"],
                 [[d, *_device_cells(m)] for d, m in deploy.devices.items()])


def stage_table(result: DetectResult) -> Table:
    rows = [[name, f"{s:.1f}"] for name, s in result.stage_seconds.items()]
    rows.append(["total", f"{sum(result.stage_seconds.values()):.1f}"])
    return Table(["stage", "wall s"], rows)


def report_markdown(result: DetectResult, pictures: Tuple[str, ...] = ()) -> str:
    """``report.md``: the variant table, budgets, stage times and the pictures' links."""
    cfg = result.config
    counts = ", ".join(f"{k} {n}" for k, n in result.counts.items())
    h, w, c = cfg.input_shape
    lines = [f"# Detection build {cfg.build_name}: SSDLite {cfg.model.family} {cfg.model.alpha} at {h}x{w}x{c}", "",
             f"Data: {result.data_source} ({counts}); classes: {', '.join(result.labels)}.",
             f"Host mAP on the test split (COCO, pycocotools); device figures on the first "
             f"{cfg.devices.samples} test images; agreement: the host's detections scoring >= 0.5 "
             f"that the device has too (same class, IoU >= {AGREEMENT_IOU}).",
             f"Dense float model (before pruning): mAP@0.5 {result.dense_map_50:.3f}.", "",
             *variant_table(result).markdown(), ""]
    if result.variant(cfg.deploy_variant).devices:
        lines += [f"## The deploy variant ({cfg.deploy_variant}) on every device", "",
                  *deploy_table(result).markdown(), ""]
    lines += ["## Budgets", ""]
    lines += [f"- missed: {f}" for f in result.budget_failures] or ["- all met"]
    b = result.bundle
    if b is not None:
        lines += ["", "## Bundle", "",
                  f"`{b.path}`: {b.variant} with MediaPipe object-detector metadata, {b.size_bytes / 1024:.1f} KiB, "
                  f"sha256 `{b.sha256[:16]}`. MediaPipe Tasks' ObjectDetector on {b.images} test images reports "
                  f"{b.agreement:.1%} of our {b.detections} detections with the same class, score and box (to a "
                  f"pixel), and {b.reverse_agreement:.1%} of its detections are ours."]
    lines += ["", "## Stage times", "", *stage_table(result).markdown()]
    if pictures:
        lines += ["", "## Detections: float32 (left) and the deploy variant (right)", ""]
        lines += [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def build_detector(cfg: DetectConfig, out: Path, log: Log = print, run_devices: bool = True) -> DetectResult:
    """Runs every stage of the detection build into ``out`` (see the module docstring).

    ``run_devices`` False leaves out the device runs (the figures have no devices).

    Returns:
        The result, also written as ``out/summary.json`` with ``out/report.md``. Missed
        budgets are in ``budget_failures`` (:meth:`DetectResult.check_budgets` raises).

    Raises:
        ConfigError / DataError: a bad config or data set (before any training).
        ConversionMismatchError: an exported variant disagrees with its Keras model.
        DeviceUnavailableError: the emulated devices cannot be run.
    """
    import os

    import yaml

    from pipeline.build.detect_stages import STAGES, Work
    from pipeline.store.atomic import atomic_write_text
    from pipeline.store.lock import build_lock

    cfg.validate()
    out = Path(out)
    with build_lock(out):
        if (out / "summary.json").exists():  # the last build's figures are kept beside
            os.replace(out / "summary.json", out / "summary.previous.json")
        atomic_write_text(out / "recipe.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        work = Work(cfg=cfg, out=out, log=log)
        for name, run in STAGES:
            if name != "devices" or run_devices:
                work.timed(name, run)
    return replace(work.result, stage_seconds=dict(work.seconds))


def default_detect_dir(cfg: DetectConfig) -> Path:
    return Path("build") / cfg.build_name

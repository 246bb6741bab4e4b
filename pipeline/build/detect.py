"""The detection build: an SSDLite detector trained, pruned, quantized, converted and checked.

    cfg = DetectConfig.from_dict({"data": {"dataset": "synthetic", "train": 600},
                                  "input_size": 96, "epochs": 10})
    result = build_detector(cfg, Path("out/detect"), log=print)
    result.check_budgets()          # BudgetExceededError when a budget was missed

The stages (:data:`pipeline.build.detect_stages.STAGES`, in order): data -> float training
-> magnitude pruning (prune -> strip) -> prune-preserving QAT -> export of every variant
-> host evaluation (COCO mAP on the test split) -> device runs of every variant on every
device -> budgets -> ``summary.json``, ``report.md`` and side-by-side pictures of the
float and deploy variants' detections. Each stage is timed and writes its files
atomically under ``out``.

Budgets are on the host's mAP@0.5 (a fraction in [0, 1]): ``min_map`` for every
variant, ``max_map_drop`` for the int8 variants against ``float32``. The float variants
convert the pruned model (as the classifier build does when pruning is on), so the
drop measures quantization alone; the dense float model's mAP is recorded beside it.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from pipeline.detection.export import PostprocessConfig
from pipeline.errors import BudgetExceededError, ConfigError, DataError, Log
from pipeline.plain import from_plain, to_plain
from pipeline.table import Table
from pipeline.variants import DEFAULT_VARIANTS, VARIANTS

#: Version of ``summary.json``'s layout.
SCHEMA_VERSION = 1
#: Data sets the build reads.
DATASETS = ("synthetic", "coco", "voc")
#: The variant drawn beside float32 in the report's pictures (when built).
DEPLOY_VARIANT = "int8-qat"
#: Agreement of device and host detections: same class, IoU at least this (issue 33).
AGREEMENT_IOU = 0.9


def default_devices() -> Tuple[str, ...]:
    """The device targets of the default recipe (``pipeline/recipe/presets/default.yaml``)."""
    from pipeline.recipe.load import load_recipe

    return tuple(load_recipe("default").devices.targets)


@dataclass(frozen=True)
class DetectData:
    """Where the images come from.

    Attributes:
        dataset: ``synthetic`` (rendered, no files), ``coco`` (``path``: images folder,
            ``annotations``: instances JSON) or ``voc`` (``path``: the VOC root).
        train, val, test: images per split of the synthetic set.
        val_fraction, test_fraction: shares of a coco or voc set held out (seeded).
        fit: ``resize`` or ``pad`` (coco and voc).
    """

    dataset: str = "synthetic"
    train: int = 600
    val: int = 100
    test: int = 200
    path: Optional[str] = None
    annotations: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    fit: str = "resize"

    def validate(self) -> None:
        """Raises ConfigError naming the first bad field."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"detect.data.dataset: unknown data set {self.dataset!r}; valid: {', '.join(DATASETS)}")
        if self.dataset == "synthetic":
            for name in ("train", "val", "test"):
                if getattr(self, name) < 1:
                    raise ConfigError(f"detect.data.{name}: must be >= 1, got {getattr(self, name)}")
            return
        if not self.path:
            raise ConfigError(f"detect.data.path: the {self.dataset} data set needs a path")
        if self.dataset == "coco" and not self.annotations:
            raise ConfigError("detect.data.annotations: the coco data set needs an annotations JSON file")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ConfigError("detect.data: val_fraction and test_fraction must be in (0, 1) with a sum "
                              f"under 1; got {self.val_fraction} and {self.test_fraction}")
        if self.fit not in ("resize", "pad"):
            raise ConfigError(f"detect.data.fit: expected resize or pad, got {self.fit!r}")


@dataclass(frozen=True)
class DetectConfig:
    """A detection build (round-trips through :meth:`from_dict` / :meth:`to_dict`).

    ``devices`` left empty means the default recipe's targets (:func:`default_devices`);
    ``min_map`` / ``max_map_drop`` None means no budget (see the module docstring).
    """

    data: DetectData = DetectData()
    input_size: int = 224
    channels: int = 3
    family: str = "mobilenet_v2"
    alpha: float = 0.35
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 0.003
    augment: bool = True
    prune_sparsity: float = 0.5
    prune_epochs: int = 3
    prune_learning_rate: float = 0.001
    qat_epochs: int = 1
    qat_learning_rate: float = 0.0002
    variants: Tuple[str, ...] = DEFAULT_VARIANTS
    devices: Tuple[str, ...] = ()
    device_samples: int = 20
    postprocess: PostprocessConfig = PostprocessConfig()
    min_map: Optional[float] = None
    max_map_drop: Optional[float] = 0.02
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> "DetectConfig":
        """From plain data; an unknown key, a wrong type or a bad value is one ConfigError."""
        cfg = from_plain(cls, data if data is not None else {}, "detect", ConfigError)
        cfg.validate()
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        return to_plain(self)

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (self.input_size, self.input_size, self.channels)

    def target_devices(self) -> Tuple[str, ...]:
        return self.devices or default_devices()

    def validate(self) -> None:
        """Raises ConfigError naming the first bad field and what it expects."""
        from models import FAMILIES
        from pipeline.devices.profiles import get_device

        self.data.validate()
        if self.input_size < 64 or self.channels not in (1, 3):
            raise ConfigError(f"detect: input_size must be >= 64 and channels 1 or 3; "
                              f"got {self.input_size} and {self.channels}")
        if self.family not in FAMILIES:
            raise ConfigError(f"detect.family: unknown family {self.family!r}; valid: {', '.join(FAMILIES)}")
        for name in ("epochs", "batch_size", "prune_epochs", "qat_epochs", "device_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detect.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("alpha", "learning_rate", "prune_learning_rate", "qat_learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"detect.{name}: must be > 0, got {getattr(self, name)}")
        if not 0 < self.prune_sparsity < 1:
            raise ConfigError(f"detect.prune_sparsity: must be in (0, 1), got {self.prune_sparsity}")
        for v in self.variants:
            if v not in DEFAULT_VARIANTS:
                raise ConfigError(f"detect.variants: unknown variant {v!r}; valid: {', '.join(DEFAULT_VARIANTS)}")
        if "float32" not in self.variants:
            raise ConfigError("detect.variants: float32 must be built (budgets and pictures compare with it)")
        for d in self.devices:
            get_device(d)  # ConfigError listing the valid devices
        if self.min_map is not None and not 0 <= self.min_map <= 1:
            raise ConfigError(f"detect.min_map: an mAP@0.5 in [0, 1], got {self.min_map}")
        if self.max_map_drop is not None and not 0 <= self.max_map_drop <= 1:
            raise ConfigError(f"detect.max_map_drop: a drop of mAP@0.5 in [0, 1], got {self.max_map_drop}")


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
        if cfg.min_map is not None and v.map_50 < cfg.min_map:
            out.append(f"{v.name}: mAP@0.5 {v.map_50:.3f} < min_map {cfg.min_map:.3f}")
        int8 = VARIANTS.get(v.name).number_format == "int8"
        if int8 and base is not None and cfg.max_map_drop is not None:
            drop = base.map_50 - v.map_50
            if drop > cfg.max_map_drop:
                out.append(f"{v.name}: mAP@0.5 {v.map_50:.3f} is {drop:.3f} under float32's {base.map_50:.3f} "
                           f"(max_map_drop {cfg.max_map_drop:.3f})")
    return tuple(out)


def _f(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def variant_table(result: DetectResult) -> Table:
    """Variant, size, sparsity, host mAP and, per device, loads / instructions / latency /
    agreement / device mAP@0.5."""
    devices = list(dict.fromkeys(d for v in result.variants for d in v.devices))
    headers = ["variant", "KiB", "sparsity", "mAP", "mAP@0.5"]
    for d in devices:
        headers += [f"{d} loads", f"{d} M instr", f"{d} est. ms", f"{d} agree", f"{d} mAP@0.5"]
    rows = []
    for v in result.variants:
        row = [v.name, f"{v.size_bytes / 1024:.1f}", f"{v.sparsity:.1%}", f"{v.map:.3f}", f"{v.map_50:.3f}"]
        for d in devices:
            m = v.devices.get(d)
            if m is None:
                row += ["-"] * 5
            elif not m.loaded:
                row += [("no", "bad"), "-", "-", "-", "-"]
            else:
                instr = None if m.instructions is None else m.instructions / 1e6
                agree = _f(m.agreement, ".1%") + ("" if m.host_detections is None else f" of {m.host_detections}")
                row += ["yes", _f(instr, ".2f"), _f(m.latency_ms, ".2f"), agree, _f(m.map_50, ".3f")]
        rows.append(row)
    return Table(headers, rows)


def stage_table(result: DetectResult) -> Table:
    rows = [[name, f"{s:.1f}"] for name, s in result.stage_seconds.items()]
    rows.append(["total", f"{sum(result.stage_seconds.values()):.1f}"])
    return Table(["stage", "wall s"], rows)


def report_markdown(result: DetectResult, pictures: Tuple[str, ...] = ()) -> str:
    """``report.md``: the variant table, budgets, stage times and the pictures' links."""
    cfg = result.config
    counts = ", ".join(f"{k} {n}" for k, n in result.counts.items())
    lines = [f"# Detection build: SSDLite {cfg.family} {cfg.alpha} at "
             f"{cfg.input_size}x{cfg.input_size}x{cfg.channels}", "",
             f"Data: {result.data_source} ({counts}); classes: {', '.join(result.labels)}.",
             f"Host mAP on the test split (COCO, pycocotools); device figures on the first "
             f"{cfg.device_samples} test images; agreement: the host's detections scoring >= 0.5 "
             f"that the device has too (same class, IoU >= {AGREEMENT_IOU}).",
             f"Dense float model (before pruning): mAP@0.5 {result.dense_map_50:.3f}.", "",
             *variant_table(result).markdown(), "", "## Budgets", ""]
    lines += [f"- missed: {f}" for f in result.budget_failures] or ["- all met"]
    lines += ["", "## Stage times", "", *stage_table(result).markdown()]
    if pictures:
        lines += ["", "## Detections: float32 (left) and the deploy variant (right)", ""]
        lines += [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def build_detector(cfg: DetectConfig, out: Path, log: Log = print) -> DetectResult:
    """Runs every stage of the detection build into ``out`` (see the module docstring).

    Returns:
        The result, also written as ``out/summary.json`` with ``out/report.md``. Missed
        budgets are in ``budget_failures`` (:meth:`DetectResult.check_budgets` raises).

    Raises:
        ConfigError / DataError: a bad config or data set (before any training).
        ConversionMismatchError: an exported variant disagrees with its Keras model.
        DeviceUnavailableError: the emulated devices cannot be run.
    """
    from pipeline.build.detect_stages import STAGES, Work

    cfg.validate()
    work = Work(cfg=cfg, out=Path(out), log=log)
    for name, run in STAGES:
        work.timed(name, run)
    return replace(work.result, stage_seconds=dict(work.seconds))

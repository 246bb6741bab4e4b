"""The typed figures of one build: written once by the build, read by everything after it.

``summary.json`` in a build directory is a :class:`BuildSummary` as JSON. Budgets,
the regression gate, the report, the bundle and the search read it through
:func:`load_summary` (or take the object the build returned); none of them re-parses
nested dicts or re-runs inference: evaluation saved its predictions
(:attr:`VariantSummary.predictions`) beside the model.

Every class round-trips: ``X.from_dict(x.to_dict()) == x``. ``from_dict`` rejects
missing and unknown keys with the path of the offending field, so a summary written
by another schema version is a clear error, not a ``KeyError`` deep in a report.

:class:`LatencyEstimate` is how every output (build log, report, model card,
``compare``, the CLI) shows an estimated latency with its provenance, so an
unvalidated one is marked alike everywhere.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

from pipeline.errors import DataError
from pipeline.plain import from_plain, to_plain


def predictions_path(tflite: Path) -> Path:
    """Where host evaluation (:func:`pipeline.export.evaluate.evaluate_tflite`) saves the
    predictions of ``tflite``: ``<variant>.pred.npy`` beside it."""
    tflite = Path(tflite)
    return tflite.with_name(f"{tflite.stem}.pred.npy")


def labels_path(predictions: Path) -> Path:
    """Where host evaluation saves the test labels (int64 ``.npy``, in test order):
    ``test_labels.npy`` beside the predictions, the same file for every variant."""
    return Path(predictions).with_name("test_labels.npy")


#: A fixed-length schedule whose last epoch beats every earlier one by less than this
#: (validation top-1 points) has reached the plateau of its decaying learning rate; by
#: more, it was still learning when it ended.
STILL_LEARNING_POINTS = 0.5


def still_learning(val_accuracy: Sequence[float], fixed: bool) -> bool:
    """Whether training ended while validation top-1 was still rising (more epochs would
    probably help): the last epoch is the best and, for a fixed-length schedule, beats
    every earlier one by at least :data:`STILL_LEARNING_POINTS`. A schedule cut short
    (``max_epochs`` or a time budget) on its best epoch never showed a plateau: any
    last-epoch best counts.

    Args:
        val_accuracy: validation top-1 per epoch, as fractions (as Keras logs them).
        fixed: the schedule ran its fixed number of epochs (``stopped == "fixed"``).
    """
    h = [float(v) for v in val_accuracy]
    if len(h) < 2 or h[-1] <= max(h[:-1]):
        return False
    return not fixed or (h[-1] - max(h[:-1])) * 100 >= STILL_LEARNING_POINTS


#: Bumped whenever a field is added, removed or changes meaning.
SCHEMA_VERSION = 1
SUMMARY_FILE = "summary.json"

T = TypeVar("T")
R = TypeVar("R", bound="Record")


class Record:
    """JSON round trip shared by every figure class: ``to_dict`` and a strict ``from_dict``."""

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able data (tuples become lists)."""
        return to_plain(self)

    @classmethod
    def from_dict(cls: Type[R], data: Any, where: str = "") -> R:
        """Builds the record from plain data.

        Raises:
            DataError: a missing or unknown field, or a value of the wrong type (the
                message names the field by its path from ``where``).
        """
        return from_plain(cls, data, where or cls.__name__, DataError)


@dataclass(frozen=True)
class InitWeights(Record):
    """The file a transferred model started from (``model.init``): where, its sha256,
    ``build`` or ``keras-applications``, and the model family it holds."""

    path: str
    sha256: str
    kind: str
    family: str


#: The stages that can make the float model, in the order a reader looks for them: the
#: choice between a transferred and a scratch model when both were trained, else the
#: fine-tune of a transferred model, else training from scratch.
FLOAT_STAGES = ("float-choice", "transfer-finetune", "train")


def float_stage_name(stages) -> str:
    """Which of :data:`FLOAT_STAGES` made the float model, given the stage names a manifest holds."""
    return next((name for name in FLOAT_STAGES if name in stages), "train")


@dataclass(frozen=True)
class FloatChoice(Record):
    """Transfer against scratch when a build trained both (``transfer.choose: best``):
    which was kept (``transfer`` or ``scratch``, the higher validation top-1, ties to
    ``transfer``) and each one's validation and test top-1 (percent)."""

    kept: str
    transfer_val_top1: float
    scratch_val_top1: float
    transfer_test_top1: float
    scratch_test_top1: float

    @property
    def margin(self) -> float:
        """Validation top-1 of the kept model less the other's (points, >= 0)."""
        return abs(self.transfer_val_top1 - self.scratch_val_top1)

    def line(self) -> str:
        other = "scratch" if self.kept == "transfer" else "transfer"
        return (f"Kept the {'transferred' if self.kept == 'transfer' else 'from-scratch'} float model: validation "
                f"top-1 {max(self.transfer_val_top1, self.scratch_val_top1):.2f}% against {other}'s "
                f"{min(self.transfer_val_top1, self.scratch_val_top1):.2f}% ({self.margin:+.2f} points; test top-1 "
                f"transfer {self.transfer_test_top1:.2f}%, scratch {self.scratch_test_top1:.2f}%).")


@dataclass(frozen=True)
class TensorIO(Record):
    """An input or output tensor of a ``.tflite`` file: dtype, shape and quantization."""

    dtype: str
    shape: Tuple[int, ...]
    scale: Tuple[float, ...] = ()
    zero_point: Tuple[int, ...] = ()


@dataclass(frozen=True)
class KernelRow(Record):
    """One conv/dense kernel of a ``.tflite`` file: zeros and distinct values per output channel."""

    layer: str
    op: str
    params: int
    zeros: float
    unique_per_channel: int


@dataclass(frozen=True)
class Validation(Record):
    """Conversion check of a variant against its Keras source on the validation images."""

    validation_max_abs_diff: float
    validation_agreement: float
    validation_samples: int
    size_bytes: int


@dataclass(frozen=True)
class VariantSummary(Record):
    """Host figures of one TFLite variant (see :func:`pipeline.export.evaluate.evaluate_tflite`).

    ``predictions`` is the path of the saved class predictions on the test split
    (``.npy``, int64), in test order, for confusion matrices and per-class figures.
    ``val_top1`` is the top-1 on the validation split, for choices that must not
    look at the test split (the search's finalists); None in summaries written
    before it was measured. ``source_top1`` is the test top-1 of the Keras model the
    variant was converted from (the trained or compressed float model; the QAT,
    CQAT or PCQAT model), so that conversion is judged against its own input; None
    where that stage recorded none, or in older summaries.
    """

    top1: float
    agreement_with_float: float
    size_bytes: int
    gzip_bytes: int
    zeros_prunable: float
    zeros_all_kernels: float
    max_unique_per_kernel: int
    kernels: Tuple[KernelRow, ...]
    input: TensorIO
    output: TensorIO
    ops: Tuple[str, ...]
    samples: int
    validation: Validation
    macs: int
    path: str
    chain: str
    predictions: str
    val_top1: Optional[float] = None
    source_top1: Optional[float] = None

    @property
    def integer_output(self) -> bool:
        """Whether the file's output tensor is integer (full-integer variants)."""
        return self.output.dtype in ("int8", "uint8")


#: The keys :func:`pipeline.latency.estimate.attach_latency` sets on a device result, which
#: are also the :class:`DeviceSummary` fields of its estimate (all None without one).
LATENCY_FIELDS = ("latency_ms", "latency_validated", "latency_model", "latency_cycles", "latency_ipc")
#: The table columns of :meth:`LatencyEstimate.cells`, in order, and their alignment.
LATENCY_HEADERS = ("est. latency ms", "M cycles (1 thread)", "IPC", "latency model")
LATENCY_ALIGN = "rrrl"
UNVALIDATED_MARK = "*"
UNVALIDATED_REASON = ("no published measurement of this core and numeric format was in the latency "
                      "model's fit or its check (docs/latency.md)")
#: The footnote of a table whose latency column holds an :data:`UNVALIDATED_MARK` (worded
#: so that Markdown shows the mark as it is, not as a list item or emphasis).
UNVALIDATED_NOTE = f"Latencies marked {UNVALIDATED_MARK} are unvalidated: {UNVALIDATED_REASON}."


def _num(value: Optional[float], fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, fmt)


@dataclass(frozen=True)
class LatencyEstimate:
    """An estimated latency and its provenance, as every human-readable output shows it.

    Attributes:
        ms: milliseconds per inference at the build's threads (None: no estimate).
        validated: whether published measurements of this core and numeric format were
            in the latency model's fit or its check (None: not recorded, e.g. a summary
            written before it was).
        model: the pipeline model that estimated it ("llvm-mca neoverse-n1 + memory").
        cycles: cycles of one inference on one thread.
        ipc: instructions per cycle.
    """

    ms: Optional[float] = None
    validated: Optional[bool] = None
    model: Optional[str] = None
    cycles: Optional[float] = None
    ipc: Optional[float] = None

    @classmethod
    def of(cls, figures: Any) -> "LatencyEstimate":
        """The estimate of an object with the :data:`LATENCY_FIELDS` attributes (a device result)."""
        return cls(*(getattr(figures, k) for k in LATENCY_FIELDS))

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> "LatencyEstimate":
        """The estimate :func:`pipeline.latency.estimate.attach_latency` added to a result dict."""
        return cls(*(result[k] for k in LATENCY_FIELDS))

    @property
    def unvalidated(self) -> bool:
        """Whether the figure carries :data:`UNVALIDATED_MARK`: an estimate known to be unvalidated."""
        return self.ms is not None and self.validated is False

    def cells(self) -> Tuple[str, str, str, str]:
        """The :data:`LATENCY_HEADERS` cells ("-" where missing; an unvalidated latency marked)."""
        mark = UNVALIDATED_MARK if self.unvalidated else ""
        return (_num(self.ms, ".2f") + mark, _num(self.cycles, ",.3f", 1e-6), _num(self.ipc, ".2f"),
                self.model or "-")

    @property
    def verdict(self) -> str:
        """Whether the estimate is validated, in words: ``validated``, ``UNVALIDATED: <why>``
        or ``validation not recorded``."""
        return {True: "validated", False: f"UNVALIDATED: {UNVALIDATED_REASON}",
                None: "validation not recorded"}[self.validated]

    def text(self) -> str:
        """One line for logs and the CLI: the latency, its model, cycles, IPC and whether it is validated."""
        if self.ms is None:
            return "n/a (no latency model for this device)"
        return (f"{self.ms:.2f} ms ({self.model or 'model not recorded'}: {_num(self.cycles, ',.0f')} cycles "
                f"on 1 thread, IPC {_num(self.ipc, '.2f')}; {self.verdict})")


def unvalidated_note(estimates: Iterable[LatencyEstimate]) -> Optional[str]:
    """:data:`UNVALIDATED_NOTE` when any of ``estimates`` is marked, else None (the footnote of a table)."""
    return UNVALIDATED_NOTE if any(e.unvalidated for e in estimates) else None


@dataclass(frozen=True)
class MeasuredLatency(Record):
    """The deploy variant timed on the real device of a ``PROFILE@ssh://...`` or
    ``PROFILE@adb://...`` entry (:mod:`pipeline.devices.remote`), beside the profile's estimate.

    Times are of single inferences in milliseconds: ``mean_ms`` over ``runs`` timed runs
    after ``warmup`` untimed ones, ``std_ms`` their standard deviation. A model the
    device's runtime refuses has ``loaded`` False, its ``verdict``, and no times.
    """

    target: str
    loaded: bool
    verdict: str
    runtime: str
    threads: int
    runs: int
    warmup: int
    mean_ms: Optional[float] = None
    std_ms: Optional[float] = None
    min_ms: Optional[float] = None
    max_ms: Optional[float] = None
    device: Optional[str] = None
    top1: Optional[float] = None
    outputs_agree: Optional[bool] = None
    measured_at: str = ""

    @property
    def basis(self) -> str:
        """How a latency verdict names this figure: ``measured on <target>``."""
        return f"measured on {self.target}"

    def text(self) -> str:
        """One line: mean, spread, runs and where (or why there is no time)."""
        if not self.loaded or self.mean_ms is None:
            return f"not measured on {self.target}: {self.verdict}"
        return (f"{self.mean_ms:.2f} ms (std {_num(self.std_ms, '.2f')} ms, {self.runs} runs, {self.threads} "
                f"thread{'s' if self.threads != 1 else ''}, {self.runtime}) {self.basis}")


#: The column of a measured latency, beside :data:`LATENCY_HEADERS`' estimate.
MEASURED_HEADER = "measured ms"


def measured_cell(figures: Any) -> str:
    """The measured-latency cell of a device result: ``mean ± std`` ms, ``not loadable``, or ``-``."""
    m = figures.measured
    if m is None:
        return "-"
    if m.mean_ms is None:
        return "not loadable"
    return f"{m.mean_ms:.2f} ± {_num(m.std_ms, '.2f')}"


@dataclass(frozen=True)
class DeviceSummary(Record):
    """What one variant did on one emulated device (see :mod:`pipeline.build.matrix`).

    The ``latency_*`` fields (:data:`LATENCY_FIELDS`) are estimated afresh each build
    from the recorded run; they are None in summaries written before they existed.
    ``measured`` is the latency measured on the real device the entry names, if any.
    """

    loaded: bool
    runtime: str
    load_error: Optional[str] = None
    load_error_op: Optional[str] = None
    load_error_op_version: Optional[int] = None
    top1: Optional[float] = None
    instructions_per_inference: Optional[int] = None
    instructions_by_class: Dict[str, int] = field(default_factory=dict)
    output_dtype: Optional[str] = None
    exact_fraction: Optional[float] = None
    max_abs_diff: Optional[float] = None
    top1_agreement: Optional[float] = None
    peak_memory_bytes: Optional[int] = None
    fits_ram: Optional[bool] = None
    wall_s_per_image: Optional[float] = None
    samples: Optional[int] = None
    latency_ms: Optional[float] = None
    threads: Optional[int] = None
    latency_validated: Optional[bool] = None
    latency_model: Optional[str] = None
    latency_cycles: Optional[float] = None
    latency_ipc: Optional[float] = None
    measured: Optional[MeasuredLatency] = None  # entries that name a real device; None in older summaries

    @property
    def latency(self) -> LatencyEstimate:
        """The estimated latency with its provenance."""
        return LatencyEstimate.of(self)

    @property
    def integer_output(self) -> bool:
        """Whether the output is integer and compared bit for bit with the host's."""
        return self.output_dtype in ("int8", "uint8") and self.exact_fraction is not None


@dataclass(frozen=True)
class BudgetResult(Record):
    """One budget verdict as recorded in the summary (:class:`pipeline.gate.budgets.BudgetCheck`)."""

    budget: str
    subject: str
    limit: float
    measured: Optional[float]
    unit: str
    ok: bool
    unvalidated: bool = False  # the measured value is an unvalidated latency estimate
    basis: Optional[str] = None  # a latency's: "measured on <target>" or "estimated"; None for other budgets

    @property
    def direction(self) -> str:
        """``max`` or ``min``: every budget name says which (``max_size_kb``, ``min_top1``)."""
        return "max" if self.budget.startswith("max") else "min"


@dataclass(frozen=True)
class BuildSummary(Record):
    """Every figure of one build.

    Attributes:
        recipe: the build's name (``default``, ``default-smoke``).
        float_top1: test top-1 of the float Keras model, percent.
        float_val_top1: its validation top-1 (None in summaries from before it was recorded).
        params, macs: of the float model.
        labels: class names, in class-index order.
        variants: every converted variant, in recipe order.
        devices: ``{device: {variant: result}}``; empty when built without devices.
        budgets: every budget verdict of the recipe.
        stages_run: the stages this build ran (not cached), in order.
        init: the weights the float model started from, or None (trained from scratch).
        float_choice: transfer against scratch, when the build trained both; else None.
    """

    recipe: str
    float_top1: float
    params: int
    macs: int
    deploy_variant: str
    labels: Tuple[str, ...]
    variants: Dict[str, VariantSummary]
    devices: Dict[str, Dict[str, DeviceSummary]] = field(default_factory=dict)
    float_val_top1: Optional[float] = None
    budgets: Tuple[BudgetResult, ...] = ()
    stages_run: Tuple[str, ...] = ()
    init: Optional[InitWeights] = None
    float_choice: Optional[FloatChoice] = None
    schema_version: int = SCHEMA_VERSION

    def device(self, device: str, variant: Optional[str] = None) -> Optional[DeviceSummary]:
        """The result of ``variant`` (default: the deploy variant) on ``device``, or None."""
        return self.devices.get(device, {}).get(variant or self.deploy_variant)

    @property
    def latency_note(self) -> Optional[str]:
        """:data:`UNVALIDATED_NOTE` when a device latency of this build carries the mark, else None."""
        return unvalidated_note(m.latency for per in self.devices.values() for m in per.values())

    @property
    def budgets_ok(self) -> bool:
        return all(b.ok for b in self.budgets)

    @classmethod
    def from_dict(cls, data: Any, where: str = "summary") -> "BuildSummary":
        """As :meth:`Record.from_dict`; a summary of another schema version is a DataError.

        A summary with no ``schema_version`` at all was written before summaries had
        one; it holds the same figures without the saved predictions, and is read as
        version 1 with empty ``predictions`` paths (no confusion matrix for it).
        """
        if isinstance(data, Mapping) and "schema_version" not in data:
            data = _unversioned(data)
        if isinstance(data, Mapping) and data.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"{where}: schema_version {data.get('schema_version')!r} is not the "
                            f"supported {SCHEMA_VERSION} (rebuild to refresh it)")
        return from_plain(cls, data, where, DataError)


def _unversioned(data: Mapping[str, Any]) -> Dict[str, Any]:
    """A summary from before schema versions, as version 1 (predictions were not saved then)."""
    variants = data.get("variants")
    if isinstance(variants, Mapping):
        variants = {name: ({"predictions": "", **v} if isinstance(v, Mapping) else v)
                    for name, v in variants.items()}
    return {**data, "variants": variants, "schema_version": SCHEMA_VERSION}


def write_summary(summary: BuildSummary, root: Path) -> Path:
    """Writes ``root/summary.json`` atomically; returns its path."""
    from pipeline.store.atomic import atomic_write_json

    path = Path(root) / SUMMARY_FILE
    atomic_write_json(path, summary.to_dict())
    return path


def load_summary(root: Union[str, Path]) -> BuildSummary:
    """Reads the :class:`BuildSummary` of the build in directory ``root`` (or of the
    ``summary.json`` file ``root``).

    Raises:
        DataError: no summary (the build did not finish), not JSON, or another schema.
    """
    root = Path(root)
    path = root if root.is_file() else root / SUMMARY_FILE
    if not path.is_file():
        raise DataError(f"{root}: no {SUMMARY_FILE} (not a finished build directory)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON summary ({exc})") from None
    return BuildSummary.from_dict(data, f"{path}: summary")

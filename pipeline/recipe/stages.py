"""Recipe sections of what is done to the trained model and where it runs: ``prune``,
``qat``, ``cluster``, ``search``, ``convert`` and ``devices``."""

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from models import MIN_INPUT_SIZE
from pipeline import vocabulary
from pipeline.errors import ConfigError
from pipeline.recipe.checks import (AUTO, check_bool, check_choice, check_choices, check_epochs,
                                    check_non_negative_int, check_positive_int, check_positive_number)
from pipeline.recipe.targets import DeviceEntry, parse_entry
from pipeline.recipe.training import MODEL_FAMILIES
from pipeline.variants import DEFAULT_VARIANTS
from pipeline.variants import VARIANTS as VARIANT_REGISTRY

VARIANTS = tuple(VARIANT_REGISTRY.names())
# tfmot's CentroidInitialization names, lower-case.
CLUSTER_INITS = ("kmeans_plus_plus", "linear", "random", "density_based")
#: ``search.space``: the grid of hand-designed candidates, or block-level genotypes.
SEARCH_SPACES = ("grid", "blocks")
# channels+unstructured: the thinned model is then magnitude-pruned to target_sparsity (or m_by_n).
PRUNE_STRUCTURES = ("unstructured", "channels", "channels+unstructured")
CHANNEL_CRITERIA = tuple(vocabulary.CHANNEL_CRITERIA.names())
# Keys only channel pruning reads (the unstructured prune stage's cache key leaves them out).
CHANNEL_KEYS = ("structure", "target_macs", "target_latency_ms", "target_device", "criterion", "step")


@dataclass(frozen=True)
class PruneConfig:
    """Pruning, then strip: ``structure`` says what is removed.

    ``unstructured``: magnitude pruning of single weights (polynomial decay to
    ``target_sparsity``, or ``m_by_n``). ``channels``: whole channels are removed
    (:mod:`pipeline.compress.structured`) until a target is met: ``target_macs`` (the
    fraction of the float model's MACs to keep) or ``target_latency_ms`` (estimated
    int8 latency on ``target_device``); ``step`` is the fraction of the starting cost
    each schedule step removes, ``criterion`` ranks channels within a layer.
    ``channels+unstructured``: channels first, then magnitude pruning of the thinned
    model (both fine-tunes run ``epochs``), and QAT keeps its zeros (PQAT).
    """

    enabled: bool = False
    target_sparsity: float = 0.5
    m_by_n: Optional[Tuple[int, int]] = None
    epochs: Any = AUTO  # or a number; auto: from the float epochs (pipeline.train.schedule)
    learning_rate: float = 1e-3
    structure: str = "unstructured"
    target_macs: Optional[float] = None
    target_latency_ms: Optional[float] = None
    target_device: Optional[str] = None
    criterion: str = "l1_bn"
    step: float = 0.05

    @property
    def unstructured(self) -> bool:
        """Whether single weights are pruned (zeros kept by PQAT/PCQAT downstream)."""
        return self.enabled and self.structure in ("unstructured", "channels+unstructured")

    @property
    def channels(self) -> bool:
        """Whether whole channels are pruned (a thinner model downstream)."""
        return self.enabled and self.structure in ("channels", "channels+unstructured")

    def validate(self, where: str) -> None:
        check_bool(where, "enabled", self.enabled)
        check_choice(where, "structure", self.structure, PRUNE_STRUCTURES)
        check_choice(where, "criterion", self.criterion, CHANNEL_CRITERIA)
        if not isinstance(self.step, (int, float)) or isinstance(self.step, bool) or not 0 < self.step < 1:
            raise ConfigError(f"{where}.step: expected 0 < value < 1, got {self.step!r}")
        if self.structure.startswith("channels"):
            targets = [k for k in ("target_macs", "target_latency_ms") if getattr(self, k) is not None]
            if len(targets) != 1:
                raise ConfigError(f"{where}: structure channels needs exactly one of target_macs "
                                  f"(fraction of MACs kept) or target_latency_ms, got {targets or 'none'}")
            if self.target_macs is not None and (isinstance(self.target_macs, bool) or not isinstance(
                    self.target_macs, (int, float)) or not 0 < self.target_macs < 1):
                raise ConfigError(f"{where}.target_macs: expected 0 < value < 1, got {self.target_macs!r}")
            if self.target_latency_ms is not None:
                check_positive_number(where, "target_latency_ms", self.target_latency_ms)
                if not isinstance(self.target_device, str):
                    raise ConfigError(f"{where}.target_device: a latency target needs a device name, "
                                      f"got {self.target_device!r}")
        if not 0.0 < self.target_sparsity < 1.0:
            raise ConfigError(f"{where}.target_sparsity: expected 0 < value < 1, "
                              f"got {self.target_sparsity!r}")
        if self.m_by_n is not None and (
            len(self.m_by_n) != 2 or not all(isinstance(v, int) and v > 0 for v in self.m_by_n)
            or self.m_by_n[0] >= self.m_by_n[1]
        ):
            raise ConfigError(f"{where}.m_by_n: expected [M, N] with 0 < M < N (e.g. [2, 4]), "
                              f"got {list(self.m_by_n)!r}")
        check_epochs(where, "epochs", self.epochs)
        check_positive_number(where, "learning_rate", self.learning_rate)


@dataclass(frozen=True)
class QatConfig:
    """Quantization-aware training; prune-preserving when the prune stage ran."""

    enabled: bool = True
    epochs: Any = AUTO  # or a number; auto: from the float epochs (pipeline.train.schedule)
    learning_rate: float = 5e-4

    def validate(self, where: str) -> None:
        check_bool(where, "enabled", self.enabled)
        check_epochs(where, "epochs", self.epochs)
        check_positive_number(where, "learning_rate", self.learning_rate)


@dataclass(frozen=True)
class ClusterConfig:
    """Weight clustering (weight sharing) of Conv2D/Dense kernels, then strip.

    Used by the ``int8-cqat`` (cluster -> CQAT) and ``int8-pcqat`` (prune ->
    sparsity-preserving cluster -> PCQAT) variants; ``enabled`` must be true for
    them and is an error without them. ``clusters`` centroids per kernel (per output
    channel of Conv2D kernels with ``per_channel``), initialised by ``init``
    (tfmot's CentroidInitialization), fine-tuned ``epochs`` at ``learning_rate``.
    """

    enabled: bool = False
    clusters: int = 16
    init: str = "kmeans_plus_plus"
    per_channel: bool = False
    epochs: int = 1
    learning_rate: float = 1e-4

    def validate(self, where: str) -> None:
        check_bool(where, "enabled", self.enabled)
        if isinstance(self.clusters, bool) or not isinstance(self.clusters, int) or self.clusters < 2:
            raise ConfigError(f"{where}.clusters: expected an integer >= 2, got {self.clusters!r}")
        check_choice(where, "init", self.init, CLUSTER_INITS)
        check_bool(where, "per_channel", self.per_channel)
        check_positive_int(where, "epochs", self.epochs)
        check_positive_number(where, "learning_rate", self.learning_rate)


@dataclass(frozen=True)
class SearchConfig:
    """The space and schedule of ``mobile-model search`` (device-aware model search).

    Attributes:
        families, alphas, input_sizes: the space (every combination is a candidate).
        trials: candidates the search looks at (each costs an emulated run, once per
            architecture; only those within the budgets are trained).
        proxy_epochs: float training epochs of the proxy schedule.
        proxy_train_samples: training images of the proxy schedule (0: the recipe's).
        finalists: best proxy candidates that get the full recipe.
        space: ``grid`` (the family x width x input size candidates above) or
            ``blocks`` (block-level genotypes, :mod:`pipeline.search.blockspace`, at
            ``input_sizes``, with the grid's hand-designed candidates as named points).
        time_budget_s: wall seconds of the whole ``blocks`` search, finalists and
            chosen build included: a trial starts only when it and their estimated
            time fit (0: no limit; :mod:`pipeline.search.blockstudy`).
        rungs, reduction: successive halving of the ``blocks`` space: rung ``r``
            trains ``proxy_epochs x reduction**r`` epochs, and a candidate goes on to
            the next rung only when it is in the best ``1/reduction`` of its rung.
        concurrency: trials the search keeps running at once (each a job of a pool:
            worker processes here, or Ray tasks on a cluster). 1: one trial at a time,
            asked and told in order, so the search chooses as on this machine.
    """

    families: Tuple[str, ...] = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small")
    alphas: Tuple[float, ...] = (0.25, 0.35, 0.5, 0.75, 1.0)
    input_sizes: Tuple[int, ...] = (32, 48, 64)
    trials: int = 20
    proxy_epochs: int = 1
    proxy_train_samples: int = 0
    finalists: int = 2
    space: str = "grid"
    time_budget_s: float = 0.0
    rungs: int = 2
    reduction: int = 3
    concurrency: int = 1

    def validate(self, where: str) -> None:
        check_choices(where, "families", self.families, MODEL_FAMILIES)
        check_choice(where, "space", self.space, SEARCH_SPACES)
        if (isinstance(self.time_budget_s, bool) or not isinstance(self.time_budget_s, (int, float))
                or not 0 <= self.time_budget_s < float("inf")):
            raise ConfigError(f"{where}.time_budget_s: expected seconds >= 0 (0: no limit), "
                              f"got {self.time_budget_s!r}")
        if self.time_budget_s and self.space != "blocks":
            raise ConfigError(f"{where}.time_budget_s: applies to space: blocks (the grid's trials "
                              f"count candidates); got space: {self.space}")
        check_positive_int(where, "rungs", self.rungs)
        check_positive_int(where, "reduction", self.reduction)
        if self.reduction < 2:
            raise ConfigError(f"{where}.reduction: expected an integer >= 2, got {self.reduction!r}")
        if not self.alphas:
            raise ConfigError(f"{where}.alphas: expected at least one width multiplier")
        for a in self.alphas:
            check_positive_number(where, "alphas", a)
        if not self.input_sizes:
            raise ConfigError(f"{where}.input_sizes: expected at least one input size")
        for size in self.input_sizes:
            if isinstance(size, bool) or not isinstance(size, int) or size < MIN_INPUT_SIZE:
                raise ConfigError(f"{where}.input_sizes: expected integers >= {MIN_INPUT_SIZE} "
                                  f"(the smallest input every model family takes), got {size!r}")
        check_positive_int(where, "trials", self.trials)
        check_positive_int(where, "proxy_epochs", self.proxy_epochs)
        check_non_negative_int(where, "proxy_train_samples", self.proxy_train_samples, " (0: the recipe's)")
        check_positive_int(where, "finalists", self.finalists)
        check_positive_int(where, "concurrency", self.concurrency)
        for key in ("alphas", "input_sizes"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ConfigError(f"{where}.{key}: duplicate entries in {list(values)}")


@dataclass(frozen=True)
class ConvertConfig:
    """TFLite variants to produce and how integer models are fed."""

    variants: Tuple[str, ...] = DEFAULT_VARIANTS
    int8_io: bool = False
    calibration_samples: int = 200
    validation_samples: int = 64

    def validate(self, where: str) -> None:
        check_choices(where, "variants", self.variants, VARIANTS)
        check_bool(where, "int8_io", self.int8_io)
        check_positive_int(where, "calibration_samples", self.calibration_samples)
        check_positive_int(where, "validation_samples", self.validation_samples)


@dataclass(frozen=True)
class RemoteConfig:
    """How the real devices of ``devices.targets`` (``PROFILE@ssh://...``, ``PROFILE@adb://...``)
    are measured: the deploy variant, ``runs`` timed inferences after ``warmup`` untimed ones,
    at ``devices.threads`` threads.

    Attributes:
        identity: the private key for ssh targets (``ssh -i``; ``~`` expands); None: ssh's default keys.
        remote_python: the board's python (it needs numpy and ai-edge-litert or tflite-runtime).
        benchmark_model: TFLite's benchmark_model for adb targets; None: the one remembered
            by ``device run --benchmark-model``.
    """

    identity: Optional[str] = None
    remote_python: str = "python3"
    benchmark_model: Optional[str] = None
    runs: int = 50
    warmup: int = 5

    def validate(self, where: str) -> None:
        for key in ("identity", "benchmark_model"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}.{key}: expected a file path, got {value!r}")
        if not isinstance(self.remote_python, str) or not self.remote_python:
            raise ConfigError(f"{where}.remote_python: expected the board's python (e.g. python3), "
                              f"got {self.remote_python!r}")
        check_positive_int(where, "runs", self.runs)
        check_non_negative_int(where, "warmup", self.warmup, "")


@dataclass(frozen=True)
class DevicesConfig:
    """Target devices and how many test images each runs.

    ``targets`` entries are emulated profiles (``rpi4``) or a profile and the real device
    it stands for (``rpi4@ssh://pi@camera-7``, ``pixel4@adb://SERIAL``): such an entry runs
    the emulated profile and measures the deploy variant on the device (``remote``).
    """

    targets: Tuple[str, ...] = ()
    samples: int = 100
    threads: int = 1
    workers: int = 2
    remote: RemoteConfig = field(default_factory=RemoteConfig)

    def validate(self, where: str) -> None:
        entries = [parse_entry(t, f"{where}.targets") for t in self.targets]
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"{where}.targets: duplicate entries in {list(self.targets)}")
        check_positive_int(where, "samples", self.samples)
        check_positive_int(where, "threads", self.threads)
        check_positive_int(where, "workers", self.workers)
        self.remote.validate(f"{where}.remote")
        if self.remote != RemoteConfig() and not any(e.target for e in entries):
            raise ConfigError(f"{where}.remote: applies to real devices, and no targets entry names one "
                              f"(PROFILE@ssh://[USER@]HOST[:PORT] or PROFILE@adb://SERIAL)")
        if self.remote.warmup < 1 and any(e.target and e.target.url().startswith("adb://") for e in entries):
            raise ConfigError(f"{where}.remote.warmup: an adb target's benchmark_model always runs at least one "
                              f"warm-up inference: expected 1 or more, got {self.remote.warmup}")

    @property
    def entries(self) -> Tuple[DeviceEntry, ...]:
        """Every ``targets`` entry, parsed."""
        return tuple(parse_entry(t) for t in self.targets)

    @property
    def profiles(self) -> Tuple[str, ...]:
        """The emulated profiles the entries name, each once, in order."""
        return tuple(dict.fromkeys(e.profile for e in self.entries))

"""Recipes: frozen, validated configuration of one build.

A recipe is YAML that loads into :class:`Recipe`, a tree of frozen dataclasses.
Loading is strict: an unknown key is an error naming the key and the valid keys;
a bad value is an error naming the key, what is allowed and what was received.
``Recipe.to_dict()`` round-trips through ``Recipe.from_dict()``.

Every recipe has a *smoke* form (:meth:`Recipe.smoke`): tiny input, few samples,
one epoch, used by tests and ``build --smoke``.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import models
from pipeline import vocabulary
from pipeline.errors import ConfigError
from pipeline.plain import from_plain, to_plain
from pipeline.store.atomic import config_hash
from pipeline.variants import DEFAULT_VARIANTS, SOURCES
from pipeline.variants import VARIANTS as VARIANT_REGISTRY

VARIANTS = tuple(VARIANT_REGISTRY.names())

MODEL_FAMILIES = tuple(models.FAMILIES)
#: The family of block-level architectures: ``model.genotype`` describes the network.
GENOTYPE_FAMILY = "mbconv"
DATASET_NAMES = tuple(vocabulary.DATASETS.names())
STRATEGIES = ("default", "mirrored", "multi-worker")
FIT_MODES = tuple(vocabulary.FIT_MODES.names())
# tfmot's CentroidInitialization names, lower-case.
CLUSTER_INITS = ("kmeans_plus_plus", "linear", "random", "density_based")
#: ``epochs: auto``: train until validation top-1 stops improving (see TrainConfig).
AUTO = "auto"
CLASS_WEIGHTS = ("none", "balanced")
#: ``search.space``: the grid of hand-designed candidates, or block-level genotypes.
SEARCH_SPACES = ("grid", "blocks")
#: Float epochs on the synthetic ``shapes`` set when the recipe leaves ``train.epochs``
#: unset: its hand-tuned schedule (shapes is easy and rendered afresh, so auto buys little).
SHAPES_EPOCHS = 4


#: Budgets the smoke form leaves out: accuracy floors a one-epoch model cannot meet.
SMOKE_DROPPED_BUDGETS = ("min_top1", "min_device_top1")


@dataclass(frozen=True)
class DataConfig:
    """Which data set to use and how many samples of each split.

    ``None`` for a sample count means "all available" (the default; the generated
    ``shapes`` set, whose supply is unlimited, renders 3000/500/1000). ``train_per_class``: keep
    only N training images of each class (few-shot; drawn from the seed, the
    validation and test splits unchanged), or None for all.
    """

    dataset: str = "shapes"
    path: Optional[str] = None
    train_samples: Optional[int] = None
    val_samples: Optional[int] = None
    test_samples: Optional[int] = None
    fit: str = "resize"
    train_per_class: Optional[int] = None

    def validate(self, where: str) -> None:
        _choice(where, "dataset", self.dataset, DATASET_NAMES)
        _choice(where, "fit", self.fit, FIT_MODES)
        for name in ("train_samples", "val_samples", "test_samples", "train_per_class"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(where, name, value)
        if self.dataset == "folder" and not self.path:
            raise ConfigError(f"{where}.path: the 'folder' data set needs a path to a directory "
                              "with one sub-folder per class")


@dataclass(frozen=True)
class ModelConfig:
    """Model family, width multiplier and input geometry.

    ``init``: weights to start from (:mod:`pipeline.train.transfer`): a build
    directory of this tool (its float model), or a Keras-applications MobileNet
    ``.h5`` weights file; None trains from random weights.

    ``genotype``: with ``family: mbconv`` (:data:`GENOTYPE_FAMILY`), the block-level
    architecture (:class:`models.genotype.Genotype`, as its ``to_dict`` writes it):
    stem, stages (kernel, expand, depth, width, se, act, stride), head. Its widths
    are absolute, so ``alpha`` must be 1.
    """

    family: str = "mobilenet_v2"
    alpha: float = 0.35
    input_size: int = 32
    channels: int = 1
    first_stride: int = 1
    dropout: float = 0.0
    init: Optional[str] = None
    genotype: Optional[Dict[str, Any]] = None

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (self.input_size, self.input_size, self.channels)

    def validate(self, where: str) -> None:
        _choice(where, "family", self.family, MODEL_FAMILIES + (GENOTYPE_FAMILY,))
        _positive_number(where, "alpha", self.alpha)
        if self.family == GENOTYPE_FAMILY:
            from models.genotype import Genotype

            if self.genotype is None:
                raise ConfigError(f"{where}.genotype: family {GENOTYPE_FAMILY} needs a genotype (stem, stages, "
                                  "head; see docs/search.md)")
            try:
                Genotype.from_dict(self.genotype)
            except ValueError as e:
                raise ConfigError(f"{where}.genotype: {e}") from None
            if self.alpha != 1:
                raise ConfigError(f"{where}.alpha: a genotype's widths are absolute; set alpha to 1 "
                                  f"(got {self.alpha!r})")
        elif self.genotype is not None:
            raise ConfigError(f"{where}.genotype: only family {GENOTYPE_FAMILY} takes a genotype "
                              f"(family is {self.family})")
        if not isinstance(self.input_size, int) or self.input_size < 32:
            raise ConfigError(f"{where}.input_size: expected an integer >= 32, got {self.input_size!r}")
        _choice(where, "channels", self.channels, (1, 3))
        _choice(where, "first_stride", self.first_stride, (1, 2))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: expected 0 <= dropout < 1, got {self.dropout!r}")
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise ConfigError(f"{where}.init: expected a path (a build directory or an .h5 weights file) "
                              f"or null, got {self.init!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation of training images (:mod:`pipeline.data.augment`).

    Each epoch draws a new transform per image from the recipe seed: random shift
    (fraction of the size), zoom (+- fraction), rotation (+- degrees), brightness
    (+- added offset, images in [0, 1]) and contrast (+- fraction, about the image
    mean). ``hflip`` mirrors half the images; off by default because it turns
    digits and text into other symbols. ``enabled: false`` trains on the images as
    they are.
    """

    enabled: bool = True
    shift: float = 0.1
    zoom: float = 0.1
    rotation: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False

    def validate(self, where: str) -> None:
        _bool(where, "enabled", self.enabled)
        _bool(where, "hflip", self.hflip)
        for key, high in (("shift", 0.5), ("zoom", 0.5), ("rotation", 180.0), ("brightness", 1.0),
                          ("contrast", 1.0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise ConfigError(f"{where}.{key}: expected a number from 0 to {high:g}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Float training: Adam, linear warm-up then cosine decay, optional label smoothing.

    ``epochs``: a number of epochs, or ``auto``: train until validation top-1 has not
    improved for ``patience`` epochs, then restore the weights of the best epoch; at
    least ``min_epochs`` (a small model can sit at chance for its first epochs), at
    most ``max_epochs`` epochs and, when set, ``time_budget_s`` seconds (an epoch
    that would end past the budget is not started). Left unset, it is auto, except
    on the synthetic ``shapes`` set (:data:`SHAPES_EPOCHS`). Under ``auto`` the
    cosine schedule spans ``max_epochs``; with ``time_budget_s`` its end moves, after
    each epoch, to the last epoch the budget leaves room for.

    ``warmup_epochs``: the learning rate rises linearly from 0 over these epochs
    (at most a fifth of the run). ``label_smoothing``: 0 for none. ``class_weight``:
    ``balanced`` weighs each class's loss by total / (classes x class count).
    """

    epochs: Any = None  # int, "auto", or None (by data set)
    max_epochs: int = 20
    min_epochs: int = 8
    patience: int = 5
    time_budget_s: Optional[float] = None
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    class_weight: str = "none"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    strategy: str = "default"
    logical_devices: int = 0

    def validate(self, where: str) -> None:
        _epochs(where, "epochs", self.epochs, unset_ok=True)
        _positive_int(where, "max_epochs", self.max_epochs)
        _positive_int(where, "min_epochs", self.min_epochs)
        _positive_int(where, "patience", self.patience)
        if self.time_budget_s is not None:
            _positive_number(where, "time_budget_s", self.time_budget_s)
        _positive_int(where, "batch_size", self.batch_size)
        _positive_number(where, "learning_rate", self.learning_rate)
        _non_negative_int(where, "warmup_epochs", self.warmup_epochs)
        if isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float)) \
                or not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{where}.label_smoothing: expected a number from 0 to below 1, "
                              f"got {self.label_smoothing!r}")
        _choice(where, "class_weight", self.class_weight, CLASS_WEIGHTS)
        self.augment.validate(f"{where}.augment")
        _choice(where, "strategy", self.strategy, STRATEGIES)
        _non_negative_int(where, "logical_devices", self.logical_devices)

    def epochs_for(self, dataset: str):
        """The schedule asked for: a number of epochs, or ``"auto"``."""
        if self.epochs is None:
            return SHAPES_EPOCHS if dataset == "shapes" else AUTO
        return self.epochs


# channels+unstructured: the thinned model is then magnitude-pruned to target_sparsity (or m_by_n).
@dataclass(frozen=True)
class TransferConfig:
    """How a model that starts from ``model.init`` is trained (:mod:`pipeline.train.finetune`).

    Two phases, each a cached stage: ``head`` trains only the layers the start
    file did not provide (the new classifier) with the rest frozen, batch-norm
    statistics included; ``finetune`` then trains the top ``finetune_blocks`` blocks
    (``all``: every layer) plus the head at a lower learning rate, batch norm
    frozen unless ``finetune_batchnorm``. Epochs: a number, or ``auto`` (train
    until validation top-1 stops improving, as ``train.epochs: auto``; at most
    ``train.max_epochs``). Batch size, augmentation, label smoothing and class
    weights are ``train``'s.
    """

    head_epochs: Any = 10
    head_learning_rate: float = 3e-3
    finetune_epochs: Any = 10
    finetune_learning_rate: float = 3e-4
    finetune_blocks: Any = "all"
    finetune_batchnorm: bool = False

    def validate(self, where: str) -> None:
        _epochs(where, "head_epochs", self.head_epochs)
        _epochs(where, "finetune_epochs", self.finetune_epochs)
        _positive_number(where, "head_learning_rate", self.head_learning_rate)
        _positive_number(where, "finetune_learning_rate", self.finetune_learning_rate)
        if self.finetune_blocks != "all":
            _positive_int(where, "finetune_blocks", self.finetune_blocks)
        _bool(where, "finetune_batchnorm", self.finetune_batchnorm)


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
        _bool(where, "enabled", self.enabled)
        _choice(where, "structure", self.structure, PRUNE_STRUCTURES)
        _choice(where, "criterion", self.criterion, CHANNEL_CRITERIA)
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
                _positive_number(where, "target_latency_ms", self.target_latency_ms)
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
        _epochs(where, "epochs", self.epochs)
        _positive_number(where, "learning_rate", self.learning_rate)


@dataclass(frozen=True)
class QatConfig:
    """Quantization-aware training; prune-preserving when the prune stage ran."""

    enabled: bool = True
    epochs: Any = AUTO  # or a number; auto: from the float epochs (pipeline.train.schedule)
    learning_rate: float = 5e-4

    def validate(self, where: str) -> None:
        _bool(where, "enabled", self.enabled)
        _epochs(where, "epochs", self.epochs)
        _positive_number(where, "learning_rate", self.learning_rate)


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
        _bool(where, "enabled", self.enabled)
        if isinstance(self.clusters, bool) or not isinstance(self.clusters, int) or self.clusters < 2:
            raise ConfigError(f"{where}.clusters: expected an integer >= 2, got {self.clusters!r}")
        _choice(where, "init", self.init, CLUSTER_INITS)
        _bool(where, "per_channel", self.per_channel)
        _positive_int(where, "epochs", self.epochs)
        _positive_number(where, "learning_rate", self.learning_rate)


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

    def validate(self, where: str) -> None:
        _choices(where, "families", self.families, MODEL_FAMILIES)
        _choice(where, "space", self.space, SEARCH_SPACES)
        if (isinstance(self.time_budget_s, bool) or not isinstance(self.time_budget_s, (int, float))
                or not 0 <= self.time_budget_s < float("inf")):
            raise ConfigError(f"{where}.time_budget_s: expected seconds >= 0 (0: no limit), "
                              f"got {self.time_budget_s!r}")
        if self.time_budget_s and self.space != "blocks":
            raise ConfigError(f"{where}.time_budget_s: applies to space: blocks (the grid's trials "
                              f"count candidates); got space: {self.space}")
        _positive_int(where, "rungs", self.rungs)
        _positive_int(where, "reduction", self.reduction)
        if self.reduction < 2:
            raise ConfigError(f"{where}.reduction: expected an integer >= 2, got {self.reduction!r}")
        if not self.alphas:
            raise ConfigError(f"{where}.alphas: expected at least one width multiplier")
        for a in self.alphas:
            _positive_number(where, "alphas", a)
        if not self.input_sizes:
            raise ConfigError(f"{where}.input_sizes: expected at least one input size")
        for size in self.input_sizes:
            if isinstance(size, bool) or not isinstance(size, int) or size < 32:
                raise ConfigError(f"{where}.input_sizes: expected integers >= 32, got {size!r}")
        _positive_int(where, "trials", self.trials)
        _positive_int(where, "proxy_epochs", self.proxy_epochs)
        _non_negative_int(where, "proxy_train_samples", self.proxy_train_samples, " (0: the recipe's)")
        _positive_int(where, "finalists", self.finalists)
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
        _choices(where, "variants", self.variants, VARIANTS)
        _bool(where, "int8_io", self.int8_io)
        _positive_int(where, "calibration_samples", self.calibration_samples)
        _positive_int(where, "validation_samples", self.validation_samples)


@dataclass(frozen=True)
class DevicesConfig:
    """Emulated target devices and how many test images each runs."""

    targets: Tuple[str, ...] = ()
    samples: int = 100
    threads: int = 1
    workers: int = 2

    def validate(self, where: str) -> None:
        for t in self.targets:
            if not isinstance(t, str):
                raise ConfigError(f"{where}.targets: expected device names, got {t!r}")
        _positive_int(where, "samples", self.samples)
        _positive_int(where, "threads", self.threads)
        _positive_int(where, "workers", self.workers)


@dataclass(frozen=True)
class Recipe:
    """One build: data, model, training, optimization, conversion, devices, budgets."""

    name: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    budgets: Dict[str, Any] = field(default_factory=dict)
    deploy_variant: str = "int8-qat"
    smoke_form: bool = False

    def validate(self) -> "Recipe":
        """Checks every field; returns self. Raises ConfigError naming the bad key."""
        if not isinstance(self.name, str) or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"recipe.name: expected letters, digits, '-' or '_', got {self.name!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"recipe.seed: expected an integer, got {self.seed!r}")
        if not 0 <= self.seed < 2**32:  # what numpy and TensorFlow seeding accept
            raise ConfigError(f"recipe.seed: expected an integer from 0 to {2**32 - 1}, got {self.seed!r}")
        for f in ("data", "model", "train", "transfer", "prune", "qat", "cluster", "convert", "devices", "search"):
            getattr(self, f).validate(f"recipe.{f}")
        _choice("recipe", "deploy_variant", self.deploy_variant, self.convert.variants)
        for v in self.convert.variants:
            for section in SOURCES[VARIANT_REGISTRY.get(v).source].needs:
                if not getattr(self, section).enabled:
                    raise ConfigError(f"recipe.convert.variants: {v!r} needs {section}.enabled: true")
        clustered = [name for name, v in VARIANT_REGISTRY.items() if "cluster" in SOURCES[v.source].needs]
        if self.cluster.enabled and not set(clustered) & set(self.convert.variants):
            raise ConfigError(f"recipe.cluster.enabled: true, but no variant uses clustering: add "
                              f"{' or '.join(clustered)} to convert.variants")
        from pipeline.recipe.budgets import validate_budgets

        validate_budgets(self.budgets, self.convert.variants)
        return self

    # -- forms ---------------------------------------------------------------

    def smoke(self) -> "Recipe":
        """The tiny form of this recipe: 32x32 input, few samples, one epoch.

        Its budgets are the recipe's less the accuracy floors (:data:`SMOKE_DROPPED_BUDGETS`):
        no one-epoch model meets them. Cost budgets (size, sparsity, latency,
        instructions, memory) and the int8-vs-float drop still hold and are checked.
        """
        r = dataclasses.replace
        return r(
            self,
            budgets={k: v for k, v in self.budgets.items() if k not in SMOKE_DROPPED_BUDGETS},
            data=r(self.data, train_samples=min(self.data.train_samples or 256, 256),
                   val_samples=64, test_samples=128),
            model=r(self.model, input_size=32),
            train=r(self.train, epochs=1, batch_size=32),
            transfer=r(self.transfer, head_epochs=1, finetune_epochs=1),
            prune=r(self.prune, epochs=1),
            qat=r(self.qat, epochs=1),
            cluster=r(self.cluster, epochs=1),
            convert=r(self.convert, calibration_samples=32, validation_samples=16),
            devices=r(self.devices, samples=16),
            smoke_form=True,
        ).validate()

    @property
    def build_name(self) -> str:
        return f"{self.name}-smoke" if self.smoke_form else self.name

    # -- (de)serialisation ---------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        return to_plain(self)

    def fingerprint(self) -> str:
        """A short hash of the whole recipe (stage caches use sub-config hashes)."""
        return config_hash(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> "Recipe":
        """Builds and validates a recipe from plain data. Raises ConfigError."""
        return from_plain(cls, data, "recipe", ConfigError).validate()


# -- helpers -------------------------------------------------------------------


def _choice(where: str, key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}.{key}: expected one of {', '.join(map(str, allowed))}; got {value!r}")


def _choices(where: str, key: str, values, allowed) -> None:
    """A non-empty list of distinct entries of ``allowed``."""
    if not values:
        raise ConfigError(f"{where}.{key}: expected at least one of {', '.join(map(str, allowed))}")
    for v in values:
        _choice(where, key, v, allowed)
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}.{key}: duplicate entries in {list(values)}")


def _non_negative_int(where: str, key: str, value: Any, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}.{key}: expected an integer >= 0{note}, got {value!r}")


def _epochs(where: str, key: str, value: Any, unset_ok: bool = False) -> None:
    if value == AUTO and isinstance(value, str) or value is None and unset_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}.{key}: expected a positive integer or 'auto', got {value!r}")


def _positive_int(where: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}.{key}: expected a positive integer, got {value!r}")


def _positive_number(where: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}.{key}: expected a positive number, got {value!r}")


def _bool(where: str, key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")

"""Recipe sections of the data, the model and its training: ``data``, ``model``,
``train`` (with ``augment``) and ``transfer``."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import models
from pipeline import vocabulary
from pipeline.errors import ConfigError
from pipeline.recipe.checks import (AUTO, check_bool, check_choice, check_epochs, check_non_negative_int,
                                    check_positive_int, check_positive_number)

MODEL_FAMILIES = tuple(models.FAMILIES)
#: The family of block-level architectures: ``model.genotype`` describes the network.
GENOTYPE_FAMILY = "mbconv"
DATASET_NAMES = tuple(vocabulary.DATASETS.names())
STRATEGIES = ("default", "mirrored", "multi-worker")
FIT_MODES = tuple(vocabulary.FIT_MODES.names())
CLASS_WEIGHTS = ("none", "balanced")
#: Float epochs on the synthetic ``shapes`` set when the recipe leaves ``train.epochs``
#: unset: its hand-tuned schedule (shapes is easy and rendered afresh, so auto buys little).
#: The default recipe's V2-0.35 converges in it: validation top-1 plateaus at 96.4-96.6%
#: from epoch 7 of 10 (test 94.0%); 4 epochs stopped at 90.0% while still rising.
SHAPES_EPOCHS = 10


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
        check_choice(where, "dataset", self.dataset, DATASET_NAMES)
        check_choice(where, "fit", self.fit, FIT_MODES)
        for name in ("train_samples", "val_samples", "test_samples", "train_per_class"):
            value = getattr(self, name)
            if value is not None:
                check_positive_int(where, name, value)
        if self.dataset == "folder" and not self.path:
            raise ConfigError(f"{where}.path: the 'folder' data set needs a path to a directory "
                              "with one sub-folder per class")


@dataclass(frozen=True)
class ModelConfig:
    """Model family, width multiplier and input geometry.

    ``init``: weights to start from (:mod:`pipeline.train.init_weights`): a build
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
        check_choice(where, "family", self.family, MODEL_FAMILIES + (GENOTYPE_FAMILY,))
        check_positive_number(where, "alpha", self.alpha)
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
        if not isinstance(self.input_size, int) or self.input_size < models.MIN_INPUT_SIZE:
            raise ConfigError(f"{where}.input_size: expected an integer >= {models.MIN_INPUT_SIZE} "
                              f"(the smallest input every model family takes), got {self.input_size!r}")
        check_choice(where, "channels", self.channels, (1, 3))
        check_choice(where, "first_stride", self.first_stride, (1, 2))
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
        check_bool(where, "enabled", self.enabled)
        check_bool(where, "hflip", self.hflip)
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
        check_epochs(where, "epochs", self.epochs, unset_ok=True)
        check_positive_int(where, "max_epochs", self.max_epochs)
        check_positive_int(where, "min_epochs", self.min_epochs)
        check_positive_int(where, "patience", self.patience)
        if self.time_budget_s is not None:
            check_positive_number(where, "time_budget_s", self.time_budget_s)
        check_positive_int(where, "batch_size", self.batch_size)
        check_positive_number(where, "learning_rate", self.learning_rate)
        check_non_negative_int(where, "warmup_epochs", self.warmup_epochs)
        if isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float)) \
                or not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{where}.label_smoothing: expected a number from 0 to below 1, "
                              f"got {self.label_smoothing!r}")
        check_choice(where, "class_weight", self.class_weight, CLASS_WEIGHTS)
        self.augment.validate(f"{where}.augment")
        check_choice(where, "strategy", self.strategy, STRATEGIES)
        check_non_negative_int(where, "logical_devices", self.logical_devices)

    def epochs_for(self, dataset: str):
        """The schedule asked for: a number of epochs, or ``"auto"``."""
        if self.epochs is None:
            return SHAPES_EPOCHS if dataset == "shapes" else AUTO
        return self.epochs


#: ``transfer.choose``: which float model the build goes on with.
TRANSFER_CHOICES = ("auto", "best", "transfer", "scratch")


def as_list(value) -> list:
    """A recipe value that may be one item or a list of them, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass(frozen=True)
class TransferConfig:
    """How a model that starts from ``model.init`` is trained (:mod:`pipeline.train.transfer`).

    Two phases, each a cached stage: ``head`` trains only the layers the start
    file did not provide (the new classifier) with the rest frozen, batch-norm
    statistics included; ``finetune`` then trains the top ``finetune_blocks`` blocks
    (``all``: every layer) plus the head at a lower learning rate, batch norm
    frozen unless ``finetune_batchnorm``. ``finetune_learning_rate`` and
    ``finetune_blocks`` may each be a list: every combination is fine-tuned from the
    head phase's model and the one with the best validation top-1 is kept. Epochs: a
    number, or ``auto`` (train until validation top-1 stops improving, as
    ``train.epochs: auto``; at most ``train.max_epochs``). Batch size, augmentation,
    label smoothing and class weights are ``train``'s.

    ``choose`` says which float model the rest of the build starts from:

    * ``best``: the model is also trained from scratch (the ``train`` stage, with the
      recipe's ``train`` schedule), and the one with the higher validation top-1 is
      kept (ties go to the transferred one); the report says which, and by how much;
    * ``auto`` (the default): ``best`` when the smallest class of the training split has
      at most ``few_per_class`` images, where a start file helps most and can also hurt
      most (features that do not fit the new images), and a scratch model is cheap
      to train; ``transfer`` otherwise;
    * ``transfer`` / ``scratch``: that one, without the other.
    """

    head_epochs: Any = 10
    head_learning_rate: float = 3e-3
    finetune_epochs: Any = AUTO
    finetune_learning_rate: Any = (3e-4, 1e-3)
    finetune_blocks: Any = ("all", 4)
    finetune_batchnorm: bool = False
    choose: str = "auto"
    few_per_class: int = 100

    def __post_init__(self):
        # A list from YAML/JSON becomes a tuple: the recipe stays hashable and equal
        # to itself after a round trip through plain data.
        for key in ("finetune_learning_rate", "finetune_blocks"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))

    def validate(self, where: str) -> None:
        check_epochs(where, "head_epochs", self.head_epochs)
        check_epochs(where, "finetune_epochs", self.finetune_epochs)
        check_positive_number(where, "head_learning_rate", self.head_learning_rate)
        rates, blocks = as_list(self.finetune_learning_rate), as_list(self.finetune_blocks)
        if not rates or not blocks:
            raise ConfigError(f"{where}: finetune_learning_rate and finetune_blocks need at least one value each")
        for rate in rates:
            check_positive_number(where, "finetune_learning_rate", rate)
        for b in blocks:
            if b != "all":
                try:
                    check_positive_int(where, "finetune_blocks", b)
                except ConfigError:
                    raise ConfigError(f"{where}.finetune_blocks: expected 'all' or a positive integer "
                                      f"(or a list of them), got {b!r}") from None
        for key, values in (("finetune_learning_rate", rates), ("finetune_blocks", blocks)):
            if len(set(values)) != len(values):
                raise ConfigError(f"{where}.{key}: duplicate entries in {values}")
        check_bool(where, "finetune_batchnorm", self.finetune_batchnorm)
        check_choice(where, "choose", self.choose, TRANSFER_CHOICES)
        check_positive_int(where, "few_per_class", self.few_per_class)

    def candidates(self) -> list:
        """``(learning rate, blocks)`` of each fine-tune tried, in the recipe's order."""
        return [(float(rate), b) for rate in as_list(self.finetune_learning_rate)
                for b in as_list(self.finetune_blocks)]

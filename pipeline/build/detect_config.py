"""A detection recipe (``task: detection``): its sections, checks, smoke form and loading.

A detection recipe is YAML with the same top-level layout as a classifier's
(:mod:`pipeline.recipe.schema`), its sections holding what a detector needs:

    name: detect-shapes
    task: detection
    seed: 0
    data:     {dataset: synthetic | coco | voc, ...}        (:class:`DetectData`)
    model:    {family, alpha, input_size, channels}
    train:    {epochs, batch_size, learning_rate, augment}
    prune:    {sparsity, epochs, learning_rate}               magnitude pruning, always on
    qat:      {epochs, learning_rate}                         prune-preserving QAT
    convert:  {variants, postprocess}
    devices:  {targets, deploy_targets, samples}              targets [] = the default recipe's
    budgets:  {min_map, max_map_drop}                         on the host's mAP@0.5
    deploy_variant: int8-qat

Loading is strict, as for classifier recipes: an unknown key is an error naming it and
the valid keys; a bad value names the key, what is allowed and what was given.
:func:`load_detect_recipe` reads a file or an embedded preset;
:func:`pipeline.recipe.load.recipe_task` tells the two kinds apart.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from pipeline.detection.export import PostprocessConfig
from pipeline.errors import ConfigError
from pipeline.plain import from_plain, to_plain
from pipeline.recipe.checks import check_choice, check_choices
from pipeline.variants import DEFAULT_VARIANTS

#: The recipe's ``task``.
TASK = "detection"
#: Data sets a detection recipe reads.
DATASETS = ("synthetic", "coco", "voc")
#: Ways an image of another shape is fitted to the input (coco and voc).
FITS = ("resize", "pad")
#: Budgets the smoke form leaves out: a one-epoch detector meets no accuracy floor.
SMOKE_DROPPED_BUDGETS = ("min_map",)


def default_devices() -> Tuple[str, ...]:
    """The device targets of the default recipe (``pipeline/recipe/presets/default.yaml``)."""
    from pipeline.recipe.load import load_recipe

    return tuple(load_recipe("default").devices.targets)


def _positive(where: str, section: Any, ints=(), numbers=()) -> None:
    """The recipe's own checks of positive integers and positive numbers, by field name."""
    from pipeline.recipe.checks import check_positive_int, check_positive_number

    for name in ints:
        check_positive_int(where, name, getattr(section, name))
    for name in numbers:
        check_positive_number(where, name, getattr(section, name))


@dataclass(frozen=True)
class DetectData:
    """Where the images come from.

    Attributes:
        dataset: ``synthetic`` (rendered, no files), ``coco`` (``path``: the images
            folder, ``annotations``: an instances JSON) or ``voc`` (``path``: the VOC root).
        train, val, test: images per split of the synthetic set.
        val_annotations, test_annotations: coco only: instances JSON files (images in the
            same ``path``) that are the validation and test splits; ``annotations`` is then
            the training split. Without them, ``val_fraction`` and ``test_fraction`` of one
            set are held out by a seeded permutation (voc always).
        fit: ``resize`` or ``pad`` (coco and voc).
    """

    dataset: str = "synthetic"
    train: int = 600
    val: int = 100
    test: int = 200
    path: Optional[str] = None
    annotations: Optional[str] = None
    val_annotations: Optional[str] = None
    test_annotations: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    fit: str = "resize"

    @property
    def split_files(self) -> bool:
        """Whether the coco splits come from their own annotation files."""
        return bool(self.val_annotations or self.test_annotations)

    def validate(self, where: str = "recipe.data") -> None:
        check_choice(where, "dataset", self.dataset, DATASETS)
        if self.dataset == "synthetic":
            _positive(where, self, ints=("train", "val", "test"))
            return
        if not self.path:
            raise ConfigError(f"{where}.path: the {self.dataset} data set needs a path")
        if self.dataset == "coco" and not self.annotations:
            raise ConfigError(f"{where}.annotations: the coco data set needs an annotations JSON file")
        if self.split_files and not (self.dataset == "coco" and self.val_annotations and self.test_annotations):
            raise ConfigError(f"{where}: val_annotations and test_annotations go together, with dataset coco")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ConfigError(f"{where}: val_fraction and test_fraction must be in (0, 1) with a sum "
                              f"under 1; got {self.val_fraction} and {self.test_fraction}")
        check_choice(where, "fit", self.fit, FITS)


@dataclass(frozen=True)
class DetectModel:
    """The detector: an SSDLite head on a MobileNet backbone (``models.FAMILIES``)."""

    family: str = "mobilenet_v2"
    alpha: float = 0.35
    input_size: int = 224
    channels: int = 3

    def validate(self, where: str = "recipe.model") -> None:
        from models import FAMILIES

        if self.family not in FAMILIES:
            raise ConfigError(f"{where}.family: unknown family {self.family!r}; valid: {', '.join(FAMILIES)}")
        if self.input_size < 64 or self.channels not in (1, 3):
            raise ConfigError(f"{where}: input_size must be >= 64 and channels 1 or 3; "
                              f"got {self.input_size} and {self.channels}")
        _positive(where, self, numbers=("alpha",))


@dataclass(frozen=True)
class DetectTrain:
    """Float training: Adam on a cosine schedule, flip/shift/zoom augmentation."""

    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 0.003
    augment: bool = True

    def validate(self, where: str = "recipe.train") -> None:
        _positive(where, self, ints=("epochs", "batch_size"), numbers=("learning_rate",))


@dataclass(frozen=True)
class DetectPrune:
    """Magnitude pruning of the Conv2D kernels (backbone and head) to ``sparsity``."""

    sparsity: float = 0.5
    epochs: int = 3
    learning_rate: float = 0.001

    def validate(self, where: str = "recipe.prune") -> None:
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"{where}.sparsity: must be in (0, 1), got {self.sparsity}")
        _positive(where, self, ints=("epochs",), numbers=("learning_rate",))


@dataclass(frozen=True)
class DetectQat:
    """Prune-preserving quantization-aware training of the pruned detector."""

    epochs: int = 1
    learning_rate: float = 0.0002

    def validate(self, where: str = "recipe.qat") -> None:
        _positive(where, self, ints=("epochs",), numbers=("learning_rate",))


@dataclass(frozen=True)
class DetectConvert:
    """The TFLite variants built, each ending in the postprocess op."""

    variants: Tuple[str, ...] = DEFAULT_VARIANTS
    postprocess: PostprocessConfig = PostprocessConfig()

    def validate(self, where: str = "recipe.convert") -> None:
        check_choices(where, "variants", self.variants, DEFAULT_VARIANTS)
        if "float32" not in self.variants:
            raise ConfigError(f"{where}.variants: float32 must be built (budgets and pictures compare with it)")


@dataclass(frozen=True)
class DetectDevices:
    """Emulated devices every variant runs on (``targets``), devices only the deploy
    variant runs on besides (``deploy_targets``), and the test images each run takes."""

    targets: Tuple[str, ...] = ()
    deploy_targets: Tuple[str, ...] = ()
    samples: int = 20

    def validate(self, where: str = "recipe.devices") -> None:
        from pipeline.devices.profiles import get_device

        for d in (*self.targets, *self.deploy_targets):
            get_device(d)  # ConfigError listing the valid devices
        both = sorted(set(self.targets) & set(self.deploy_targets))
        if both:
            raise ConfigError(f"{where}.deploy_targets: {', '.join(both)} already in targets (every variant "
                              f"runs there)")
        _positive(where, self, ints=("samples",))


@dataclass(frozen=True)
class DetectBudgets:
    """Budgets on the host's mAP@0.5, a fraction in [0, 1]: ``min_map`` for every variant,
    ``max_map_drop`` for the int8 variants under ``float32``; None is no budget."""

    min_map: Optional[float] = None
    max_map_drop: Optional[float] = 0.02

    def validate(self, where: str = "recipe.budgets") -> None:
        if self.min_map is not None and not 0 <= self.min_map <= 1:
            raise ConfigError(f"{where}.min_map: an mAP@0.5 in [0, 1], got {self.min_map}")
        if self.max_map_drop is not None and not 0 <= self.max_map_drop <= 1:
            raise ConfigError(f"{where}.max_map_drop: a drop of mAP@0.5 in [0, 1], got {self.max_map_drop}")


_SECTIONS = ("data", "model", "train", "prune", "qat", "convert", "devices", "budgets")


@dataclass(frozen=True)
class DetectConfig:
    """A detection recipe (round-trips through :meth:`from_dict` / :meth:`to_dict`)."""

    name: str = "detect"
    task: str = TASK
    seed: int = 0
    data: DetectData = field(default_factory=DetectData)
    model: DetectModel = field(default_factory=DetectModel)
    train: DetectTrain = field(default_factory=DetectTrain)
    prune: DetectPrune = field(default_factory=DetectPrune)
    qat: DetectQat = field(default_factory=DetectQat)
    convert: DetectConvert = field(default_factory=DetectConvert)
    devices: DetectDevices = field(default_factory=DetectDevices)
    budgets: DetectBudgets = field(default_factory=DetectBudgets)
    deploy_variant: str = "int8-qat"
    smoke_form: bool = False

    @classmethod
    def from_dict(cls, data: Any) -> "DetectConfig":
        """From plain data; an unknown key, a wrong type or a bad value is one ConfigError."""
        cfg = from_plain(cls, data if data is not None else {}, "recipe", ConfigError)
        cfg.validate()
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        return to_plain(self)

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (self.model.input_size, self.model.input_size, self.model.channels)

    @property
    def build_name(self) -> str:
        return f"{self.name}-smoke" if self.smoke_form else self.name

    def target_devices(self) -> Tuple[str, ...]:
        """The devices every variant runs on."""
        return self.devices.targets or default_devices()

    def deploy_devices(self) -> Tuple[str, ...]:
        """Every device the deploy variant runs on: the targets, then ``deploy_targets``."""
        targets = self.target_devices()
        return targets + tuple(d for d in self.devices.deploy_targets if d not in targets)

    def validate(self) -> "DetectConfig":
        """Raises ConfigError naming the first bad field and what it expects; returns self."""
        from pipeline.recipe.checks import check_name_and_seed

        check_name_and_seed(self.name, self.seed)
        if self.task != TASK:
            raise ConfigError(f"recipe.task: expected {TASK!r} here, got {self.task!r}")
        for name in _SECTIONS:
            getattr(self, name).validate(f"recipe.{name}")
        if self.deploy_variant not in self.convert.variants:
            raise ConfigError(f"recipe.deploy_variant: {self.deploy_variant!r} is not built; "
                              f"convert.variants: {', '.join(self.convert.variants)}")
        return self

    def smoke(self) -> "DetectConfig":
        """The tiny form: 64x64 input, few synthetic images, one epoch per stage, 4 device
        samples, and no accuracy floor (:data:`SMOKE_DROPPED_BUDGETS`). A coco or voc set is
        read whole."""
        r = dataclasses.replace
        data = self.data
        if data.dataset == "synthetic":
            data = r(data, train=min(data.train, 48), val=min(data.val, 16), test=min(data.test, 16))
        return r(self, data=data, model=r(self.model, input_size=64), train=r(self.train, epochs=1, batch_size=16),
                 prune=r(self.prune, epochs=1), qat=r(self.qat, epochs=1), devices=r(self.devices, samples=4),
                 budgets=r(self.budgets, **{k: None for k in SMOKE_DROPPED_BUDGETS}), smoke_form=True).validate()


def load_detect_recipe(path: "str | Path", smoke: bool = False) -> DetectConfig:
    """A detection recipe from a YAML file or an embedded preset's name (ConfigError if bad)."""
    from pipeline.recipe.load import read_recipe_data

    _, data = read_recipe_data(path)
    cfg = DetectConfig.from_dict(data)
    return cfg.smoke() if smoke else cfg

"""Recipes: frozen, validated configuration of one build.

A recipe is YAML that loads into :class:`Recipe`, a tree of frozen dataclasses.
Loading is strict: an unknown key is an error naming the key and the valid keys;
a bad value is an error naming the key, what is allowed and what was received.
``Recipe.to_dict()`` round-trips through ``Recipe.from_dict()``.

Every recipe has a *smoke* form (:meth:`Recipe.smoke`): tiny input, few samples,
one epoch, used by tests and ``build --smoke``.

The sections live in :mod:`pipeline.recipe.training` (data, model, train, transfer)
and :mod:`pipeline.recipe.stages` (prune, qat, cluster, search, convert, devices);
their checks in :mod:`pipeline.recipe.checks`. This module assembles them and
re-exports their names.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict

from pipeline.errors import ConfigError
from pipeline.plain import from_plain, to_plain
from pipeline.recipe.checks import AUTO, check_choice, check_name_and_seed
from pipeline.recipe.stages import (CHANNEL_CRITERIA, CHANNEL_KEYS, CLUSTER_INITS, PRUNE_STRUCTURES, SEARCH_SPACES,
                                    VARIANTS, ClusterConfig, ConvertConfig, DevicesConfig, PruneConfig, QatConfig,
                                    SearchConfig)
from pipeline.recipe.training import (CLASS_WEIGHTS, DATASET_NAMES, FIT_MODES, GENOTYPE_FAMILY, MODEL_FAMILIES,
                                      SHAPES_EPOCHS, STRATEGIES, AugmentConfig, DataConfig, ModelConfig,
                                      TrainConfig, TransferConfig)
from pipeline.store.atomic import config_hash
from pipeline.variants import SOURCES
from pipeline.variants import VARIANTS as VARIANT_REGISTRY

__all__ = [
    "AUTO", "CHANNEL_CRITERIA", "CHANNEL_KEYS", "CLASS_WEIGHTS", "CLUSTER_INITS", "DATASET_NAMES", "FIT_MODES",
    "GENOTYPE_FAMILY", "MODEL_FAMILIES", "PRUNE_STRUCTURES", "SEARCH_SPACES", "SHAPES_EPOCHS",
    "SMOKE_DROPPED_BUDGETS", "STRATEGIES", "VARIANTS", "AugmentConfig", "ClusterConfig", "ConvertConfig",
    "DataConfig", "DevicesConfig", "ModelConfig", "PruneConfig", "QatConfig", "Recipe", "SearchConfig",
    "TrainConfig", "TransferConfig",
]

#: Budgets the smoke form leaves out: accuracy floors a one-epoch model cannot meet.
SMOKE_DROPPED_BUDGETS = ("min_top1", "min_device_top1")


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
        check_name_and_seed(self.name, self.seed)
        for f in ("data", "model", "train", "transfer", "prune", "qat", "cluster", "convert", "devices", "search"):
            getattr(self, f).validate(f"recipe.{f}")
        check_choice("recipe", "deploy_variant", self.deploy_variant, self.convert.variants)
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
            transfer=r(self.transfer, head_epochs=1, finetune_epochs=1,  # one fine-tune: its first candidate
                         finetune_learning_rate=self.transfer.candidates()[0][0],
                         finetune_blocks=self.transfer.candidates()[0][1]),
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

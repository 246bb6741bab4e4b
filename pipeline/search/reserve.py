"""How long a search's finalists and chosen build are estimated to take, for the time
budget's reserve (:meth:`pipeline.search.blockstudy.BlockPhase.reserve_s`)."""

from pipeline.recipe.schema import Recipe

#: What a QAT epoch costs in float epochs (pipeline.train.schedule measured ~3).
QAT_EPOCH_COST = 3
#: Seconds kept for the chosen build (its training is the finalist's, cached): its report
#: and bundle, plus each variant's device run per 100 images (:func:`final_build_s`).
#: Measured on search-blocks' chosen builds (3 variants, 100 images): 38 s on pixel4 and
#: 57 s on camera-a53, float32's emulated run the longest (29 s).
FINAL_BUILD_S = 25.0
DEVICE_RUN_S = 12.0


def final_build_s(recipe: Recipe) -> float:
    """Seconds kept for the chosen build: :data:`FINAL_BUILD_S` plus :data:`DEVICE_RUN_S`
    per variant and 100 images of ``devices.samples``."""
    return FINAL_BUILD_S + DEVICE_RUN_S * len(recipe.convert.variants) * recipe.devices.samples / 100


def full_recipe_epochs(recipe: Recipe) -> float:
    """A full build's training in float-epoch equivalents: the float epochs (the cap
    under ``auto``), pruning's, QAT's at :data:`QAT_EPOCH_COST` each, clustering's."""
    from pipeline.train.schedule import finetune_epochs, float_plan

    epochs = float_plan(recipe).epochs
    total = float(epochs)
    if recipe.prune.enabled:
        total += finetune_epochs(recipe.prune.epochs, epochs, "prune")
    if recipe.qat.enabled:
        total += QAT_EPOCH_COST * finetune_epochs(recipe.qat.epochs, epochs, "qat")
    if recipe.cluster.enabled:
        total += recipe.cluster.epochs
    return total

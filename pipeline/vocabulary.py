"""Names that recipes choose from, defined once, with a line of description each.

The recipe schema sits below the packages that implement these names (data sets in
:mod:`pipeline.data`, channel criteria in :mod:`pipeline.compress.channels`), so the
names live here: the schema validates against them, the implementing registries key
themselves off them and check at import (:func:`check_implements`) that they
implement exactly these names, and CLI choices and help text are generated from them.
"""

from typing import Iterable

from pipeline.registry import Registry


def _vocabulary(kind: str, *entries) -> Registry[str]:
    """A registry of ``(name, one-line description)`` entries, in the order given."""
    names: Registry[str] = Registry(kind)
    for name, description in entries:
        names.register(name, description)
    return names


#: Data sets (:data:`pipeline.data.DATASETS`); order: ``mobile-model datasets`` and messages.
DATASETS = _vocabulary(
    "data set",
    ("shapes", "Generated shapes, 10 classes, with noise, clutter and occlusion (no files needed)."),
    ("fashion-mnist", "Fashion-MNIST: 70k 28x28 grey clothing images, 10 classes, from IDX files."),
    ("digits", "scikit-learn's bundled digits: 1797 8x8 images (16 grey levels), 10 classes, upscaled."),
    ("folder", "Your images: one sub-folder per class of .jpg/.jpeg/.png files under data.path."),
)

#: How images are fitted to the model's input size (:func:`pipeline.data.resize.fit_images`).
FIT_MODES = _vocabulary(
    "fit mode",
    ("resize", "stretch to the input size (aspect ratio not kept)"),
    ("pad", "keep the aspect ratio: enlarge by a whole factor or shrink to fit, centred on black"),
)

#: Channel importance criteria (:func:`pipeline.compress.channels.importance`).
CHANNEL_CRITERIA = _vocabulary(
    "channel importance criterion",
    ("l1", "L1 norm of the producer's filter"),
    ("bn_scale", "|gamma| of the BatchNorm after the producer (network slimming)"),
    ("l1_bn", "L1 norm of the filter as BatchNorm folds it: the weight the channel carries"),
)


def check_implements(vocabulary: Registry[str], implemented: Iterable[str], where: str) -> None:
    """Raises ValueError unless ``implemented`` names exactly the names of ``vocabulary``.

    Called at import by each implementing module, so a name added to one side only
    fails on the first import, not in the middle of a build.
    """
    names, got = set(vocabulary.names()), set(implemented)
    if names != got:
        raise ValueError(f"{where}: the {vocabulary.kind} implementations {sorted(got)} do not match "
                         f"the vocabulary {vocabulary.names()} (missing {sorted(names - got)}, "
                         f"extra {sorted(got - names)})")

"""Data sets: labelled images -> deterministic train/val/test splits.

Every data set is a loader ``(cfg: DataConfig, input_shape, seed, log) -> Splits``
registered in :data:`DATASETS`. Loaders are deterministic: the same config, input
shape and seed give identical images, byte for byte.

Images come out as :class:`pipeline.data.images.ImageSet` at the model's input shape,
read on demand as float32 NHWC in [0, 1]: the built-in sets hold theirs in memory;
``folder`` decodes each file once into the uint8 image cache
(:mod:`pipeline.data.cache`) and reads it from there, so memory does not grow with
the number of photos and a rerun decodes nothing. Labels come out as
int64 class indices into ``Splits.labels``. ``Splits.report`` is plain JSON-able
data saying what was available, what was taken per class, what was skipped and
what was converted; the data stage writes it into the manifest.

How splits are made:

* ``shapes`` renders each split from its own random stream (seed, split).
* ``fashion-mnist`` keeps the official test set (t10k); validation is carved
  from the official training set (10% of each class).
* ``digits`` and ``folder`` have no official split: each class is cut
  70/15/15 into train/val/test (at least one image per split), so every split
  holds every class.

Sample counts (``DataConfig.*_samples``; ``None`` = all) then truncate each split
after a stratified shuffle: a prefix of n samples holds each class in proportion.
``DataConfig.train_per_class`` (few-shot) then keeps N training images of each
class, drawn from the seed; validation and test stay as they were.

One module per data set (``shapes``, ``fashion_mnist``, ``digits``, ``folder``);
``splits`` draws the splits, ``resize`` fits images to the input shape and
``augment`` transforms training images on the fly (seeded, per epoch). The
package imports numpy and Pillow only (scikit-learn lazily, for ``digits``): no
TensorFlow, so the CLI and the tests stay light.
"""

from typing import Callable, List, Sequence, Tuple

from pipeline.data.images import ImageSet

from pipeline.data.digits import load_digits
from pipeline.data.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, load_fashion_mnist, read_idx
from pipeline.data.folder import ALPHA_BACKGROUND, IMAGE_SUFFIXES, load_folder
from pipeline.data.resize import check_fit
from pipeline.data.shapes import SHAPES_LABELS, load_shapes, render_shapes
from pipeline.data.splits import SPLITS, Splits, check_input_shape, check_seed, take_per_class
from pipeline import vocabulary
from pipeline.recipe.schema import DataConfig
from pipeline.registry import Registry
from pipeline.errors import Log

__all__ = [
    "ALPHA_BACKGROUND", "DATASETS", "FASHION_MNIST_DIR", "FASHION_MNIST_LABELS", "IMAGE_SUFFIXES", "Loader",
    "ImageSet", "SHAPES_LABELS", "SPLITS", "Splits", "describe_datasets", "load_dataset", "load_digits",
    "load_fashion_mnist", "load_folder", "load_shapes", "read_idx", "render_shapes",
]

Loader = Callable[[DataConfig, Tuple[int, int, int], int, Log], Splits]

_LOADERS = {"shapes": load_shapes, "fashion-mnist": load_fashion_mnist, "digits": load_digits,
            "folder": load_folder}
vocabulary.check_implements(vocabulary.DATASETS, _LOADERS, "pipeline.data")
DATASETS: Registry[Loader] = Registry(vocabulary.DATASETS.kind)
# Registered in the vocabulary's order: that of `mobile-model datasets` and of error messages.
for _name in vocabulary.DATASETS:
    DATASETS.register(_name, _LOADERS[_name])


def load_dataset(cfg: DataConfig, input_shape: Sequence[int], seed: int,
                 log: Log = lambda m: None) -> Splits:
    """Loads data set ``cfg.dataset`` at ``input_shape`` with splits drawn from ``seed``.

    Args:
        cfg: which data set, where its files are, samples per split, fit mode.
        input_shape: the model input ``(height, width, channels)``, channels 1 or 3.
        seed: non-negative integer; the same seed gives identical arrays.
        log: progress lines (hashing and decoding a folder of photos).

    Returns:
        Splits: images (float32 NHWC in [0, 1] when read), int64 labels, names, report.

    Raises:
        ConfigError: unknown data set, bad input shape, fit mode or seed.
        DataError: files missing, unreadable or unusable; a split would be empty; a
            class has fewer training images than ``train_per_class``.
    """
    loader = DATASETS.get(cfg.dataset)
    shape = check_input_shape(input_shape)
    check_fit(cfg.fit)
    check_seed(seed)
    splits = loader(cfg, shape, seed, log)
    return splits if cfg.train_per_class is None else take_per_class(splits, cfg.train_per_class, seed)


def describe_datasets() -> List[Tuple[str, str]]:
    """``(name, one-line description)`` of every registered data set, for CLI help."""
    return [(name, vocabulary.DATASETS.get(name)) for name in DATASETS]

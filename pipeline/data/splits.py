"""Splits: the train/val/test arrays every loader returns, and how they are drawn.

* Each (seed, stream) gets its own generator (:func:`stream_rng`), so the test
  split's draw does not change when ``train_samples`` does.
* Data sets without an official split are cut per class (:func:`partition`), so
  every split holds every class.
* Sample counts (``DataConfig.*_samples``; ``None`` = all) truncate each split after
  a stratified shuffle (:func:`take_stratified`): a prefix of n samples holds each
  class in proportion.
"""

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from pipeline.data.images import ImageSet
from pipeline.errors import ConfigError, DataError
from pipeline.recipe.schema import DataConfig

SPLITS = ("train", "val", "test")

#: Per-class fractions cut for val and test where a data set has no official split.
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


@dataclass(frozen=True, eq=False)
class Splits:
    """Train/val/test arrays of one data set at the model's input shape.

    ``x_*`` are :class:`pipeline.data.images.ImageSet` (read on demand as float32 NHWC
    in [0, 1]); ``y_*`` are int64 indices into ``labels``.
    ``report`` is JSON-able: available and taken counts per class, skipped files,
    conversions.
    """

    x_train: ImageSet
    y_train: np.ndarray
    x_val: ImageSet
    y_val: np.ndarray
    x_test: ImageSet
    y_test: np.ndarray
    labels: Tuple[str, ...]
    report: dict
    #: How this load went (files hashed and decoded, seconds, rate): not part of the data's identity.
    loading: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> Tuple[ImageSet, np.ndarray]:
        """``(x, y)`` of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def stream_rng(seed: int, *stream: str) -> np.random.Generator:
    """An independent generator per (seed, stream): e.g. the test split's draw does
    not change when train_samples does."""
    check_seed(seed)
    return np.random.default_rng([seed, *(zlib.crc32(s.encode()) for s in stream)])


def partition(y: np.ndarray, rng: np.random.Generator, val_frac: float,
               test_frac: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cuts each class at random into train/val/test index arrays.

    A non-zero fraction gives each class at least one sample in that split.
    """
    out: Tuple[List[np.ndarray], ...] = ([], [], [])
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        n = len(idx)
        n_test = max(1, round(n * test_frac)) if test_frac else 0
        n_val = max(1, round(n * val_frac)) if val_frac else 0
        out[2].append(idx[:n_test])
        out[1].append(idx[n_test:n_test + n_val])
        out[0].append(idx[n_test + n_val:])
    return tuple(np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
                 for parts in out)  # type: ignore[return-value]


def take_stratified(pool: np.ndarray, y: np.ndarray, n: Optional[int], rng: np.random.Generator,
          split: str) -> np.ndarray:
    """The first ``n`` of a stratified shuffle of ``pool`` (all if ``n`` is None), shuffled.

    Each class gets random keys spread evenly over [0, 1): sorting by key
    interleaves the classes, so any prefix holds them in proportion.
    """
    if n is not None:
        check_count(split, n)
    keys = np.empty(len(pool))
    labels = y[pool]
    for k in np.unique(labels):
        where = np.flatnonzero(labels == k)
        m = len(where)
        keys[where[rng.permutation(m)]] = (np.arange(m) + rng.random(m)) / m
    order = pool[np.argsort(keys, kind="stable")]
    return rng.permutation(order if n is None else order[:n])


def take_per_class(splits: Splits, n: int, seed: int) -> Splits:
    """``splits`` with only ``n`` training images of each class (val and test unchanged).

    Each class's images are drawn in the order of a permutation from ``seed``, so
    the same seed gives the same images, and a smaller ``n`` a subset of a larger one.

    Raises:
        DataError: a class has fewer than ``n`` training images.
    """
    rng = stream_rng(seed, "train_per_class")
    keep = []
    for k, label in enumerate(splits.labels):
        where = np.flatnonzero(splits.y_train == k)
        if len(where) < n:
            raise DataError(f"data.train_per_class: {n} training images of each class asked, but class "
                            f"{label!r} has {len(where)} in the train split")
        keep.append(where[rng.permutation(len(where))[:n]])
    idx = rng.permutation(np.concatenate(keep))
    report = dict(splits.report)
    report["train_per_class"] = n
    report["counts"] = {**report["counts"], "train": {lab: n for lab in splits.labels}}
    return dataclasses.replace(splits, x_train=splits.x_train.subset(idx),
                               y_train=np.ascontiguousarray(splits.y_train[idx]), report=report)


def requested_counts(cfg: DataConfig) -> Dict[str, Optional[int]]:
    return {split: getattr(cfg, f"{split}_samples") for split in SPLITS}


def check_count(split: str, n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"data.{split}_samples: expected a positive integer or null, got {n!r}")


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")


def check_input_shape(shape) -> Tuple[int, int, int]:
    try:
        h, w, c = (int(v) for v in shape)
        ok = all(int(v) == v for v in shape) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok or c not in (1, 3):
        raise ConfigError(f"input_shape: expected (height, width, channels) with positive "
                          f"sizes and 1 or 3 channels, got {shape!r}")
    return h, w, c


def assemble(name: str, parts, labels, input_shape, report: dict, loading: Optional[dict] = None) -> Splits:
    for split in SPLITS:
        x, y = parts[split]
        if len(y) == 0:
            wanted = report["requested"][split]
            raise DataError(f"data set {name!r}: the {split} split would be empty "
                            f"({'all' if wanted is None else wanted} requested, "
                            f"{report['available'][split]} available)")
    counts = {split: {lab: int(np.sum(parts[split][1] == i)) for i, lab in enumerate(labels)}
              for split in SPLITS}
    full = {"dataset": name, "labels": list(labels), "input_shape": list(input_shape),
            **report, "counts": counts}
    flat = {f"{k}_{split}": v for split in SPLITS for k, v in zip(("x", "y"), parts[split])}
    for split in SPLITS:
        x = flat[f"x_{split}"]
        flat[f"x_{split}"] = x if isinstance(x, ImageSet) else ImageSet.from_array(np.asarray(x, np.float32))
        flat[f"y_{split}"] = np.ascontiguousarray(flat[f"y_{split}"], np.int64)
    return Splits(**flat, labels=tuple(labels), report=full, loading=loading or {})


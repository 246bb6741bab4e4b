"""The ``digits`` data set: scikit-learn's bundled 8x8 digits, upscaled.

scikit-learn is imported lazily (about a second), only when this set is loaded.
"""

from typing import Tuple

import numpy as np

from pipeline.data.resize import channel_note, fit_images
from pipeline.data.splits import (SPLITS, TEST_FRACTION, VAL_FRACTION, Splits, assemble, check_input_shape, partition,
                                  requested_counts, stream_rng, take_stratified)
from pipeline.recipe.schema import DataConfig


def load_digits(cfg: DataConfig, input_shape: Tuple[int, int, int], seed: int,
               log=None) -> Splits:
    """scikit-learn's bundled digits: 1797 8x8 images (16 grey levels), 10 classes, upscaled.

    No official split: each class is cut 70/15/15 into train/val/test.
    """
    input_shape = check_input_shape(input_shape)
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: ~1 s import

    bunch = sk_load_digits()
    x_all = (bunch.images.astype(np.float32) / np.float32(16))[..., None]
    y_all = bunch.target.astype(np.int64)
    pools = dict(zip(SPLITS, partition(y_all, stream_rng(seed, "partition"), VAL_FRACTION, TEST_FRACTION)))
    parts = {}
    for name in SPLITS:
        idx = take_stratified(pools[name], y_all, getattr(cfg, f"{name}_samples"), stream_rng(seed, name), name)
        parts[name] = (fit_images(x_all[idx], input_shape, cfg.fit), y_all[idx])
    report = {
        "source": "sklearn.datasets.load_digits",
        "requested": requested_counts(cfg),
        "available": {k: len(v) for k, v in pools.items()},
        "fit": cfg.fit,
        "converted": channel_note(1, input_shape[2], sum(len(v[1]) for v in parts.values())),
    }
    labels = tuple(str(int(v)) for v in bunch.target_names)
    return assemble("digits", parts, labels, input_shape, report)

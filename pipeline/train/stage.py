"""The float training stage."""

from pathlib import Path
from typing import Callable, Dict

import numpy as np

from pipeline.recipe.schema import Recipe
from pipeline.train.keras_io import save_keras
from pipeline.store.atomic import atomic_path
from pipeline.train.fit import (compile_model, fit, keras_top1, make_strategy, setup_tensorflow,
                               steps_for)


def build_float_model(recipe: Recipe, num_classes: int):
    from pipeline.train.zoo import build_model

    m = recipe.model
    return build_model(m.family, m.alpha, m.input_shape, num_classes,
                       first_stride=m.first_stride, dropout=m.dropout)


def train_float(recipe: Recipe, splits, out: Path, preds_out: Path,
                log: Callable[[str], None] = print) -> Dict:
    """Trains the recipe's model from scratch.

    Writes the Keras model to ``out`` and its test-split top-1 classes to
    ``preds_out`` (later stages measure agreement with them).

    Returns:
        metrics: history, val/test top-1 (percent), params, MACs.
    """
    from models.macs import count_macs, count_params

    setup_tensorflow(recipe.seed, recipe.train.logical_devices)
    strategy = make_strategy(recipe.train)
    t = recipe.train
    with strategy.scope():
        model = build_float_model(recipe, splits.num_classes)
        compile_model(model, t.learning_rate, steps_for(splits, t.epochs, t.batch_size))
    log(f"[train] {recipe.model.family} alpha={recipe.model.alpha} input={recipe.model.input_shape} "
        f"classes={splits.num_classes} train={len(splits.x_train)} strategy={t.strategy}"
        f" ({strategy.num_replicas_in_sync} replica(s))")
    history = fit(model, splits, epochs=t.epochs, batch_size=t.batch_size, label="train", log=log)
    probs = model.predict(splits.x_test, batch_size=256, verbose=0)
    save_keras(model, out)
    with atomic_path(preds_out, suffix=".npy") as tmp:
        np.save(tmp, np.argmax(probs, axis=1).astype(np.int64))
    return {
        "history": history,
        "val_top1": keras_top1(model, splits.x_val, splits.y_val),
        "test_top1": float(np.mean(np.argmax(probs, axis=1) == splits.y_test) * 100.0),
        "params": count_params(model),
        "macs": count_macs(model),
        "replicas": int(strategy.num_replicas_in_sync),
    }

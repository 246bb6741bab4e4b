"""The float training stage."""

from pathlib import Path
from typing import Dict

import numpy as np

from pipeline.recipe.schema import Recipe
from pipeline.train.keras_io import save_keras
from pipeline.store.atomic import atomic_path
from pipeline.train.fit import (class_weights, compile_model, fit, keras_top1, make_strategy, setup_tensorflow,
                                steps_for, steps_per_epoch)
from pipeline.train.schedule import float_plan, warmup_steps
from pipeline.train.stream import predict
from pipeline.errors import Log
from pipeline.summary import still_learning


def build_float_model(recipe: Recipe, num_classes: int):
    from pipeline.train.zoo import build_model

    m = recipe.model
    return build_model(m.family, m.alpha, m.input_shape, num_classes, genotype=m.genotype,
                       first_stride=m.first_stride, dropout=m.dropout)


def train_float(recipe: Recipe, splits, out: Path, preds_out: Path,
                log: Log = print) -> Dict:
    """Trains the recipe's model from scratch (:func:`pipeline.train.schedule.float_plan`).

    Writes the Keras model to ``out`` and its test-split top-1 classes to
    ``preds_out`` (later stages measure agreement with them).

    Returns:
        metrics: ``history`` (per epoch), ``epochs`` (run), ``best_epoch``,
        ``restored``, ``stopped``, ``plan``, ``class_weight`` (or None),
        val/test top-1 (percent), params, MACs, replicas.
    """
    from models.macs import count_macs, count_params

    setup_tensorflow(recipe.seed, recipe.train.logical_devices)
    strategy = make_strategy(recipe.train)
    t = recipe.train
    plan = float_plan(recipe)
    total = steps_for(splits, plan.epochs, t.batch_size)
    warm = warmup_steps(total, steps_per_epoch(splits, t.batch_size), plan.warmup_epochs)
    with strategy.scope():
        model = build_float_model(recipe, splits.num_classes)
        lr_schedule = compile_model(model, t.learning_rate, total, warm, t.label_smoothing)
    weights = class_weights(splits.y_train, splits.num_classes) if t.class_weight == "balanced" else None
    schedule = (f"auto (patience {plan.patience}, at most {plan.epochs} epochs"
                + (f", {plan.time_budget_s:g} s" if plan.time_budget_s else "") + ")"
                if plan.auto else f"{plan.epochs} epochs")
    log(f"[train] {recipe.model.family} alpha={recipe.model.alpha} input={recipe.model.input_shape} "
        f"classes={splits.num_classes} train={len(splits.x_train)} strategy={t.strategy}"
        f" ({strategy.num_replicas_in_sync} replica(s)); {schedule}, warm-up {warm} steps, "
        f"augmentation {'on' if t.augment.enabled else 'off'}")
    run = fit(model, splits, plan=plan, batch_size=t.batch_size, label="train", seed=recipe.seed,
              augment=t.augment, class_weight=weights, one_hot=bool(t.label_smoothing), lr_schedule=lr_schedule,
              log=log)
    if still_learning(run["history"]["val_accuracy"], fixed=run["stopped"] == "fixed"):
        remedy = ("raise train.time_budget_s" if run["stopped"] == "time_budget"
                  else "raise train.max_epochs or train.epochs")
        log(f"[train] warning: validation top-1 was still rising in the last epoch ({run['epochs']}): "
            f"the model is probably under-trained ({remedy})")
    probs = predict(model, splits.x_test)
    save_keras(model, out)
    with atomic_path(preds_out, suffix=".npy") as tmp:
        np.save(tmp, np.argmax(probs, axis=1).astype(np.int64))
    return {
        **run,
        "class_weight": None if weights is None else {str(k): v for k, v in weights.items()},
        "val_top1": keras_top1(model, splits.x_val, splits.y_val),
        "test_top1": float(np.mean(np.argmax(probs, axis=1) == splits.y_test) * 100.0),
        "params": count_params(model),
        "macs": count_macs(model),
        "replicas": int(strategy.num_replicas_in_sync),
    }

"""Training from starting weights (``model.init``): a frozen-head phase, then fine-tuning.

Two stages, each cached through the manifest like any other:

* ``transfer-head`` builds the recipe's model, loads the start file into it
  (:func:`pipeline.train.init_weights.load_init`) and trains only what the file did
  not provide (the new classifier) with every other layer frozen. A frozen
  BatchNormalization layer runs in inference mode in tf_keras, so its statistics
  stay the start file's. Writes ``keras/head.h5``.
* ``transfer-finetune`` unfreezes the top ``transfer.finetune_blocks`` blocks (or
  all) and trains at ``transfer.finetune_learning_rate``, batch norm frozen unless
  ``transfer.finetune_batchnorm``. Writes ``keras/float.h5`` and its test
  predictions: the rest of the chain (prune, QAT, clustering, conversion, devices)
  starts from it as from a model trained from scratch.

Both save every layer trainable again, so later stages train the whole model.
"""

import re
from pathlib import Path
from typing import Dict, Iterable

import numpy as np

from pipeline.recipe.schema import AUTO, Recipe
from pipeline.store.atomic import atomic_path
from pipeline.train.fit import (class_weights, compile_model, fit, keras_top1, make_strategy, setup_tensorflow,
                                steps_for)
from pipeline.train.keras_io import load_keras, save_keras
from pipeline.train.schedule import Plan
from pipeline.train.stream import predict
from pipeline.errors import Log

_BLOCK = re.compile(r"block(\d+)_")


def transfer_stages(recipe: Recipe, splits, stage, keras_dir: Path, log: Log, out: str = "float") -> Dict:
    """Runs the ``transfer-head`` and ``transfer-finetune`` stages (cached through ``stage``);
    the fine-tuned model goes to ``keras/<out>.h5``, its test predictions to
    ``keras/<out>_test_pred.npy``.

    Returns:
        The fine-tune stage's figures (those of the float ``train`` stage) plus
        ``init`` (the start file: path, sha256, kind, family) and ``head`` (the head
        phase's epochs, validation top-1 and what was loaded).
    """
    from pipeline.train.init_weights import resolve_init

    init = resolve_init(recipe.model.init)
    cfg = recipe.to_dict()
    model = {k: v for k, v in cfg["model"].items() if k != "init"}  # the file itself is an input
    common = {"seed": recipe.seed, "model": model, "train": cfg["train"], "fit": 2}
    head_keys = ("head_epochs", "head_learning_rate")
    head_h5, float_h5 = keras_dir / "head.h5", keras_dir / f"{out}.h5"
    preds = keras_dir / f"{out}_test_pred.npy"
    head = stage("transfer-head", {**common, "transfer": {k: cfg["transfer"][k] for k in head_keys}},
                 {"init": init}, {"model": head_h5}, lambda: train_head(recipe, splits, init, head_h5, log))
    tuned = stage("transfer-finetune", {**common, "transfer": cfg["transfer"]}, {"keras": head_h5},
                  {"model": float_h5, "test_pred": preds},
                  lambda: train_finetune(recipe, splits, head_h5, float_h5, preds, log))
    return {**tuned, "epochs": head["epochs"] + tuned["epochs"], "init": head["transfer"]["source"],
            "head": {"epochs": head["epochs"], "val_top1": head["val_top1"], "transfer": head["transfer"]}}


def keep_better(transferred: Dict, scratch: Dict, files: Dict[str, Dict[str, Path]], log: Log = print) -> Dict:
    """The ``float-choice`` stage: copies the transferred or the scratch model (and its test
    predictions) to the float files, whichever has the higher validation top-1 (ties to
    the transferred one).

    Args:
        transferred, scratch: the two float stages' figures.
        files: ``{"transfer" | "scratch" | "float": {"model": path, "test_pred": path}}``.

    Returns:
        The kept stage's figures, with ``choice`` (:class:`pipeline.summary.FloatChoice`
        as a dict) and ``init`` only when the transferred model is kept.
    """
    import shutil

    from pipeline.summary import FloatChoice

    kept = "transfer" if transferred["val_top1"] >= scratch["val_top1"] else "scratch"
    choice = FloatChoice(kept, float(transferred["val_top1"]), float(scratch["val_top1"]),
                         float(transferred["test_top1"]), float(scratch["test_top1"]))
    log(f"[float-choice] {choice.line()}")
    for key, path in files["float"].items():
        with atomic_path(path, suffix=path.suffix) as tmp:
            shutil.copyfile(files[kept][key], tmp)
    figures = dict(transferred if kept == "transfer" else scratch)
    if kept == "scratch":
        figures.pop("init", None)
        figures.pop("head", None)
    return {**figures, "choice": choice.to_dict()}


def _plan(recipe: Recipe, epochs) -> Plan:
    t = recipe.train
    if epochs == AUTO:
        return Plan(t.max_epochs, True, t.patience, min(t.min_epochs, t.max_epochs), t.time_budget_s, 0)
    return Plan(int(epochs), False, 0, 1, t.time_budget_s, 0)


def _train(recipe: Recipe, splits, model, trainable: Iterable[str], learning_rate: float, epochs, label: str,
           train_batchnorm: bool, log: Log) -> Dict:
    """Freezes every layer but ``trainable`` (and batch norm unless asked), trains, unfreezes."""
    import tf_keras as keras

    t = recipe.train
    names = set(trainable)
    for layer in model.layers:
        bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer.name in names and (train_batchnorm or not bn)
    plan = _plan(recipe, epochs)
    schedule = compile_model(model, learning_rate, steps_for(splits, plan.epochs, t.batch_size), 0,
                             t.label_smoothing)
    weights = class_weights(splits.y_train, splits.num_classes) if t.class_weight == "balanced" else None
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    weighted = [x for x in model.layers if x.weights]
    log(f"[{label}] training {sum(x.trainable for x in weighted)} of {len(weighted)} layers "
        f"({count:,} weights), {'auto' if plan.auto else plan.epochs} epochs at learning rate {learning_rate:g}"
        f", batch norm {'trained' if train_batchnorm else 'frozen'}; train {len(splits.x_train)}")
    run = fit(model, splits, plan=plan, batch_size=t.batch_size, label=label, seed=recipe.seed,
              augment=t.augment, class_weight=weights, one_hot=bool(t.label_smoothing), lr_schedule=schedule,
              log=log)
    for layer in model.layers:
        layer.trainable = True
    return {**run, "trainable_layers": sorted(names), "trainable_weights": count}


def train_head(recipe: Recipe, splits, init: Path, out: Path, log: Log = print) -> Dict:
    """The head phase: the model with ``init`` loaded, only its new layers trained.

    Returns:
        The fit figures, ``val_top1`` and ``transfer`` (:class:`pipeline.train.init_weights.TransferReport`).

    Raises:
        ConfigError: the start file does not fit the recipe's model (names the layer).
    """
    from pipeline.train.stage import build_float_model
    from pipeline.train.init_weights import load_init, read_source

    setup_tensorflow(recipe.seed, recipe.train.logical_devices)
    source = read_source(str(init))
    with make_strategy(recipe.train).scope():
        model = build_float_model(recipe, splits.num_classes)
        report = load_init(model, source, splits.labels)
        log(f"[transfer-head] {report.summary_line()}")
        run = _train(recipe, splits, model, set(report.new) | {"logits"}, recipe.transfer.head_learning_rate,
                     recipe.transfer.head_epochs, "transfer-head", False, log)
    save_keras(model, out)
    return {**run, "val_top1": keras_top1(model, splits.x_val, splits.y_val), "transfer": report.to_dict()}


def finetune_layers(model, blocks) -> list:
    """The layers fine-tuning trains: all, or those of the top ``blocks`` blocks and after them."""
    if blocks == "all":
        return [x.name for x in model.layers]
    numbers = [int(m.group(1)) for m in (_BLOCK.match(x.name) for x in model.layers) if m]
    first = max(numbers) - int(blocks) + 1
    out, after = [], False
    for layer in model.layers:
        m = _BLOCK.match(layer.name)
        after = after or bool(m and int(m.group(1)) >= first)
        if after:
            out.append(layer.name)
    return out


def train_finetune(recipe: Recipe, splits, head_h5: Path, out: Path, preds_out: Path, log: Log = print) -> Dict:
    """The fine-tune phase: from the head phase's model, each candidate of
    ``transfer.candidates()`` (learning rate, top blocks or all) is trained, and the one
    with the best validation top-1 is kept (the first of equals).

    Writes the kept float model to ``out`` and its test-split top-1 classes to ``preds_out``.

    Returns:
        The figures of :func:`pipeline.train.stage.train_float` (history, epochs,
        val/test top-1, params, MACs, replicas) for the kept candidate, and
        ``candidates``: learning rate, blocks, epochs and validation top-1 of each tried.
    """
    from models.macs import count_macs, count_params

    setup_tensorflow(recipe.seed, recipe.train.logical_devices)
    strategy = make_strategy(recipe.train)
    tr = recipe.transfer
    candidates = tr.candidates()
    tried, best = [], None
    for k, (rate, blocks) in enumerate(candidates):
        setup_tensorflow(recipe.seed, recipe.train.logical_devices)  # each candidate from the same seed
        label = "transfer-finetune" + (f" {k + 1}/{len(candidates)}" if len(candidates) > 1 else "")
        with strategy.scope():
            model = load_keras(head_h5)
            run = _train(recipe, splits, model, finetune_layers(model, blocks), rate, tr.finetune_epochs, label,
                         tr.finetune_batchnorm, log)
        val = keras_top1(model, splits.x_val, splits.y_val)
        tried.append({"learning_rate": rate, "blocks": blocks, "epochs": run["epochs"],
                      "best_epoch": run.get("best_epoch"), "val_top1": val})
        if best is None or val > best[0]:
            best = (val, k, model, run)
    val, kept, model, run = best
    if len(candidates) > 1:
        others = ", ".join(f"{t['val_top1']:.2f}%" for i, t in enumerate(tried) if i != kept)
        log(f"[transfer-finetune] kept candidate {kept + 1} of {len(candidates)} (learning rate "
            f"{tried[kept]['learning_rate']:g}, blocks {tried[kept]['blocks']}): validation top-1 {val:.2f}% "
            f"(the others: {others})")
    probs = predict(model, splits.x_test)
    save_keras(model, out)
    with atomic_path(preds_out, suffix=".npy") as tmp:
        np.save(tmp, np.argmax(probs, axis=1).astype(np.int64))
    return {
        **run,
        "candidates": tried,
        "kept_candidate": kept,
        "val_top1": val,
        "test_top1": float(np.mean(np.argmax(probs, axis=1) == splits.y_test) * 100.0),
        "params": count_params(model),
        "macs": count_macs(model),
        "replicas": int(strategy.num_replicas_in_sync),
    }

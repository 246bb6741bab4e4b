"""Shared training machinery: TensorFlow set-up, distribution strategy, fit loop, progress.

Float training, pruning, clustering and QAT all train through :func:`fit`, so they
share the optimizer schedule (:mod:`pipeline.train.schedule`), augmentation,
early stopping, the distribution strategy and the progress output.
"""

import os

from typing import Any, Dict, Optional

import numpy as np

from pipeline.errors import Log
from pipeline.recipe.schema import AugmentConfig, TrainConfig
from pipeline.train.schedule import Plan
from pipeline.errors import ConfigError
from pipeline.native import tf_environment

tf_environment()  # before any TensorFlow import: tfmot only works on Keras 2 (tf_keras)

_configured = False


#: Training stages run TensorFlow with op determinism (the manifest records this).
OP_DETERMINISM = True


def setup_tensorflow(seed: int, logical_devices: int = 0) -> None:
    """Seeds every RNG, restarts Keras's automatic names, turns on op determinism, and
    optionally splits the CPU.

    Must run before TensorFlow creates its devices; repeated calls only reseed and
    restart the names. Keras numbers the layers it names itself (``quantize_layer``,
    ``quantize_layer_1``, ...) per process, and those names reach the saved models and
    the ``.tflite`` files: restarting them makes a stage write the same bytes whether or
    not the process ran another stage or build before (a search builds many).

    Args:
        seed: the recipe seed.
        logical_devices: if > 1, the CPU is split into that many logical devices so a
            MirroredStrategy can be exercised on one machine.
    """
    global _configured
    from pipeline.native import import_tensorflow

    tf = import_tensorflow()
    import tf_keras as keras

    if not _configured:
        if logical_devices > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_devices)])
        if OP_DETERMINISM:
            tf.config.experimental.enable_op_determinism()
        tf.get_logger().setLevel("ERROR")
        _configured = True
    keras.backend.reset_uids()
    keras.utils.set_random_seed(seed)


_strategies: Dict[str, object] = {}


def make_strategy(cfg: TrainConfig):
    """The tf.distribute strategy named in the recipe, one per process.

    Reused across stages: a second MirroredStrategy in the same process reuses the
    first one's collective instance keys and its all-reduce aborts ("Shape mismatch
    in the collective instance", tensorflow/tensorflow#62790).

    Raises:
        ConfigError: ``multi-worker`` without TF_CONFIG in the environment.
    """
    if cfg.strategy not in _strategies:
        _strategies[cfg.strategy] = _new_strategy(cfg)
    return _strategies[cfg.strategy]


def _new_strategy(cfg: TrainConfig):
    import tensorflow as tf

    if cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if cfg.strategy == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if cfg.strategy == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("recipe.train.strategy: 'multi-worker' needs the TF_CONFIG environment "
                              "variable describing the cluster (see TensorFlow's MultiWorkerMirroredStrategy)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"recipe.train.strategy: unknown strategy {cfg.strategy!r}")


def progress_line(label: str, epoch: int, cap: int, logs: Dict[str, float], seconds: float,
                  note: str = "") -> str:
    """``[label] epoch i/cap  loss ...  accuracy ...  val_loss ...  val_accuracy ...  (s)note``."""
    parts = [f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs]
    return f"[{label}] epoch {epoch + 1}/{cap}  {'  '.join(parts)}  ({seconds:.1f} s){note}"


def compile_model(model, learning_rate: float, steps: int, warmup: int = 0,
                  label_smoothing: float = 0.0) -> None:
    """Adam along :func:`pipeline.train.schedule.warmup_cosine` over ``steps``;
    cross-entropy on probabilities (one-hot with ``label_smoothing``, else sparse).

    Returns:
        the learning-rate schedule (pass it to :func:`fit` so that a time budget can
        bring its end forward)."""
    import tf_keras as keras

    from pipeline.train.schedule import warmup_cosine

    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing) if label_smoothing
            else keras.losses.SparseCategoricalCrossentropy())
    schedule = warmup_cosine(learning_rate, steps, warmup)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=["accuracy"])
    build_training_state(model, one_hot=bool(label_smoothing))
    return schedule


def build_training_state(model, one_hot: bool) -> None:
    """Creates the optimizer's slots and the compiled loss and metrics now, as the
    first train step would: tf.function traces a step that creates variables twice
    (once creating them, once more without), and one trace of a pruning- or
    QAT-wrapped model's step takes seconds. Same variables, same initial values (zeros,
    no random draw), so training is unchanged."""
    import tensorflow as tf

    model.optimizer.build(model.trainable_variables)
    y_pred = tf.zeros([1, *model.output_shape[1:]])
    y_true = tf.zeros([1, model.output_shape[-1]]) if one_hot else tf.zeros([1], tf.int64)
    model.compiled_loss.build(y_pred)
    model.compiled_metrics.build(y_pred, y_true)


def class_weights(y: np.ndarray, classes: int) -> Dict[int, float]:
    """``balanced`` weights: total / (classes x count) per class present (absent classes: 1)."""
    counts = np.bincount(np.asarray(y, np.int64), minlength=classes)
    return {k: float(len(y) / (classes * c)) if c else 1.0 for k, c in enumerate(counts)}


def fit(model, splits, *, plan: Plan, batch_size: int, label: str, seed: int = 0,
        augment: Optional[AugmentConfig] = None, class_weight: Optional[Dict[int, float]] = None,
        one_hot: bool = False, callbacks=(), lr_schedule=None,
        log: Log = print) -> Dict[str, Any]:
    """Trains a compiled model on the train split, one epoch at a time (streamed:
    :func:`pipeline.train.stream.epoch_dataset`), validating on the val split.

    Each epoch trains on a fresh shuffle (and, with ``augment`` enabled, freshly
    augmented images) of the train split, drawn from ``seed``, ``label`` and the
    epoch (:func:`pipeline.data.augment.epoch_rng`): the same on a rerun. Under
    ``plan.auto`` training stops once validation top-1 has not improved for
    ``plan.patience`` epochs (and at least ``plan.min_epochs`` have run), and the
    weights of the best epoch are restored; any plan stops before an epoch that
    would end past ``plan.time_budget_s`` (judged by the last epoch's length). With a
    budget and ``lr_schedule`` (:func:`compile_model`'s), the cosine's end is moved,
    after each epoch from the second on (the first one's time includes tracing), to
    the last epoch that fits the budget
    (:func:`pipeline.train.schedule.epochs_that_fit`), so the learning rate reaches 0
    where training stops rather than at ``plan.epochs``; no epoch runs past that end.
    These are Keras callbacks (:mod:`pipeline.train.callbacks`), run after ``callbacks``.

    One ``model.fit`` per epoch, because each epoch is its own dataset: in one stream
    of all epochs, a MirroredStrategy would split the batches across its replicas
    differently (its re-batching runs across the epochs' ends), so the weights would
    not be those of a rerun that trains epoch by epoch.

    Returns:
        ``history`` (per epoch: loss, accuracy, val_loss, val_accuracy, lr; the same
        on a rerun), ``epoch_seconds`` (wall time per epoch), ``epochs`` (run),
        ``best_epoch`` (1-based, by validation top-1), ``restored`` (the weights are
        the best epoch's), ``stopped`` (``fixed``, ``patience``, ``max_epochs`` or
        ``time_budget``), ``plan``, ``lr_end_epoch`` (where the cosine ended:
        ``plan.epochs`` unless a budget brought it forward).
    """
    from pipeline.train.callbacks import EpochRecord, PatienceStopping, TimeBudget
    from pipeline.train.stream import epoch_dataset, eval_batch_size, eval_dataset, worker_share

    import tf_keras as keras

    y_train = keras.utils.to_categorical(splits.y_train, splits.num_classes) if one_hot else splits.y_train
    y_val = keras.utils.to_categorical(splits.y_val, splits.num_classes) if one_hot else splits.y_val
    # This process's replicas (a worker of a multi-worker strategy batches for its own).
    replicas = max(1, model.distribute_strategy.num_replicas_in_sync // worker_share()[1])
    val_data = eval_dataset(splits.x_val, y_val, batch_size=eval_batch_size(len(y_val), replicas))
    patience = PatienceStopping(plan) if plan.auto else None
    budget = (TimeBudget(plan.time_budget_s, plan.epochs, lr_schedule, steps_per_epoch(splits, batch_size))
              if plan.time_budget_s is not None else None)
    record = EpochRecord(label, plan, lr_schedule, budget, log)
    # Driven here rather than by model.fit, which would start them afresh every epoch.
    ours = keras.callbacks.CallbackList([c for c in (patience, budget, record) if c is not None], model=model)
    ours.on_train_begin()
    for epoch in range(plan.epochs):
        ours.on_epoch_begin(epoch)
        epoch_data = epoch_dataset(splits.x_train, y_train, batch_size, seed, label, epoch, augment, replicas)
        logs = model.fit(epoch_data, validation_data=val_data, initial_epoch=epoch, epochs=epoch + 1,
                         verbose=0, class_weight=class_weight, callbacks=list(callbacks)).history
        ours.on_epoch_end(epoch, {k: float(v[-1]) for k, v in logs.items()})
        if model.stop_training:
            break
    ours.on_train_end()  # restores the best epoch's weights under plan.auto
    epochs = len(record.history["loss"])
    restored = plan.auto and 0 < record.best_epoch < epochs
    if restored:
        log(f"[{label}] restored the weights of epoch {record.best_epoch} (val top-1 {record.best * 100:.2f}%)")
    stopped = ("patience" if patience is not None and patience.stopped
               else "time_budget" if budget is not None and budget.stopped
               else "max_epochs" if plan.auto else "fixed")
    return {"history": record.history, "epoch_seconds": record.epoch_seconds, "epochs": epochs,
            "best_epoch": record.best_epoch, "restored": restored, "stopped": stopped, "plan": plan.to_dict(),
            "lr_end_epoch": budget.end if budget is not None else plan.epochs}


def steps_per_epoch(splits, batch_size: int) -> int:
    return int(np.ceil(len(splits.x_train) / batch_size))


def steps_for(splits, epochs: int, batch_size: int) -> int:
    return epochs * steps_per_epoch(splits, batch_size)


def keras_top1(model, x, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of a Keras model on images ``x`` (an ImageSet or an array)."""
    from pipeline.train.stream import predict

    probs = predict(model, x, batch_size)
    return float(np.mean(np.argmax(probs, axis=1) == y) * 100.0)

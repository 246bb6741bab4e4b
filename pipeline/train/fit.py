"""Shared training machinery: TensorFlow set-up, distribution strategy, fit loop, progress.

Float training, pruning, clustering and QAT all train through :func:`fit`, so they
share the optimizer schedule, the distribution strategy and the progress output.
"""

import os
import time
from typing import Callable, Dict

import numpy as np

from pipeline.recipe.schema import TrainConfig
from pipeline.errors import ConfigError
from pipeline.native import tf_environment

tf_environment()  # before any TensorFlow import: tfmot only works on Keras 2 (tf_keras)

_configured = False


#: Training stages run TensorFlow with op determinism (the manifest records this).
OP_DETERMINISM = True


def setup_tensorflow(seed: int, logical_devices: int = 0) -> None:
    """Seeds every RNG, turns on op determinism, and optionally splits the CPU.

    Must run before TensorFlow creates its devices; repeated calls only reseed.

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


def _progress_callback(label: str, epochs: int, log: Callable[[str], None]):
    import tf_keras as keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            parts = [f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")]
            log(f"[{label}] epoch {epoch + 1}/{epochs}  {'  '.join(parts)}  ({time.perf_counter() - self.t0:.1f} s)")

    return Progress()


def compile_model(model, learning_rate: float, steps: int) -> None:
    """Adam with cosine decay over ``steps``, sparse cross-entropy on probabilities."""
    import tf_keras as keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])


def fit(model, splits, *, epochs: int, batch_size: int, label: str,
        callbacks=(), log: Callable[[str], None] = print) -> Dict[str, list]:
    """Trains a compiled model on the train split, validating on the val split.

    Returns:
        The Keras history dict (per-epoch loss/accuracy).
    """
    history = model.fit(
        splits.x_train, splits.y_train,
        validation_data=(splits.x_val, splits.y_val),
        epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
        callbacks=[*callbacks, _progress_callback(label, epochs, log)],
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def steps_for(splits, epochs: int, batch_size: int) -> int:
    return epochs * int(np.ceil(len(splits.x_train) / batch_size))


def keras_top1(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of a Keras model."""
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == y) * 100.0)

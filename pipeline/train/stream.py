"""tf.data pipelines over an :class:`pipeline.data.images.ImageSet`: how every stage feeds Keras.

Training, validation, prediction and top-1 read photos from the decoded-image cache
batch by batch, never a whole split at once: a Python generator reads each batch
(one ``pread`` per image) and applies the epoch's augmentation (drawn up front, so a
batch size or a worker count never changes the images); ``prefetch`` overlaps that
with the model's step. The built-in sets, small and already in memory, are
augmented a whole epoch at a time and sliced into batches by ``tf.data`` itself (a
generator's per-batch Python costs more than their small steps do).

Under ``MultiWorkerMirroredStrategy`` (``train.strategy: multi-worker``) each worker
reads only its own share of each epoch (:func:`worker_share`): TensorFlow's
auto-sharding is off, and worker i of n takes every n-th image of the epoch's order.
"""

import dataclasses
import json
import os
from typing import Iterator, Optional, Tuple

import numpy as np

from pipeline.data.augment import AugmentDraw, apply_augment, draw_augment, epoch_rng
from pipeline.data.images import ImageSet, as_image_set
from pipeline.recipe.schema import AugmentConfig


def worker_share() -> Tuple[int, int]:
    """``(this worker's index, number of workers)`` from TF_CONFIG; ``(0, 1)`` without a cluster."""
    try:
        cfg = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
        workers = len(cfg.get("cluster", {}).get("worker", []))
        task = cfg.get("task", {})
    except (ValueError, AttributeError):
        return 0, 1
    if workers > 1 and task.get("type") == "worker":
        return int(task.get("index", 0)), workers
    return 0, 1


def _dataset(gen, shape, y_shape, y_dtype, arrays=None, batch_size=None):
    """From ``gen`` (batches read on demand), or from ``arrays`` (x, y) held in memory."""
    import tensorflow as tf

    if arrays is not None:
        ds = tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
    else:
        sig = (tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None, *y_shape), y_dtype))
        ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    options = tf.data.Options()
    # Sharding is ours (worker_share): each worker's generator already reads only its images.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def train_dataset(images: ImageSet, y: np.ndarray, order: np.ndarray, batch_size: int,
                  augment: Optional[AugmentDraw] = None, share: Tuple[int, int] = (0, 1)):
    """One epoch of ``(x, y)`` batches in ``order``, augmented by ``augment`` (drawn for ``order``).

    With ``share = (i, n)``, n > 1, the worker reads every n-th position of ``order``
    from i, all workers the same number of images, in batches of ``batch_size // n``
    (the global batch stays ``batch_size``).
    """
    import tensorflow as tf

    images = as_image_set(images)
    index, count = share
    positions = np.arange(len(order))
    if count > 1:
        per_worker = len(order) // count
        positions = positions[index::count][:per_worker]
        batch_size = max(1, batch_size // count)

    def gen() -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for s in range(0, len(positions), batch_size):
            pos = positions[s:s + batch_size]
            idx = order[pos]
            x = images[idx]
            if augment is not None:
                x = apply_augment(x, _draw_at(augment, pos))
            yield x, y[idx]

    y_dtype = tf.float32 if y.ndim > 1 else tf.int64
    arrays = None
    if images.in_memory:  # small built-in sets: the epoch's images at once, sliced by tf.data
        idx = order[positions]
        x = images[idx]
        arrays = (x if augment is None else apply_augment(x, _draw_at(augment, positions)), y[idx])
    return _dataset(gen, images.image_shape, y.shape[1:], y_dtype, arrays, batch_size)


def _draw_at(draw: AugmentDraw, pos: np.ndarray) -> AugmentDraw:
    return AugmentDraw(*(getattr(draw, f.name)[pos] for f in dataclasses.fields(draw)))


def epoch_dataset(images: ImageSet, y: np.ndarray, batch_size: int, seed: int, label: str, epoch: int,
                  augment: Optional[AugmentConfig] = None, replicas: int = 1):
    """Epoch ``epoch`` of stage ``label``: a shuffle of the split and, with ``augment``
    enabled, the transforms of its images, both drawn from (seed, label, epoch)
    (:func:`pipeline.data.augment.epoch_rng`); this worker's share under multi-worker.

    With ``replicas`` > 1 (this process's: a MirroredStrategy's), a last batch that would
    leave a replica empty is left out of the epoch (its images are the shuffle's last, so
    other epochs train on them): see :func:`fills_every_replica`. A multi-worker worker
    has one replica, and the workers' shares are equal (:func:`train_dataset`)."""
    rng = epoch_rng(seed, label, epoch)
    order = rng.permutation(len(images))
    draw = draw_augment(len(order), augment, rng) if augment is not None and augment.enabled else None
    left = len(order) % batch_size
    if not fills_every_replica(left, batch_size, replicas):
        order = order[:len(order) - left]
    return train_dataset(images, y, order, batch_size, draw, worker_share())


def fills_every_replica(last: int, batch_size: int, replicas: int) -> bool:
    """Whether a last batch of ``last`` images (0: none) gives each of ``replicas`` at least one.

    A MirroredStrategy fills its replicas in turn with ``batch_size // replicas`` images
    each (the first ``batch_size % replicas`` one more) when the batch size is known, and
    evenly when it is not; an empty replica batch fails in TensorFlow's oneDNN depthwise
    convolution ("input depth must be evenly divisible by filter depth: 1 vs 8", seen on
    an AVX-512 CPU). The condition here holds for both ways of filling."""
    return replicas <= 1 or last == 0 or last > batch_size - batch_size // replicas


def eval_batch_size(n: int, replicas: int = 1, largest: int = 256) -> int:
    """The largest batch, at most ``largest`` and at least ``replicas`` (a full batch gives
    each replica an image), whose last batch of ``n`` images fills every one of
    ``replicas`` (:func:`fills_every_replica`); ``largest`` with one replica, or when no
    batch does (fewer images than replicas)."""
    return next((b for b in range(largest, replicas - 1, -1) if fills_every_replica(n % b, b, replicas)),
                largest)


def eval_dataset(images: ImageSet, y: Optional[np.ndarray] = None, batch_size: int = 256):
    """``(x, y)`` batches (or ``(x, 0)`` without labels) in stored order, for evaluation and prediction."""
    import tensorflow as tf

    images = as_image_set(images)
    labels = np.zeros(len(images), np.int64) if y is None else np.asarray(y)

    def gen():
        for s in range(0, len(images), batch_size):
            yield images[s:s + batch_size], labels[s:s + batch_size]

    y_dtype = tf.float32 if labels.ndim > 1 else tf.int64
    arrays = (images[:], labels) if images.in_memory else None
    return _dataset(gen, images.image_shape, labels.shape[1:], y_dtype, arrays, batch_size)


def predict(model, images, batch_size: int = 256) -> np.ndarray:
    """The model's outputs on ``images`` (an ImageSet, streamed; or an array)."""
    if not isinstance(images, ImageSet) or images.in_memory:
        return model.predict(images[:], batch_size=batch_size, verbose=0)
    if not len(images):
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    ds = eval_dataset(images, batch_size=batch_size).map(lambda x, y: x)
    return model.predict(ds, verbose=0)

"""The one fine-tune runner every compression technique trains through.

A stage reads a Keras model written by an earlier stage and writes a new one; it
never changes its input. The runner fixes the order of every stage:

    set up TensorFlow (seed, determinism) and the recipe's distribution strategy
    -> load the source -> technique.wrap -> compile -> fit (technique's callbacks,
    epochs, learning rate) -> technique.strip -> technique.save
    -> technique.reload + check it gives the trained outputs (when it has one)
    -> technique.measure + keras top-1 on val/test

A technique (:class:`Technique`) is a small frozen object that says only what
differs: how to wrap (pruning wrappers, a QAT scheme, clustering wrappers), how to
strip, how to save and reload, what to measure. See :mod:`pipeline.compress.prune`,
:mod:`pipeline.compress.qat` and :mod:`pipeline.compress.cluster`.
"""

from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from pipeline.recipe.schema import Recipe
from pipeline.train.fit import (class_weights, compile_model, fit, keras_top1, make_strategy, setup_tensorflow,
                                steps_for)
from pipeline.train.schedule import Plan
from pipeline.train.keras_io import load_keras, save_keras
from pipeline.errors import Log


# Facts a technique records while wrapping (e.g. the input's sparsity, the layers it
# wrapped) and reads back when it describes the run and measures its result.
Facts = Dict[str, Any]

# Validation images the reload check compares on; eager calls, so a probe batch does
# not pay for tracing predict.
RELOAD_PROBE = 32
RELOAD_TOLERANCE = 1e-5


class Technique:
    """What a compression technique tells :func:`fine_tune`.

    Subclasses (frozen dataclasses) have ``label`` (progress lines and the fit's
    label), ``epochs`` and ``learning_rate`` (the peak of the cosine schedule), and
    override the steps that differ; the defaults here are those of a technique with
    no callbacks, nothing to strip, a whole-model ``.h5`` and no reload check.
    """

    label: str
    epochs: int
    learning_rate: float

    def plan(self) -> Plan:
        """How the fit runs: ``epochs`` epochs, no early stopping, by default."""
        return Plan(self.epochs)

    def wrap(self, model, steps: int) -> Tuple[Any, Facts]:
        """The model to train (called inside the strategy scope) and the facts to keep."""
        raise NotImplementedError

    def callbacks(self) -> Sequence:
        """Keras callbacks the fit needs (e.g. tfmot's pruning step)."""
        return ()

    def describe(self, steps: int, facts: Facts) -> str:
        """The progress line before training (without the label and the replicas)."""
        raise NotImplementedError

    def strip(self, model):
        """The trained model without training-only wrappers (inside the strategy scope)."""
        return model

    def save(self, model, out: Path) -> None:
        """Writes the stripped model to ``out`` atomically: the whole model as ``.h5`` by default."""
        save_keras(model, out)

    def reload(self, src: Path, out: Path):
        """The model read back from ``out`` as later stages read it, or None: no check."""
        return None

    def reload_failure(self, src: Path, out: Path) -> str:
        """The start of the error raised when the reloaded model differs."""
        return f"{self.label} result {out} does not reload faithfully"

    def measure(self, saved, facts: Facts) -> Dict:
        """Metrics of the saved model (the reloaded one if the technique reloads); may raise."""
        raise NotImplementedError

    def summary(self, metrics: Dict) -> str:
        """The progress line after training, before the top-1 figures."""
        raise NotImplementedError


def fine_tune(recipe: Recipe, splits, src: Path, out: Path, technique: Technique,
              log: Log = print) -> Dict:
    """Fine-tunes the Keras model at ``src`` with ``technique``; writes ``out``.

    Args:
        recipe: the frozen recipe (seed, train.batch_size/strategy/logical_devices).
        splits: the data splits (``x_train``, ``y_train``, ``x_val``, ``y_val``,
            ``x_test``, ``y_test``).
        src: the Keras model (``.h5``) to start from, read only.
        out: where the technique writes its result (atomically).
        technique: what to wrap, strip, save, reload and measure.
        log: progress output.

    Returns:
        metrics: the technique's own (:meth:`Technique.measure`), then
        ``val_top1``/``test_top1`` (percent, of the trained model),
        ``reload_max_abs_diff`` (when the technique reloads), ``history`` (per epoch),
        ``epochs``, ``best_epoch`` (by validation top-1), ``replicas``; under an ``auto``
        plan (:meth:`Technique.plan`) also ``plan``, ``stopped`` and ``restored`` (as
        :func:`pipeline.train.fit.fit` returns them).

    Raises:
        RuntimeError: the saved file does not reload to the trained model's outputs,
            or the technique's measurement finds its promise broken.
    """
    t = recipe.train
    setup_tensorflow(recipe.seed, t.logical_devices)
    strategy = make_strategy(t)
    plan = technique.plan()
    steps = steps_for(splits, plan.epochs, t.batch_size)
    with strategy.scope():
        model = load_keras(src)
        wrapped, facts = technique.wrap(model, steps)
        compile_model(wrapped, technique.learning_rate, steps)
    replicas = int(strategy.num_replicas_in_sync)
    log(f"[{technique.label}] {technique.describe(steps, facts)}, {replicas} replica(s)")
    # The float stage's augmentation and class weights; the technique's plan: a fixed length
    # unless it says otherwise (restoring an earlier epoch would undo a pruning schedule
    # that had not finished).
    weights = class_weights(splits.y_train, splits.num_classes) if t.class_weight == "balanced" else None
    run = fit(wrapped, splits, plan=plan, batch_size=t.batch_size, label=technique.label,
              seed=recipe.seed, augment=t.augment, class_weight=weights, callbacks=technique.callbacks(), log=log)
    with strategy.scope():
        trained = technique.strip(wrapped)
    technique.save(trained, out)

    # The file is what later stages use: check it reloads to the same function.
    reloaded = technique.reload(src, out)
    probe = splits.x_val[:RELOAD_PROBE]
    diff = None if reloaded is None else _reload_diff(reloaded, trained, probe)
    if diff is not None and not diff <= RELOAD_TOLERANCE:
        raise RuntimeError(f"{technique.reload_failure(src, out)}: outputs differ by {diff:.3g} "
                           f"on {len(probe)} validation images")
    metrics = technique.measure(trained if reloaded is None else reloaded, facts)
    metrics["val_top1"] = keras_top1(trained, splits.x_val, splits.y_val)
    metrics["test_top1"] = keras_top1(trained, splits.x_test, splits.y_test)
    if diff is not None:
        metrics["reload_max_abs_diff"] = diff
    metrics["history"] = run["history"]
    metrics["epochs"] = run["epochs"]
    metrics["best_epoch"] = run["best_epoch"]
    if plan.auto:
        metrics.update(plan=run["plan"], stopped=run["stopped"], restored=run["restored"])
    metrics["replicas"] = replicas
    log(f"[{technique.label}] {technique.summary(metrics)}; "
        f"val top-1 {metrics['val_top1']:.2f}%, test top-1 {metrics['test_top1']:.2f}%")
    return metrics


def _reload_diff(reloaded, trained, probe: np.ndarray) -> float:
    # The reloaded model first, as the stages always did.
    return float(np.max(np.abs(reloaded(probe, training=False).numpy() - trained(probe, training=False).numpy())))


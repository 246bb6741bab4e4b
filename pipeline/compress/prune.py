"""Magnitude pruning (a target sparsity, or an M:N pattern such as 2:4).

The stage, run by :func:`pipeline.compress.runner.fine_tune`:

    load float -> prune_low_magnitude -> fit (UpdatePruningStep) -> strip_pruning -> save (.h5)

tfmot facts it relies on (tfmot 0.8.1, tf-keras 2.21):

- Only Conv2D and Dense kernels are pruned. tfmot's prune registry lists
  DepthwiseConv2D with *no* prunable weights, so depthwise kernels stay dense; the
  per-layer table reports them (``pruned: false``) rather than hiding them.
- ``sparsity_m_by_n`` fixes the pattern (M zeros in every N consecutive input
  channels, i.e. along the last axis of the TFLite kernel); the polynomial schedule
  then only decides *when* masks are updated, so the sparsity is M/N whatever
  ``target_sparsity`` says. A kernel whose input channels are fewer than N (the
  stem conv of a 1-channel model) is zero-padded to N inside tfmot and stays dense.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from pipeline.compress.kernels import KERNEL_KINDS, PRUNABLE_KINDS, kernel_table, layer_kind, \
    prunable_sparsity, zeros_fraction
from pipeline.compress.runner import Facts, Log, Technique, fine_tune
from pipeline.recipe.schema import Recipe

# Pruning ends this fraction of the way through the pruning steps, so that the last
# steps fine-tune at the final sparsity instead of recovering from the last mask update.
PRUNE_END_FRACTION = 0.8
# Masks are updated about this many times between begin and end (tfmot's default
# frequency of 100 steps would never fire in a short run), at most every 100 steps.
PRUNE_MASK_UPDATES = 10


def pruning_steps(total_steps: int) -> Tuple[int, int]:
    """(end_step, frequency) of the pruning schedule for ``total_steps`` training steps.

    tfmot counts steps from 1 (the first batch runs at step 1) and updates masks at
    steps that are multiples of ``frequency`` up to and including ``end_step``; the
    target sparsity is reached at ``end_step``, so ``end_step`` is a multiple of
    ``frequency`` and no later than the last step.
    """
    end = max(1, int(total_steps * PRUNE_END_FRACTION))
    frequency = max(1, min(100, end // PRUNE_MASK_UPDATES))
    return max(frequency, end - end % frequency), frequency


@dataclass(frozen=True)
class MagnitudePruning(Technique):
    """Prunes Conv2D/Dense kernels to ``target_sparsity`` (or ``m_by_n``), then strips.

    A polynomial schedule from 0 to ``target_sparsity`` over :func:`pruning_steps`;
    with ``m_by_n`` the pattern fixes the sparsity at M/N.
    """

    target_sparsity: float
    m_by_n: Optional[Tuple[int, int]]
    epochs: int
    learning_rate: float
    label: str = "prune"

    def wrap(self, model, steps: int):
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras

        sparsity = tfmot.sparsity.keras
        end_step, frequency = pruning_steps(steps)
        schedule = sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=self.target_sparsity,
                                            begin_step=0, end_step=end_step, frequency=frequency)

        def wrap_layer(layer):
            # Only Conv2D/Dense: DepthwiseConv2D has nothing to prune, and wrapping every
            # layer would fail on our custom activations (not in tfmot's prune registry).
            if layer_kind(layer) in PRUNABLE_KINDS:
                return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule,
                                                    sparsity_m_by_n=self.m_by_n)
            return layer

        wrapped = keras.models.clone_model(model, clone_function=wrap_layer)
        return wrapped, {"steps": steps, "end_step": end_step, "frequency": frequency}

    def callbacks(self):
        import tensorflow_model_optimization as tfmot

        return [tfmot.sparsity.keras.UpdatePruningStep()]

    def describe(self, steps: int, facts: Facts) -> str:
        m_by_n = self.m_by_n
        pattern = f"{m_by_n[0]}:{m_by_n[1]}" if m_by_n else f"target {self.target_sparsity:.0%}"
        return f"{pattern}, {steps} steps (masks every {facts['frequency']} to step {facts['end_step']})"

    def strip(self, model):
        import tensorflow_model_optimization as tfmot

        return tfmot.sparsity.keras.strip_pruning(model)

    def measure(self, saved, facts: Facts) -> Dict:
        m_by_n = self.m_by_n
        layers = kernel_table(saved, pruned=True)
        return {
            "layers": layers,
            "sparsity": prunable_sparsity(layers),
            "sparsity_all_kernels": zeros_fraction(layers, KERNEL_KINDS),
            "target_sparsity": float(m_by_n[0] / m_by_n[1]) if m_by_n else float(self.target_sparsity),
            "m_by_n": list(m_by_n) if m_by_n else None,
            "schedule": {"kind": "PolynomialDecay", "begin_step": 0, "end_step": facts["end_step"],
                         "frequency": facts["frequency"], "total_steps": facts["steps"]},
        }

    def summary(self, metrics: Dict) -> str:
        return (f"sparsity {metrics['sparsity']:.1%} of Conv2D/Dense kernels "
                f"({metrics['sparsity_all_kernels']:.1%} incl. depthwise)")


def prune_model(recipe: Recipe, splits, src: Path, out: Path, log: Log = print) -> Dict:
    """Prunes the Conv2D/Dense kernels of the Keras model at ``src``; writes ``out``.

    Magnitude pruning with a polynomial schedule from 0 to
    ``recipe.prune.target_sparsity`` (or an M:N pattern when ``recipe.prune.m_by_n``
    is set), trained for ``recipe.prune.epochs`` at ``recipe.prune.learning_rate``
    under the recipe's distribution strategy; the pruning wrappers are stripped
    before saving, so ``out`` is a plain float model with zeros in its kernels.

    Args:
        recipe: the frozen recipe (seed, prune, train.batch_size/strategy).
        splits: the data splits (``x_train``, ``y_train``, ``x_val``, ``y_val``,
            ``x_test``, ``y_test``).
        src: the float Keras model (``.h5``), read only.
        out: where to write the pruned model (``.h5``, atomically).
        log: progress output.

    Returns:
        metrics: ``layers`` (one row per Conv2D/DepthwiseConv2D/Dense kernel: name,
        kind, shape, params, zeros fraction, pruned, note), ``sparsity`` (zeros in
        all prunable kernels), ``sparsity_all_kernels``, ``target_sparsity``,
        ``m_by_n``, ``schedule``, ``val_top1``/``test_top1`` (percent),
        ``history``, ``replicas``.
    """
    p = recipe.prune
    technique = MagnitudePruning(target_sparsity=p.target_sparsity,
                                 m_by_n=tuple(p.m_by_n) if p.m_by_n else None,
                                 epochs=p.epochs, learning_rate=p.learning_rate)
    return fine_tune(recipe, splits, src, out, technique, log)

"""Quantization-aware training: plain QAT, or prune-preserving QAT (PQAT) of a pruned model.

The stage, run by :func:`pipeline.compress.runner.fine_tune`:

    load float or pruned -> quantize_annotate -> quantize_apply -> fit -> save (.h5)
    -> reload (inside quantize_scope) and check

tfmot facts it relies on (tfmot 0.8.1, tf-keras 2.21):

- With ``Default8BitPrunePreserveQuantizeScheme`` the weight quantizer multiplies
  kernels by a mask of their non-zeros; the masked weights get zero gradients, so
  Adam never moves them and the raw kernels stay exactly sparse through QAT. That
  mask is not serialised: a QAT model reloaded from ``.h5`` is a plain QAT model
  whose kernels are (still) sparse. Train it further only through this stage.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from pipeline.compress.kernels import kernel_table, prunable_sparsity
from pipeline.compress.runner import Facts, Log, Technique, fine_tune
from pipeline.recipe.schema import Recipe
from pipeline.train.keras_io import load_keras_shared


@dataclass(frozen=True)
class QuantizationAware(Technique):
    """QAT with ``scheme`` (``pqat`` or ``default``, names in :data:`models.quantize.SCHEMES`).

    Saves the whole QAT model (``.h5``) and checks that it reloads to the same outputs.
    """

    scheme: str
    epochs: int
    learning_rate: float
    label: str = "qat"

    @property
    def pruned(self) -> bool:
        """Whether the source was pruned (the prune-preserving scheme keeps its zeros)."""
        return self.scheme == "pqat"

    def wrap(self, model, steps: int):
        import tensorflow_model_optimization as tfmot

        from models.quantize import get_scheme, quantize_scope
        from pipeline.train.zoo import quantize_annotate

        sparsity_in = prunable_sparsity(kernel_table(model, pruned=self.pruned))
        annotated = quantize_annotate(model, self.scheme)
        quantize_scheme = get_scheme(self.scheme)
        with quantize_scope():
            qat = tfmot.quantization.keras.quantize_apply(annotated, quantize_scheme)
        return qat, {"sparsity_in": sparsity_in, "scheme_class": type(quantize_scheme).__name__}

    def describe(self, steps: int, facts: Facts) -> str:
        return f"scheme {self.scheme} ({facts['scheme_class']}), {steps} steps"

    def reload(self, src: Path, out: Path):
        return load_keras_shared(out, quantized=True)

    def reload_failure(self, src: Path, out: Path) -> str:
        return f"QAT model {out} does not reload faithfully"

    def measure(self, saved, facts: Facts) -> Dict:
        layers = kernel_table(saved, pruned=self.pruned)
        return {
            "scheme": self.scheme,
            "scheme_class": facts["scheme_class"],
            "sparsity": prunable_sparsity(layers),
            "sparsity_in": facts["sparsity_in"],
            "layers": layers,
        }

    def summary(self, metrics: Dict) -> str:
        return (f"sparsity {metrics['sparsity']:.1%} of Conv2D/Dense kernels "
                f"(in: {metrics['sparsity_in']:.1%})")


def qat_model(recipe: Recipe, splits, src: Path, out: Path, log: Log = print) -> Dict:
    """Quantization-aware training of the Keras model at ``src``; writes ``out``.

    Uses tfmot's prune-preserving 8-bit scheme (PQAT) when ``recipe.prune.enabled``
    (``src`` is then the pruned model), the default 8-bit scheme otherwise. Layers
    tfmot does not know (hard-swish, hard-sigmoid, the SE Multiply) get their
    configs from :mod:`models.quantize`. Trains ``recipe.qat.epochs`` at
    ``recipe.qat.learning_rate`` under the recipe's strategy, saves ``.h5`` and
    checks that the file reloads (inside ``quantize_scope``) to the same outputs.

    Args:
        recipe: the frozen recipe (seed, qat, prune.enabled, train.batch_size/strategy).
        splits: the data splits.
        src: the float or pruned Keras model (``.h5``), read only.
        out: where to write the QAT model (``.h5``, atomically).
        log: progress output.

    Returns:
        metrics: ``scheme`` ("pqat" or "default"), ``scheme_class``, ``sparsity``
        (zeros in prunable kernels of the saved QAT model), ``sparsity_in`` (of ``src``),
        ``layers``, ``val_top1``/``test_top1`` (percent), ``reload_max_abs_diff``,
        ``history``, ``replicas``.

    Raises:
        UnsupportedLayerError: a layer cannot be quantized (from models.quantize).
        RuntimeError: the saved file does not reload to the trained model's outputs.
    """
    q = recipe.qat
    technique = QuantizationAware(scheme="pqat" if recipe.prune.unstructured else "default",
                                  epochs=q.epochs, learning_rate=q.learning_rate)
    return fine_tune(recipe, splits, src, out, technique, log)

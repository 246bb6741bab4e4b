"""The optimization stages: magnitude pruning, then (prune-preserving) quantization-aware training.

Both stages read a Keras model written by an earlier stage and write a new one;
neither changes its input. The wrap/unwrap order is fixed:

    prune:  load float -> prune_low_magnitude -> fit (UpdatePruningStep) -> strip_pruning -> save
    qat:    load float or pruned -> quantize_annotate -> quantize_apply -> fit -> save (.h5)

tfmot facts these stages rely on (tfmot 0.8.1, tf-keras 2.21):

- Only Conv2D and Dense kernels are pruned. tfmot's prune registry lists
  DepthwiseConv2D with *no* prunable weights, so depthwise kernels stay dense; the
  per-layer table reports them (``pruned: false``) rather than hiding them.
- ``sparsity_m_by_n`` fixes the pattern (M zeros in every N consecutive input
  channels, i.e. along the last axis of the TFLite kernel); the polynomial schedule
  then only decides *when* masks are updated, so the sparsity is M/N whatever
  ``target_sparsity`` says. A kernel whose input channels are fewer than N (the
  stem conv of a 1-channel model) is zero-padded to N inside tfmot and stays dense.
- With ``Default8BitPrunePreserveQuantizeScheme`` the weight quantizer multiplies
  kernels by a mask of their non-zeros; the masked weights get zero gradients, so
  Adam never moves them and the raw kernels stay exactly sparse through QAT. That
  mask is not serialised: a QAT model reloaded from ``.h5`` is a plain QAT model
  whose kernels are (still) sparse. Train it further only through this stage.
"""

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from pipeline.recipe.schema import Recipe
from pipeline.train.keras_io import load_keras, save_keras
from pipeline.train.fit import (compile_model, fit, keras_top1, make_strategy, setup_tensorflow,
                               steps_for)

Log = Callable[[str], None]

PRUNABLE_KINDS = ("Conv2D", "Dense")
KERNEL_KINDS = ("Conv2D", "DepthwiseConv2D", "Dense")
DEPTHWISE_NOTE = "tfmot never prunes DepthwiseConv2D (no prunable weights in its registry)"

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
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    sparsity = tfmot.sparsity.keras
    p, t = recipe.prune, recipe.train
    setup_tensorflow(recipe.seed, t.logical_devices)
    strategy = make_strategy(t)
    steps = steps_for(splits, p.epochs, t.batch_size)
    end_step, frequency = pruning_steps(steps)
    schedule = sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=p.target_sparsity,
                                        begin_step=0, end_step=end_step, frequency=frequency)
    m_by_n = tuple(p.m_by_n) if p.m_by_n else None

    def wrap(layer):
        # Only Conv2D/Dense: DepthwiseConv2D has nothing to prune, and wrapping every
        # layer would fail on our custom activations (not in tfmot's prune registry).
        if _kind(layer) in PRUNABLE_KINDS:
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule,
                                                sparsity_m_by_n=m_by_n)
        return layer

    with strategy.scope():
        model = load_keras(src)
        wrapped = keras.models.clone_model(model, clone_function=wrap)
        compile_model(wrapped, p.learning_rate, steps)
    pattern = f"{m_by_n[0]}:{m_by_n[1]}" if m_by_n else f"target {p.target_sparsity:.0%}"
    log(f"[prune] {pattern}, {steps} steps (masks every {frequency} to step {end_step}), "
        f"{strategy.num_replicas_in_sync} replica(s)")
    history = fit(wrapped, splits, epochs=p.epochs, batch_size=t.batch_size, label="prune",
                  callbacks=[sparsity.UpdatePruningStep()], log=log)
    with strategy.scope():
        stripped = sparsity.strip_pruning(wrapped)
    save_keras(stripped, out)

    layers = kernel_table(stripped, pruned=True)
    metrics = {
        "layers": layers,
        "sparsity": prunable_sparsity(layers),
        "sparsity_all_kernels": _zeros(layers, KERNEL_KINDS),
        "target_sparsity": float(m_by_n[0] / m_by_n[1]) if m_by_n else float(p.target_sparsity),
        "m_by_n": list(m_by_n) if m_by_n else None,
        "schedule": {"kind": "PolynomialDecay", "begin_step": 0, "end_step": end_step,
                     "frequency": frequency, "total_steps": steps},
        "val_top1": keras_top1(stripped, splits.x_val, splits.y_val),
        "test_top1": keras_top1(stripped, splits.x_test, splits.y_test),
        "history": history,
        "replicas": int(strategy.num_replicas_in_sync),
    }
    log(f"[prune] sparsity {metrics['sparsity']:.1%} of Conv2D/Dense kernels "
        f"({metrics['sparsity_all_kernels']:.1%} incl. depthwise); "
        f"val top-1 {metrics['val_top1']:.2f}%, test top-1 {metrics['test_top1']:.2f}%")
    return metrics


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
    import tensorflow_model_optimization as tfmot

    from models.quantize import get_scheme, quantize_scope
    from pipeline.train.zoo import quantize_annotate

    q, t = recipe.qat, recipe.train
    scheme = "pqat" if recipe.prune.enabled else "default"
    setup_tensorflow(recipe.seed, t.logical_devices)
    strategy = make_strategy(t)
    steps = steps_for(splits, q.epochs, t.batch_size)
    with strategy.scope():
        model = load_keras(src)
        sparsity_in = prunable_sparsity(kernel_table(model, pruned=recipe.prune.enabled))
        annotated = quantize_annotate(model, scheme)
        quantize_scheme = get_scheme(scheme)
        with quantize_scope():
            qat = tfmot.quantization.keras.quantize_apply(annotated, quantize_scheme)
        compile_model(qat, q.learning_rate, steps)
    log(f"[qat] scheme {scheme} ({type(quantize_scheme).__name__}), {steps} steps, "
        f"{strategy.num_replicas_in_sync} replica(s)")
    history = fit(qat, splits, epochs=q.epochs, batch_size=t.batch_size, label="qat", log=log)
    save_keras(qat, out)

    # The file is what later stages use: check it reloads to the same function, and
    # measure its kernels. Eager calls: a probe batch does not pay for tracing predict.
    probe = splits.x_val[:32]
    reloaded = load_keras(out, quantized=True)
    diff = float(np.max(np.abs(reloaded(probe, training=False).numpy() - qat(probe, training=False).numpy())))
    if not diff <= 1e-5:
        raise RuntimeError(f"QAT model {out} does not reload faithfully: outputs differ by {diff:.3g} "
                           f"on {len(probe)} validation images")

    layers = kernel_table(reloaded, pruned=recipe.prune.enabled)
    metrics = {
        "scheme": scheme,
        "scheme_class": type(quantize_scheme).__name__,
        "sparsity": prunable_sparsity(layers),
        "sparsity_in": sparsity_in,
        "layers": layers,
        "val_top1": keras_top1(qat, splits.x_val, splits.y_val),
        "test_top1": keras_top1(qat, splits.x_test, splits.y_test),
        "reload_max_abs_diff": diff,
        "history": history,
        "replicas": int(strategy.num_replicas_in_sync),
    }
    log(f"[qat] sparsity {metrics['sparsity']:.1%} of Conv2D/Dense kernels (in: {sparsity_in:.1%}); "
        f"val top-1 {metrics['val_top1']:.2f}%, test top-1 {metrics['test_top1']:.2f}%")
    return metrics


# -- kernel sparsity ---------------------------------------------------------------


def _kind(layer) -> str:
    """"Conv2D", "DepthwiseConv2D", "Dense" or "" (checked by exact class name: in
    tf_keras DepthwiseConv2D is not a Conv2D, but a subclass of either should not
    be reported as its parent)."""
    import tf_keras as keras

    for kind in KERNEL_KINDS:
        if type(layer) is getattr(keras.layers, kind):
            return kind
    return ""


def _inner(layer):
    """The layer inside tfmot's wrappers (pruning, QuantizeWrapper)."""
    while hasattr(layer, "layer") and layer.__class__.__name__ in (
            "PruneLowMagnitude", "QuantizeWrapper", "QuantizeWrapperV2", "QuantizeAnnotate"):
        layer = layer.layer
    return layer


def _kernel(layer, inner, kind: str) -> np.ndarray:
    # By variable name, from the outermost wrapper: a QuantizeWrapper takes the
    # weights away from its inner layer, whose ``kernel`` attribute then holds the
    # fake-quantized (symbolic) tensor once the wrapper has been called.
    attr = "depthwise_kernel" if kind == "DepthwiseConv2D" else "kernel"
    for w in layer.weights:
        if w.name.split("/")[-1].split(":")[0] == attr:
            return w.numpy()
    raise ValueError(f"layer {inner.name!r} ({kind}) has no {attr!r} variable")


def kernel_table(model, pruned: bool) -> List[Dict]:
    """One row per Conv2D, DepthwiseConv2D and Dense kernel of ``model`` (unwrapping
    tfmot wrappers), in layer order.

    Args:
        model: a Keras model: float, pruned (stripped or not) or QAT.
        pruned: whether the pruning stage ran on it (sets ``pruned`` for Conv2D/Dense).

    Returns:
        Rows ``{"layer", "kind", "shape", "params", "zeros", "pruned", "note"}``;
        ``zeros`` is the fraction of exactly-zero kernel values.
    """
    rows = []
    for layer in model.layers:
        inner = _inner(layer)
        kind = _kind(inner)
        if not kind:
            continue
        kernel = _kernel(layer, inner, kind)
        rows.append({
            "layer": inner.name,
            "kind": kind,
            "shape": list(kernel.shape),
            "params": int(kernel.size),
            "zeros": float(np.count_nonzero(kernel == 0) / kernel.size),
            "pruned": bool(pruned and kind in PRUNABLE_KINDS),
            "note": DEPTHWISE_NOTE if kind == "DepthwiseConv2D" else "",
        })
    return rows


def _zeros(rows: List[Dict], kinds) -> float:
    selected = [r for r in rows if r["kind"] in kinds]
    total = sum(r["params"] for r in selected)
    return float(sum(r["zeros"] * r["params"] for r in selected) / total) if total else 0.0


def prunable_sparsity(rows: List[Dict]) -> float:
    """Fraction of zeros over all Conv2D/Dense kernel values of a :func:`kernel_table`."""
    return _zeros(rows, PRUNABLE_KINDS)


def format_kernel_table(rows: List[Dict]) -> str:
    """The per-layer table as Markdown (for logs and reports)."""
    lines = ["| layer | kind | shape | params | zeros | pruned |", "|---|---|---|---:|---:|---|"]
    for r in rows:
        pruned = "yes" if r["pruned"] else ("no (never pruned by tfmot)" if r["note"] else "no")
        lines.append(f"| {r['layer']} | {r['kind']} | {'x'.join(map(str, r['shape']))} | "
                     f"{r['params']:,} | {r['zeros']:.1%} | {pruned} |")
    return "\n".join(lines)

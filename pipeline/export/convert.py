"""Conversion to TFLite, one variant at a time, always validated against Keras.

Each variant is a row of :data:`pipeline.variants.VARIANTS`; a model that fails
validation is never written.
"""

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from pipeline.recipe.schema import Recipe
from pipeline.errors import ConversionMismatchError, Log
from pipeline.native import captured_stderr
from pipeline.store.atomic import atomic_write_bytes
from pipeline.tflite.converter import apply_variant
from pipeline.tflite.reader import float_compute_ops, parse_tflite
from pipeline.tflite.host import run_tflite
from pipeline.variants import VARIANTS, Variant


def convert_keras(model, variant: Variant, calibration: Optional[np.ndarray], int8_io: bool) -> bytes:
    """Runs the TFLite converter on a Keras model for ``variant``; returns the flatbuffer."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
    # from_keras_model round-trips through a SavedModel: ~60-150 s per small QAT model
    # on 2 cores, against ~5 s for freezing the function directly (same op list).
    conv.experimental_lower_to_saved_model = False
    apply_variant(conv, variant, calibration, int8_input=int8_io, int8_output=int8_io)
    return conv.convert()


def validate_conversion(tflite: bytes, keras_probs: np.ndarray, x: np.ndarray, variant: Variant,
                        name: str) -> Dict:
    """Compares TFLite outputs with Keras on a fixed batch.

    Raises:
        ConversionMismatchError: beyond the variant's tolerance, or a full-integer
            model that still computes in float.
    """
    model = parse_tflite(tflite, name)
    tfl_probs = run_tflite(tflite, x)
    max_abs = float(np.max(np.abs(tfl_probs - keras_probs)))
    agreement = float(np.mean(np.argmax(tfl_probs, 1) == np.argmax(keras_probs, 1)))
    if variant.max_abs_diff is not None and max_abs > variant.max_abs_diff:
        raise ConversionMismatchError(
            f"{name}: TFLite output differs from Keras by {max_abs:.3g} (tolerance {variant.max_abs_diff:g}) "
            f"on {len(x)} validation images")
    if variant.min_agreement is not None and agreement < variant.min_agreement:
        raise ConversionMismatchError(
            f"{name}: TFLite top-1 agrees with Keras on {agreement:.1%} of {len(x)} validation images "
            f"(minimum {variant.min_agreement:.0%})")
    float_ops = float_compute_ops(model) if variant.full_integer else []
    if float_ops:
        raise ConversionMismatchError(
            f"{name}: full-integer model still computes in float: {', '.join(sorted(set(float_ops)))}")
    return {"validation_max_abs_diff": max_abs, "validation_agreement": agreement,
            "validation_samples": int(len(x))}


def convert_variant(recipe: Recipe, variant_name: str, source_path: Path, splits, out: Path,
                    log: Log = print, model=None) -> Dict:
    """Converts the Keras model at ``source_path`` to ``variant_name``, validates, writes ``out``.

    Args:
        model: the model at ``source_path`` when the caller rebuilt it: the CQAT/PCQAT
            sources hold only weights and reload only by rebuilding the clustered model
            (:func:`pipeline.compress.cluster.load_cluster_qat`). Else it is loaded here.

    Returns:
        metrics: validation figures and the converted size.
    """
    from pipeline.train.keras_io import load_keras_shared
    from pipeline.train.fit import setup_tensorflow

    variant = VARIANTS.get(variant_name)
    setup_tensorflow(recipe.seed, recipe.train.logical_devices)
    if model is None:
        model = load_keras_shared(source_path, quantized=variant.source != "float")
    c = recipe.convert
    calib = splits.x_train[: c.calibration_samples] if variant.full_integer else None
    log(f"[convert/{variant_name}] converting {source_path.name}")
    with captured_stderr():  # the converter's C++ chatter
        tflite = convert_keras(model, variant, calib, c.int8_io)
    x_val = splits.x_test[: c.validation_samples]
    keras_probs = model.predict(x_val, batch_size=64, verbose=0)
    metrics = validate_conversion(tflite, keras_probs, x_val, variant, f"{variant_name} ({out.name})")
    atomic_write_bytes(out, tflite)
    metrics["size_bytes"] = len(tflite)
    log(f"[convert/{variant_name}] {len(tflite) / 1024:.1f} KiB, agreement {metrics['validation_agreement']:.1%}, "
        f"max |diff| {metrics['validation_max_abs_diff']:.2g}")
    return metrics

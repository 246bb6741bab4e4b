"""The TFLite converter's settings for a variant of the variant table (classifiers and
detectors set them the same way)."""

from typing import Optional

import numpy as np

from pipeline.variants import Variant


def apply_variant(conv, variant: Variant, calibration: Optional[np.ndarray], int8_input: bool = False,
                  int8_output: bool = False) -> None:
    """Sets ``conv`` (a ``tf.lite.TFLiteConverter``) for ``variant``: the default
    optimizations, float16 weights, or full integer with ``calibration`` (float
    images in [0, 1]) as the representative set, and int8 input/output tensors.

    Raises:
        ValueError: a full-integer variant without calibration data.
    """
    import tensorflow as tf

    if variant.optimize:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant.float16:
        conv.target_spec.supported_types = [tf.float16]
    if not variant.full_integer:
        return
    if calibration is None or len(calibration) == 0:
        raise ValueError("full-integer conversion needs calibration data")

    def representative():
        for i in range(len(calibration)):
            yield [np.asarray(calibration[i:i + 1], np.float32)]

    # TF 2.21 needs a representative set even for QAT models once INT8 builtins are required.
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_input:
        conv.inference_input_type = tf.int8
    if int8_output:
        conv.inference_output_type = tf.int8

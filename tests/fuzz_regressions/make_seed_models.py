"""Writes the two tiny seed models of the fuzz tests (run once; the outputs are committed).

    .venv/bin/python tests/fuzz_regressions/make_seed_models.py

A conv -> depthwise -> pool -> dense network on 8x8x1 inputs, converted to float32
and to full int8: about 2-4 KB each, with every table the pipeline reads (opcodes,
buffers, tensors with quantization, operators), so byte mutations reach all of
the parser's paths quickly.
"""

from pathlib import Path

import numpy as np

from pipeline.native import import_tensorflow

tf = import_tensorflow()  # sets TensorFlow's environment first: tf_keras needs it
import tf_keras as keras  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(3, activation="softmax", name="dense"),
    ])
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    (HERE / "seed_float32.tflite").write_bytes(conv.convert())
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):
            yield [rng.random((1, 8, 8, 1), dtype=np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    (HERE / "seed_int8.tflite").write_bytes(conv.convert())


if __name__ == "__main__":
    main()

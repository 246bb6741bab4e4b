"""models/: every registered family builds, matches its paper's size, and QATs to an
all-int8 TFLite file. Table-driven from ``models.FAMILIES``."""

import functools
import re
import subprocess
import sys

import numpy as np
import pytest

from models import CUSTOM_OBJECTS, FAMILIES, build_model
from pipeline.train import zoo
from pipeline.errors import ConfigError, UnsupportedLayerError

# Paper values at width 1.0, 224x224x3, 1000 classes: (params, MACs).
PAPER = {
    "mobilenet_v1": (4.2e6, 569e6),         # MobileNets, Table 8
    "mobilenet_v2": (3.47e6, 300e6),        # MobileNetV2, Table 4 / reference code
    "mobilenet_v3_small": (2.5e6, 56e6),    # MobileNetV3, Table 3
    "mobilenet_v3_large": (5.4e6, 219e6),   # MobileNetV3, Table 3
}
TOLERANCE = 0.03

TINY_ALPHA = 0.35
TINY_CLASSES = 10

# Every layer name: a top-level part, or block<n>_<part>.
NAME = re.compile(
    r"input|pool|dropout|logits|probs"
    r"|stem_(conv|bn|relu6|hswish)"
    r"|head_(conv|bn|relu6|hswish|fc|fc_hswish)"
    r"|block\d+_("
    r"(expand|pointwise)_(conv|bn|relu|relu6|hswish)"
    r"|depthwise(_bn|_relu|_relu6|_hswish)?"
    r"|se_(pool|squeeze|excite|hsigmoid|scale)"
    r"|project_(conv|bn)|add)"
)


def test_every_family_has_a_case():
    assert sorted(list(FAMILIES)) == sorted(PAPER)


def test_import_does_not_load_tensorflow():
    # The genotypes validate recipes: they must not load TensorFlow either.
    code = "import sys, models, models.genotype; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("v, kwargs, expected", [
    (32 * 0.35, {}, 16),  # 8 would be more than 10% below 11.2
    (16 * 0.35, {}, 8),
    (3, {}, 8),           # never below the divisor
    (18, {}, 24),         # 16 < 0.9 * 18
    (90, {}, 88),
    (100, {}, 104),
    (10, {"divisor": 4}, 12),
    (3, {"min_value": 16}, 16),
])
def test_make_divisible(v, kwargs, expected):
    from models.blocks import make_divisible

    assert make_divisible(v, **kwargs) == expected


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("channels", [1, 3])
# The families reduce resolution 16x with stem stride 1 and 32x with stride 2,
# "same" padding rounding up: 32 and 28 end at 2x2, the smallest input, 24, at 1x1
# with stride 2 (global pool and squeeze-excite on a single pixel).
@pytest.mark.parametrize("size, first_stride, final_map", [(32, 1, 2), (28, 1, 2), (24, 2, 1)])
def test_tiny_build(family, channels, size, first_stride, final_map):
    model = build_model(family, TINY_ALPHA, (size, size, channels), TINY_CLASSES,
                        first_stride=first_stride, dropout=0.1)
    x = np.random.default_rng(0).random((2, size, size, channels), dtype=np.float32)
    probs = model(x, training=False).numpy()
    assert probs.shape == (2, TINY_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs >= 0).all()

    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert [n for n in names if not NAME.fullmatch(n)] == []
    blocks = sorted({int(m.group(1)) for n in names if (m := re.match(r"block(\d+)_", n))})
    assert blocks == list(range(1, len(blocks) + 1))
    assert model.get_layer("pool").input_shape[1:3] == (final_map, final_map)
    assert names[-2:] == ["logits", "probs"]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 0}, "alpha must be a number > 0; got 0"),
    ({"input_shape": (23, 24, 3)},
     "input_shape must be (height, width, channels) with height and width >= 24 and "
     "channels 1 or 3; got (23, 24, 3)"),
    ({"input_shape": (32, 32, 4)},
     "input_shape must be (height, width, channels) with height and width >= 24 and "
     "channels 1 or 3; got (32, 32, 4)"),
    ({"input_shape": (32, 32)},
     "input_shape must be (height, width, channels) with height and width >= 24 and "
     "channels 1 or 3; got (32, 32)"),
    ({"classes": 1}, "classes must be an integer >= 2; got 1"),
    ({"first_stride": 3}, "first_stride must be 1 or 2; got 3"),
    ({"dropout": 1.0}, "dropout must be a number in [0, 1); got 1.0"),
    ({"bn_momentum": 0.0}, "bn_momentum must be a number in (0, 1); got 0.0"),
])
def test_build_rejects_bad_arguments(family, kwargs, message):
    args = {"alpha": 1.0, "input_shape": (32, 32, 3), "classes": 10, **kwargs}
    with pytest.raises(ValueError) as err:
        build_model(family, **args)
    assert str(err.value) == message
    with pytest.raises(ConfigError) as err:  # as the pipeline reports it
        zoo.build_model(family, **args)
    assert str(err.value) == message


def test_unknown_family():
    with pytest.raises(ValueError):
        build_model("resnet50", 1.0, (32, 32, 3), 10)
    with pytest.raises(ConfigError) as err:
        zoo.build_model("resnet50", 1.0, (32, 32, 3), 10)
    assert str(err.value) == (
        "unknown model family 'resnet50'; valid: mobilenet_v1, mobilenet_v2, "
        "mobilenet_v3_small, mobilenet_v3_large")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_size_matches_paper(family):
    from models.macs import summary

    params, macs = PAPER[family]
    got = summary(family, 1.0, 224, 1000)
    assert got["params"] == pytest.approx(params, rel=TOLERANCE)
    assert got["macs"] == pytest.approx(macs, rel=TOLERANCE)


def test_count_macs_by_hand():
    import tf_keras as keras

    from models.macs import count_macs, count_params

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)          # 8*8 * 3*3*3 * 4 = 6912
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # 4*4 * 3*3 * 4 = 576
    x = keras.layers.Conv2D(6, 1)(x)                               # 4*4 * 4 * 6 = 384
    x = keras.layers.BatchNormalization()(x)                       # not counted
    x = keras.layers.Multiply()([x, x])                            # 4*4*6 = 96
    x = keras.layers.GlobalAveragePooling2D()(x)                   # not counted
    outputs = keras.layers.Dense(5)(x)                             # 6 * 5 = 30
    model = keras.Model(inputs, outputs)

    assert count_macs(model) == 6912 + 576 + 384 + 96 + 30
    # Weights + biases; BatchNorm's gamma and beta but not its moving statistics.
    assert count_params(model) == (3 * 3 * 3 * 4 + 4) + (3 * 3 * 4 + 4) + (4 * 6 + 6) \
        + 2 * 6 + (6 * 5 + 5)


def test_hard_activations():
    from models.blocks import HardSigmoid, HardSwish

    x = np.array([-5.0, -3.0, -1.0, 0.0, 1.0, 3.0, 5.0], dtype=np.float32)
    relu6 = np.clip(x + 3.0, 0.0, 6.0)
    np.testing.assert_allclose(HardSigmoid()(x).numpy(), relu6 / 6.0, rtol=1e-6)
    np.testing.assert_allclose(HardSwish()(x).numpy(), x * relu6 / 6.0, rtol=1e-6)
    for cls in (HardSigmoid, HardSwish):
        # quantize_apply rebuilds layers from their config: it needs "name".
        assert cls(name="act").get_config()["name"] == "act"


def test_float_model_h5_roundtrip(tmp_path):
    import tf_keras as keras

    model = build_model("mobilenet_v3_small", TINY_ALPHA, (32, 32, 3), TINY_CLASSES)
    model.save(tmp_path / "m.h5")
    reloaded = keras.models.load_model(tmp_path / "m.h5", custom_objects=CUSTOM_OBJECTS)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(reloaded(x).numpy(), model(x).numpy())


# -- quantization-aware training ----------------------------------------------------


def _convert_int8(model, shape, calibrate=True):
    """Full-integer TFLite conversion of a QAT model (float input and output).

    ``calibrate=False``: no representative set, so every range must come from the
    QAT model's fake-quant ops; the converter then keeps float wherever one is missing.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, *shape), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
    # The default path round-trips the Keras model through a SavedModel: ~60 s
    # per tiny QAT model on 2 cores against ~5 s for freezing the function.
    converter.experimental_lower_to_saved_model = False
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if calibrate:
        # TF 2.21 insists on a representative set with TFLITE_BUILTINS_INT8, QAT or not.
        converter.representative_dataset = lambda: (
            [rng.random((1, *shape), dtype=np.float32)] for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def _ops(tflite):
    """[(op name, input dtype names, is model input/output op)] in execution order."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without default delegates: XNNPACK would hide the real ops behind DELEGATE.
    interpreter = Interpreter(
        model_content=tflite,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    model_io = ({d["index"] for d in interpreter.get_input_details()}
                | {d["index"] for d in interpreter.get_output_details()})
    return [
        (op["op_name"], [dtypes[i] for i in op["inputs"] if i >= 0],
         bool(model_io & (set(op["inputs"]) | set(op["outputs"]))))
        for op in interpreter._get_ops_details()
    ]


def _float_ops(ops):
    """Ops that take or make float: all but QUANTIZE of the model input and
    DEQUANTIZE to the model output. int32 is allowed after the first input (biases,
    axes)."""
    return [
        (name, dtypes) for name, dtypes, at_io in ops
        if not (name in ("QUANTIZE", "DEQUANTIZE") and at_io) and (
            name == "DEQUANTIZE" or dtypes[0] != "int8"
            or any(d not in ("int8", "int32") for d in dtypes))
    ]


def _train_one_step(model, shape):
    import tf_keras as keras

    rng = np.random.default_rng(0)
    # Eager: tracing a train step of a QAT model costs more than the step.
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy",
                  run_eagerly=True)
    model.train_on_batch(rng.random((4, *shape), dtype=np.float32),
                         rng.integers(0, TINY_CLASSES, 4))


@pytest.fixture(scope="module")
def qat_build():
    """family -> (QAT model after one training step, its int8 .tflite bytes), memoised."""
    from models.quantize import quantize_model

    @functools.cache
    def get(family):
        shape = (32, 32, 3)
        model = build_model(family, TINY_ALPHA, shape, TINY_CLASSES, first_stride=1)
        qat = quantize_model(model, "default")
        _train_one_step(qat, shape)
        return qat, _convert_int8(qat, shape)

    return get


@pytest.mark.integration
@pytest.mark.parametrize("family", list(FAMILIES))
def test_qat_converts_to_all_int8(family, qat_build):
    _, tflite = qat_build(family)
    ops = _ops(tflite)
    assert _float_ops(ops) == []
    names = {name for name, _, _ in ops}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= names
    if family.startswith("mobilenet_v3"):
        assert "HARD_SWISH" in names  # hard-swish fused, not ADD/MUL arithmetic


@pytest.mark.integration
def test_qat_at_the_smallest_input_converts_to_all_int8_and_runs():
    # At the smallest input and stem stride 2 the last maps are 1x1: the pool, the
    # squeeze-excite blocks and HARD_SWISH still convert to int8 and run on the host.
    from ai_edge_litert.interpreter import Interpreter

    from models import MIN_INPUT_SIZE
    from models.quantize import quantize_model

    shape = (MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3)
    model = build_model("mobilenet_v3_small", TINY_ALPHA, shape, TINY_CLASSES, first_stride=2)
    assert model.get_layer("pool").input_shape[1:3] == (1, 1)
    qat = quantize_model(model, "default")
    _train_one_step(qat, shape)
    tflite = _convert_int8(qat, shape)
    assert _float_ops(_ops(tflite)) == []
    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    x = np.random.default_rng(1).random((1, *shape), dtype=np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    probs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert probs.shape == (1, TINY_CLASSES) and abs(float(probs.sum()) - 1) < 0.05


@pytest.mark.integration
def test_qat_ranges_need_no_calibration(qat_build):
    # With only its output quantized, HardSigmoid's ADD(+3)/MUL(1/6) get no range
    # from QAT and stay float unless a representative set calibrates them.
    qat, _ = qat_build("mobilenet_v3_small")
    assert _float_ops(_ops(_convert_int8(qat, (32, 32, 3), calibrate=False))) == []


@pytest.mark.integration
def test_qat_h5_roundtrip(qat_build, tmp_path):
    import tf_keras as keras

    from models.quantize import quantize_scope

    qat, _ = qat_build("mobilenet_v3_small")
    with quantize_scope():
        qat.save(tmp_path / "qat.h5")
        reloaded = keras.models.load_model(tmp_path / "qat.h5")
    x = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(reloaded(x).numpy(), qat(x).numpy(), atol=1e-6)


def _custom_layers_model():
    """Every layer our QuantizeConfigs cover: HardSwish and the SE block
    (HardSigmoid, Multiply)."""
    import tf_keras as keras

    from models.blocks import classifier, conv_bn_act, squeeze_excite

    inputs = keras.Input((32, 32, 3))
    x = conv_bn_act(inputs, 16, 3, 2, "hswish", "stem")
    x = squeeze_excite(x, 8, "block1_se")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier(x, TINY_CLASSES, 0.0))


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["default", "pqat", "cqat", "pcqat"])
def test_quantize_schemes_use_our_configs(scheme):
    from models.quantize import (SCHEMES, HardSigmoidQuantizeConfig,
                                 OutputQuantizeConfig, quantize_model)

    assert scheme in SCHEMES
    qat = quantize_model(_custom_layers_model(), scheme)
    configs = {name: type(qat.get_layer(f"quant_{name}").quantize_config)
               for name in ("stem_hswish", "block1_se_hsigmoid", "block1_se_scale")}
    assert configs == {
        "stem_hswish": OutputQuantizeConfig,
        "block1_se_hsigmoid": HardSigmoidQuantizeConfig,
        "block1_se_scale": OutputQuantizeConfig,
    }
    if scheme == "default":
        _train_one_step(qat, (32, 32, 3))
        assert _float_ops(_ops(_convert_int8(qat, (32, 32, 3)))) == []


def test_unknown_scheme():
    from models.quantize import quantize_annotate

    with pytest.raises(ValueError) as err:
        quantize_annotate(_custom_layers_model(), "int4")
    assert str(err.value) == "unknown QAT scheme 'int4'; valid: default, pqat, cqat, pcqat"


def test_unsupported_layer_is_named():
    import tf_keras as keras

    from pipeline.train.zoo import quantize_annotate

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(UnsupportedLayerError) as err:
        quantize_annotate(model)
    assert str(err.value) == (
        "layer 'double' (Lambda) cannot be quantized with scheme 'default': neither "
        "tfmot nor models.quantize has a QuantizeConfig for it")

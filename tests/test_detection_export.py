"""Export of a tiny detector with TFLite's detection postprocess op, in every variant.

The detector (:mod:`tests.helpers.detector`) has crafted weights: its box head gives the same
encodings at every anchor (so each box is its anchor moved by a known amount) and its
class head scores class c at a cell by the mean of image channel c there, so a painted
square gives a known detection.
"""

import numpy as np
import pytest

from pipeline.detection.evaluate import (Detections, detection_agreement, detections_from_outputs,
                                         find_postprocess_op, postprocess_options,
                                         run_tflite_detector)
from pipeline.detection.export import (PostprocessConfig, convert_detector, decode_boxes, export_detector,
                                       implements_signature, keras_detections, reference_postprocess)
from pipeline.errors import ConfigError, ConversionMismatchError, ModelFileError
from pipeline.tflite.reader import parse_tflite
from pipeline.variants import DEFAULT_VARIANTS, VARIANTS
from tests.helpers.detector import ANCHORS, BOX_BIAS, CLASSES, IMAGES, SIZE, build_detector

CONFIG = PostprocessConfig(max_detections=8, score_threshold=0.05, iou_threshold=0.5)
CALIBRATION = np.concatenate([IMAGES, np.random.default_rng(0).random((6, SIZE, SIZE, 3), dtype=np.float32)])


@pytest.fixture(scope="module")
def detector():
    from pipeline.native import import_tensorflow

    import_tensorflow()
    return build_detector(box_bias=BOX_BIAS)


#: Activation ranges of the QAT detector, as training would have set them (by layer
#: name prefix): the images, pooled channel means, box encodings, class logits.
QAT_RANGES = {"quantize_layer": (0.0, 1.0), "quant_features": (0.0, 1.0), "quant_grid": (0.0, 1.0),
              "quant_box": (-1.0, 1.0), "quant_cls": (-8.0, 8.0), "quant_class_logits": (-8.0, 8.0)}


def set_ranges(qat):
    """A freshly annotated QAT model with the ranges of a trained one: weight ranges
    from one training-mode call (they track the weights' last value), activation
    ranges from :data:`QAT_RANGES` (a moving average would take thousands of steps)."""
    qat(CALIBRATION[:1], training=True)
    for w in qat.weights:
        name = w.name.split("/")
        if "kernel" in name[-1] or not name[-1].endswith(("_min:0", "_max:0")):
            continue
        low, high = next(v for k, v in QAT_RANGES.items() if name[0].startswith(k))
        w.assign(low if name[-1].endswith("_min:0") else high)
    return qat


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    """The detector exported (validated) as each default variant: name -> (path, metrics)."""
    import tensorflow_model_optimization as tfmot

    out = tmp_path_factory.mktemp("detector")
    qat = set_ranges(tfmot.quantization.keras.quantize_model(detector))
    result = {}
    for name in DEFAULT_VARIANTS:
        model = qat if VARIANTS.get(name).source == "qat" else detector
        path = out / f"{name}.tflite"
        metrics = export_detector(model, ANCHORS, name, path, IMAGES, CALIBRATION, CONFIG,
                                  int8_input=name == "int8-ptq", log=lambda _: None)
        result[name] = (path, metrics)
    return result


@pytest.mark.integration
@pytest.mark.parametrize("name", DEFAULT_VARIANTS)
def test_every_variant_ends_in_the_postprocess_op_with_its_four_outputs(exported, name):
    path, metrics = exported[name]
    data = path.read_bytes()
    model = parse_tflite(data)
    op = find_postprocess_op(model)
    assert model.operators[-1] == op
    assert tuple(model.outputs) == op.outputs  # boxes, classes, scores, count: TFLite's order
    outs = [model.tensors[i] for i in model.outputs]
    assert [(t.shape, t.dtype) for t in outs] == [((1, 8, 4), "float32"), ((1, 8), "float32"),
                                                  ((1, 8), "float32"), ((1,), "float32")]
    anchors = model.tensors[op.inputs[2]]
    assert anchors.shape == (len(ANCHORS), 4)
    options = postprocess_options(data)
    assert options == pytest.approx({"max_detections": 8, "max_classes_per_detection": 1, "num_classes": 3,
                                     "nms_score_threshold": 0.05, "nms_iou_threshold": 0.5, "y_scale": 10.0,
                                     "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0, "use_regular_nms": 0})
    assert metrics["validation_agreement"] == 1.0 and metrics["validation_detections"] == 3
    inp = model.tensors[model.inputs[0]]
    assert inp.dtype == ("int8" if name == "int8-ptq" else "float32") and inp.shape == (1, SIZE, SIZE, 3)
    if VARIANTS.get(name).full_integer:  # int8 up to the op, which gets float from DEQUANTIZEs
        assert {model.producer(i).opcode for i in op.inputs[:2]} == {"DEQUANTIZE"}
        assert "CONV_2D" in [o.opcode for o in model.operators]
        assert all(model.tensors[o.outputs[0]].dtype == "int8" for o in model.operators if o.opcode == "CONV_2D")


def shifted(ymin, xmin, ymax, xmax):
    """A cell's box as the detector's constant encodings ``BOX_BIAS`` move it: the
    centre by (1/10, -1/10) of the size, the height by exp(0.5/5), the width by exp(-0.5/5)."""
    h, w = (ymax - ymin) * np.exp(0.1), (xmax - xmin) * np.exp(-0.1)
    yc, xc = (ymin + ymax) / 2 + (ymax - ymin) / 10, (xmin + xmax) / 2 - (xmax - xmin) / 10
    return [yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2]


@pytest.mark.integration
@pytest.mark.parametrize("name", DEFAULT_VARIANTS)
def test_tflite_detections_are_the_painted_squares(exported, name):
    got = run_tflite_detector(exported[name][0], IMAGES, score_threshold=0.5)
    want = [(shifted(0, 0, 0.25, 0.25), shifted(0.5, 0.75, 0.75, 1.0)), (shifted(0.75, 0.25, 1.0, 0.5),)]
    assert [d.classes.tolist() for d in got] == [[0, 2], [1]]
    for d, boxes in zip(got, want):
        np.testing.assert_allclose(d.boxes, boxes, atol=1e-5 if name == "float32" else 1e-3)
        # sigmoid(8 * 0.95 - 4) = 0.973 (channel mean of a painted cell)
        np.testing.assert_allclose(d.scores, 1 / (1 + np.exp(-(8 * 0.95 - 4))), atol=0.01)


def assert_same_detections(got, want):
    """Equal detections, in any order among equal scores."""
    assert sum(len(d.classes) for d in want) > 6
    for g, w in zip(got, want):
        gi, wi = np.lexsort((g.classes, -g.scores)), np.lexsort((w.classes, -w.scores))
        np.testing.assert_array_equal(g.classes[gi], w.classes[wi])
        np.testing.assert_allclose(g.scores[gi], w.scores[wi], atol=1e-6)
        np.testing.assert_allclose(g.boxes[gi], w.boxes[wi], atol=1e-5)


@pytest.mark.integration
def test_float32_detections_equal_the_numpy_decode_and_fast_nms(detector, exported):
    images = np.random.default_rng(2).random((3, SIZE, SIZE, 3), dtype=np.float32)
    got = run_tflite_detector(exported["float32"][0], images)
    assert_same_detections(got, keras_detections(detector, ANCHORS, images, CONFIG))


@pytest.mark.integration
def test_regular_nms_equals_the_numpy_reference_on_random_heads():
    """Random heads (box encodings and classes differ at each anchor, boxes overlap)."""
    model = build_detector(seed=1)
    config = PostprocessConfig(max_detections=8, score_threshold=0.3, iou_threshold=0.3, use_regular_nms=True)
    images = np.random.default_rng(2).random((3, SIZE, SIZE, 3), dtype=np.float32)
    tflite = convert_detector(model, ANCHORS, VARIANTS.get("float32"), config=config)
    assert postprocess_options(tflite)["use_regular_nms"] == 1
    got = run_tflite_detector(tflite, images)
    assert_same_detections(got, keras_detections(model, ANCHORS, images, config))


def test_decode_inverts_the_ssd_encoding():
    # A box [yc, xc, h, w] = [0.3, 0.6, 0.2, 0.1] against anchor [0.25, 0.5, 0.25, 0.125].
    anchor = np.asarray([[0.25, 0.5, 0.25, 0.125]], np.float32)
    enc = [[(0.3 - 0.25) / 0.25 * 10, (0.6 - 0.5) / 0.125 * 10, np.log(0.2 / 0.25) * 5, np.log(0.1 / 0.125) * 5]]
    np.testing.assert_allclose(decode_boxes(np.asarray(enc), anchor), [[0.2, 0.55, 0.4, 0.65]], atol=1e-6)
    np.testing.assert_allclose(decode_boxes(np.zeros((1, 4)), anchor), [[0.125, 0.4375, 0.375, 0.5625]])


def test_reference_nms_keeps_the_best_of_overlapping_boxes():
    anchors = np.asarray([[0.5, 0.5, 0.4, 0.4], [0.52, 0.5, 0.4, 0.4], [0.2, 0.2, 0.2, 0.2]], np.float32)
    logits = np.asarray([[0, 1.0, -9], [0, 2.0, -9], [0, -9, 0.5]], np.float32)
    d = reference_postprocess(np.zeros((3, 4)), logits, anchors, PostprocessConfig(score_threshold=0.1))
    assert d.classes.tolist() == [0, 1]  # anchor 0 overlaps the better anchor 1 (IoU 0.9)
    np.testing.assert_allclose(d.scores, 1 / (1 + np.exp(-np.asarray([2.0, 0.5]))), rtol=1e-6)
    np.testing.assert_allclose(d.boxes[0], [0.32, 0.3, 0.72, 0.7], atol=1e-6)


def test_signature_names_the_op_and_its_attributes():
    text = implements_signature(PostprocessConfig(max_detections=10, use_regular_nms=True), 5)
    assert text.startswith('name: "TFLite_Detection_PostProcess" ')
    assert 'attr { key: "num_classes" value { i: 5 } }' in text
    assert 'attr { key: "use_regular_nms" value { b: true } }' in text
    assert 'attr { key: "nms_iou_threshold" value { f: 0.5 } }' in text


def test_postprocess_config_rejects_bad_values_and_keys():
    with pytest.raises(ConfigError, match="iou_threshold must be in"):
        PostprocessConfig(iou_threshold=0.0)
    with pytest.raises(ConfigError, match="max_detections must be >= 1"):
        PostprocessConfig(max_detections=0)
    with pytest.raises(ConfigError, match="unknown key 'nms'; valid keys: max_detections"):
        PostprocessConfig.from_dict({"nms": 1})
    assert PostprocessConfig.from_dict({"max_detections": 5}).max_detections == 5


@pytest.mark.integration
def test_conversion_refuses_models_off_the_contract(detector):
    with pytest.raises(ConfigError, match=r"anchors have shape \[3, 4\], expected \[20, 4\]"):
        convert_detector(detector, ANCHORS[:3], VARIANTS.get("float32"))
    with pytest.raises(ConfigError, match="variant int8-qat converts a QAT-annotated detector; got a float one"):
        convert_detector(detector, ANCHORS, VARIANTS.get("int8-qat"), CALIBRATION)
    with pytest.raises(ConfigError, match="int8-ptq: full-integer conversion needs calibration images"):
        convert_detector(detector, ANCHORS, VARIANTS.get("int8-ptq"))
    import tf_keras as keras

    one_output = keras.Model(detector.input, detector.outputs[0], name="boxes_only")
    with pytest.raises(ConfigError, match=r"'boxes_only': expected outputs box_encodings \[B, N, 4\] and "
                                          r"class_logits \[B, N, C \+ 1\], got \[\[None, 20, 4\]\]"):
        convert_detector(one_output, ANCHORS, VARIANTS.get("float32"))


@pytest.mark.integration
def test_validation_rejects_a_detector_that_disagrees(detector, exported):
    from pipeline.detection.export import validate_detector

    wrong = [Detections(d.boxes, (d.classes + 1) % CLASSES, d.scores)
             for d in keras_detections(detector, ANCHORS, IMAGES, CONFIG)]
    with pytest.raises(ConversionMismatchError, match=r"float32 \(x\): TFLite detections agree with Keras on 0.0%"):
        validate_detector(exported["float32"][0].read_bytes(), wrong, IMAGES, VARIANTS.get("float32"), "float32 (x)")
    options = {"max_detections": 9, "num_classes": 3}
    with pytest.raises(ConversionMismatchError, match="the postprocess op has max_detections=8, expected 9"):
        validate_detector(exported["float32"][0].read_bytes(), wrong, IMAGES, VARIANTS.get("float32"), "x", options)
    with pytest.raises(ModelFileError, match="not a detector: expected one TFLite_Detection_PostProcess op"):
        run_tflite_detector(_classifier_tflite(), IMAGES)


def _classifier_tflite() -> bytes:
    import tensorflow as tf
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(2)])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


@pytest.mark.device
def test_int8_detector_runs_on_an_emulated_device_as_on_the_host(exported):
    from pipeline.devices.profiles import get_device
    from pipeline.devices.runner import run_on_device
    from pipeline.devices.runtime import ensure_runtime

    path = exported["int8-ptq"][0]
    run = run_on_device(path, get_device("pixel4"), IMAGES, runtime=ensure_runtime(), count=False)
    assert run.returncode == 0, run.stderr[-2000:]
    device = detections_from_outputs(*run.outputs)
    host = run_tflite_detector(path, IMAGES)
    agree = detection_agreement(host, device, iou=0.9, score_threshold=0.5)
    assert (agree.host_count, agree.fraction, agree.reverse_fraction) == (3, 1.0, 1.0)
    assert [d.classes.tolist() for d in device] == [d.classes.tolist() for d in host]

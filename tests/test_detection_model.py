"""models.ssdlite and pipeline.detection training: head outputs agree with the anchors
on every backbone family, every layer prunes and quantize-annotates, and a few
training steps on toy images (one bright square each) lower the loss, the same on a rerun."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.detection.anchors import AnchorSpec, generate_anchors
from pipeline.errors import ConfigError, DataError

SIZE = 64
ALPHA = 0.25
CLASSES = 2
FAMILIES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small")


def toy_set(n, seed):
    """``n`` dark noisy images, each with one bright square (class 0: red, 1: green)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (n, SIZE, SIZE, 3), dtype=np.uint8)
    boxes, classes = [], []
    for i in range(n):
        side = int(rng.integers(SIZE // 4, SIZE // 2 + 1))
        y, x = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
        c = int(rng.integers(0, CLASSES))
        images[i, y:y + side, x:x + side, c] = 255
        boxes.append(np.array([[y, x, y + side, x + side]], np.float32) / SIZE)
        classes.append(np.array([c], np.int64))
    return SimpleNamespace(images=images, boxes=boxes, classes=classes)


@pytest.fixture(scope="module")
def detectors():
    """family -> (model, feature_shapes), untrained (tests here must not train them)."""
    from models.ssdlite import build_ssdlite
    from pipeline.train.fit import setup_tensorflow

    setup_tensorflow(0)
    return {f: build_ssdlite(f, ALPHA, (SIZE, SIZE, 3), CLASSES) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_head_outputs_agree_with_the_anchors(detectors, family):
    from models.ssdlite import PRIOR_PROBABILITY

    model, shapes = detectors[family]
    assert shapes == ((4, 4), (2, 2), (1, 1))  # strides 16 and 32, then one extra map to 1x1
    n = len(generate_anchors(shapes, AnchorSpec()))
    assert model.output_names == ["box_encodings", "class_logits"]
    x = np.random.default_rng(0).uniform(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    box_encodings, class_logits = model(x, training=False)
    assert box_encodings.shape == (2, n, 4) and class_logits.shape == (2, n, CLASSES + 1)
    scores = 1 / (1 + np.exp(-class_logits.numpy()[..., 1:]))
    assert abs(scores.mean() - PRIOR_PROBABILITY) < 0.005  # the focal-loss prior


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_quantize_annotates(detectors, family):
    from models.quantize import quantize_annotate

    model, _ = detectors[family]
    annotated = quantize_annotate(model)  # raises, naming the layer, on one it cannot quantize
    assert annotated.output_shape == model.output_shape


# V1's layers are a subset of V2's: V2 and V3 cover every kind of layer.
@pytest.mark.parametrize("family", ["mobilenet_v2", "mobilenet_v3_small"])
def test_every_layer_prunes(detectors, family):
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from models.blocks import HardSigmoid, HardSwish

    model, _ = detectors[family]
    prune = tfmot.sparsity.keras.prune_low_magnitude
    if family.startswith("mobilenet_v3"):
        # As for the V3 classifiers, tfmot's registry lacks the backbone's hard-swish and
        # hard-sigmoid (pipeline.compress.prune wraps only Conv2D/Dense): every other
        # layer, the whole detection head included, must wrap.
        def wrap(layer):
            return layer if isinstance(layer, (HardSwish, HardSigmoid)) else prune(layer)

        pruned = keras.models.clone_model(model, clone_function=wrap)
    else:
        pruned = prune(model)
    assert pruned.output_shape == model.output_shape


@pytest.fixture
def eager():
    # The traced train step takes ~10 s to build on two cores; a few eager steps run
    # the same ops (with op determinism) in a fraction of that.
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def test_training_lowers_the_loss_and_reruns_identically(detectors, eager):
    from pipeline.detection.train import train_detector

    model, shapes = detectors["mobilenet_v1"]
    anchors = generate_anchors(shapes)
    start = model.get_weights()
    lines = []
    kwargs = dict(batch_size=8, learning_rate=1e-2, seed=3)
    try:
        _, history = train_detector(model, anchors, toy_set(16, 1), None, epochs=3, log=lines.append, **kwargs)
        losses = [e.loss for e in history.epochs]
        assert losses[-1] < 0.7 * losses[0], losses
        assert len(lines) == 3 and lines[0].startswith("[detect] epoch 1/3  loss ") and "(class " in lines[0]
        # A rerun from the same weights and seed (one epoch of one step) is bit-identical.
        runs = []
        for _ in range(2):
            model.set_weights(start)
            _, again = train_detector(model, anchors, toy_set(8, 1), None, epochs=1, log=lines.append, **kwargs)
            runs.append((again.to_dict()["epochs"][0]["loss"], model.get_weights()))
        assert runs[0][0] == runs[1][0]
        assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    finally:
        model.set_weights(start)  # the other tests use the untrained model


def test_bad_input_is_one_clear_error(detectors):
    from pipeline.detection.train import build_detector, train_detector

    model, shapes = detectors["mobilenet_v1"]
    anchors = generate_anchors(shapes)
    wrong = toy_set(2, 0)
    wrong.images = wrong.images[:, :32]
    with pytest.raises(DataError, match=r"training images must be uint8 \[N, 64, 64, 3\] \(the model's input\); "
                                         r"got uint8 \[2, 32, 64, 3\]"):
        train_detector(model, anchors, wrong, None, epochs=1, batch_size=2, learning_rate=1e-3, seed=0)
    short = toy_set(2, 0)
    short.boxes = short.boxes[:1]
    with pytest.raises(DataError, match="validation set: 2 images but 1 box arrays and 2 class arrays"):
        train_detector(model, anchors, toy_set(2, 0), short, epochs=1, batch_size=2, learning_rate=1e-3, seed=0)
    with pytest.raises(ConfigError, match=f"the detector predicts {len(anchors)} boxes per image but 4 anchors"):
        train_detector(model, anchors[:4], toy_set(2, 0), None, epochs=1, batch_size=2, learning_rate=1e-3, seed=0)
    with pytest.raises(ConfigError, match="unknown model family 'resnet'; valid: mobilenet_v1, "):
        build_detector("resnet", ALPHA, (SIZE, SIZE, 3), CLASSES)


def test_losses_by_hand():
    from pipeline.detection.loss import detection_loss

    def focal(p, target):  # one sigmoid column, alpha 0.25, gamma 2
        return -(0.25 * (1 - p) ** 2 * math.log(p) if target else 0.75 * p ** 2 * math.log(1 - p))

    logits = np.zeros((1, 3, 3), np.float32)  # 3 anchors, background + 2 classes, all p = 0.5
    logits[0, 1, 2] = math.log(0.9 / 0.1)     # anchor 1, class 1: p = 0.9
    class_targets = np.array([[2, 0, -1]])    # anchor 0 is class 1, anchor 1 background, anchor 2 ignored
    box_targets = np.zeros((1, 3, 4), np.float32)
    box_encodings = np.zeros((1, 3, 4), np.float32)
    box_encodings[0, 0] = [0.5, -2.0, 0.0, 0.0]   # Huber: 0.5 * 0.5^2 + (2 - 0.5)
    box_encodings[0, 1] = [9.0, 9.0, 9.0, 9.0]    # not positive: no box loss
    parts = detection_loss(box_targets, class_targets, box_encodings, logits)
    expected_class = focal(0.5, 0) + focal(0.5, 1) + focal(0.5, 0) + focal(0.9, 0)  # / 1 positive
    np.testing.assert_allclose(float(parts.classification), expected_class, rtol=1e-5)
    np.testing.assert_allclose(float(parts.localization), 0.125 + 1.5, rtol=1e-6)
    np.testing.assert_allclose(float(parts.total), expected_class + 1.625, rtol=1e-5)
    # No positives: divided by 1, not 0.
    none = detection_loss(box_targets, np.zeros((1, 3), np.int64), box_encodings, logits)
    np.testing.assert_allclose(float(none.classification), 5 * focal(0.5, 0) + focal(0.9, 0), rtol=1e-5)
    assert float(none.localization) == 0.0

"""pipeline.detection.anchors and the host decoding: anchor layout, IoU, the box
encoding, matching and NMS on hand-computed boxes (numpy only, no model)."""

import math

import numpy as np
import pytest

from pipeline.detection.anchors import (AnchorSpec, decode, encode, generate_anchors, iou, match,
                                        match_batch, to_corners)
from pipeline.detection.train import decode_predictions, nms
from pipeline.errors import ConfigError

R2 = math.sqrt(2.0)


def test_anchors_of_one_2x2_map_by_hand():
    anchors = generate_anchors([(2, 2)], AnchorSpec(min_scale=0.2, max_scale=0.95))
    assert anchors.dtype == np.float32 and anchors.shape == (16, 4)
    # One map: scale 0.2; the extra anchor's scale is sqrt(0.2 * 1).
    sizes = [(0.2, 0.2), (0.2 / R2, 0.2 * R2), (0.2 * R2, 0.2 / R2), (math.sqrt(0.2),) * 2]
    centres = [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]  # row-major: y, then x
    expected = [[yc, xc, h, w] for yc, xc in centres for h, w in sizes]
    np.testing.assert_allclose(anchors, expected, rtol=1e-6)


def test_anchor_counts_and_scales_over_maps():
    spec = AnchorSpec(min_scale=0.2, max_scale=0.95)
    anchors = generate_anchors([(4, 4), (2, 2), (1, 1)], spec)
    assert spec.per_cell == 4 and len(anchors) == (16 + 4 + 1) * 4
    np.testing.assert_allclose(anchors[0, 2:], [0.2, 0.2], rtol=1e-6)  # first map: min_scale
    np.testing.assert_allclose(anchors[16 * 4, 2:], [0.575, 0.575], rtol=1e-6)  # middle map
    np.testing.assert_allclose(anchors[-4], [0.5, 0.5, 0.95, 0.95], rtol=1e-6)  # last map: max_scale
    np.testing.assert_allclose(anchors[-1, 2:], [math.sqrt(0.95)] * 2, rtol=1e-6)  # its extra scale
    no_extra = AnchorSpec(aspect_ratios=(1.0,), extra_scale=False)
    assert no_extra.per_cell == 1 and len(generate_anchors([(3, 2)], no_extra)) == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"min_scale": 0.5, "max_scale": 0.2}, "anchor scales must satisfy 0 < min_scale <= max_scale <= 1"),
    ({"aspect_ratios": (1.0, -2.0)}, "anchor aspect_ratios must be a non-empty list of numbers > 0"),
])
def test_bad_anchor_spec_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AnchorSpec(**kwargs)


def test_iou_by_hand():
    unit = [[0.0, 0.0, 1.0, 1.0]]
    others = [[0.0, 0.0, 0.5, 1.0],    # half of it: 0.5
              [0.5, 0.5, 1.5, 1.5],    # 0.25 / (1 + 1 - 0.25)
              [1.0, 1.0, 2.0, 2.0],    # touching: 0
              [0.2, 0.2, 0.2, 0.2]]    # empty: 0
    np.testing.assert_allclose(iou(unit, others), [[0.5, 0.25 / 1.75, 0.0, 0.0]], rtol=1e-6)
    assert iou(np.zeros((0, 4)), unit).shape == (0, 1)
    assert iou([[0.3, 0.3, 0.3, 0.3]], [[0.3, 0.3, 0.3, 0.3]])[0, 0] == 0.0  # empty union


def test_encode_by_hand_and_round_trip():
    anchor = np.array([[0.5, 0.5, 0.2, 0.2]], np.float32)
    # Centre (0.5, 0.55), size 0.2 x 0.1: tx = 0.05 / 0.2 * 10, tw = log(0.5) * 5.
    np.testing.assert_allclose(encode([[0.4, 0.5, 0.6, 0.6]], anchor), [[0.0, 2.5, 0.0, 5 * math.log(0.5)]],
                               rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)
    anchors = generate_anchors([(3, 3), (1, 1)])
    corners = np.sort(rng.uniform(0, 1, (len(anchors), 2, 2)), axis=1)  # [n, (min, max), (y, x)]
    boxes = corners.reshape(len(anchors), 4).astype(np.float32)
    np.testing.assert_allclose(decode(encode(boxes, anchors), anchors), boxes, atol=1e-5)


# Four quadrant anchors, a small central one, and one that overlaps the bottom-right
# quadrant by IoU 0.15 / 0.35 (between the thresholds).
ANCHORS = np.array([[0.25, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5],
                    [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 0.1, 0.1], [0.75, 0.55, 0.5, 0.5]], np.float32)


def test_match_thresholds_forced_match_and_ignored_band():
    boxes = np.array([[0.0, 0.0, 0.5, 0.5],       # anchor 0 exactly
                      [0.5, 0.5, 1.0, 1.0],       # anchor 3 exactly; anchor 5 at IoU 0.43
                      [0.42, 0.42, 0.5, 0.5]],    # best on anchor 4 at IoU 0.18: forced
                     np.float32)
    box_targets, class_targets = match(boxes, [2, 0, 1], ANCHORS, pos_iou=0.5, neg_iou=0.4)
    assert class_targets.dtype == np.int64 and box_targets.dtype == np.float32
    np.testing.assert_array_equal(class_targets, [3, 0, 0, 1, 2, -1])
    # gt 2: centre (0.46, 0.46), size 0.08 on an anchor at (0.5, 0.5) of size 0.1.
    expected = np.zeros((6, 4), np.float32)
    expected[4] = [-4.0, -4.0, 5 * math.log(0.8), 5 * math.log(0.8)]
    np.testing.assert_allclose(box_targets, expected, atol=1e-5)


def test_match_shared_best_anchor_goes_to_the_later_box_and_empty_boxes_and_images_are_background():
    boxes = np.array([[0.0, 0.0, 0.3, 0.3], [0.0, 0.0, 0.2, 0.2]], np.float32)  # both best on anchor 0
    _, class_targets = match(boxes, [0, 1], ANCHORS)
    assert class_targets[0] == 2 and (class_targets[1:] == 0).all()
    _, class_targets = match([[0.9, 0.9, 0.9, 0.9]], [0], ANCHORS)  # empty: overlaps no anchor
    assert not class_targets.any()
    box_targets, class_targets = match(np.zeros((0, 4)), np.zeros(0), ANCHORS)
    assert not class_targets.any() and not box_targets.any()
    batch_boxes, batch_classes = match_batch([boxes, np.zeros((0, 4))], [[0, 1], []], ANCHORS)
    assert batch_boxes.shape == (2, 6, 4) and batch_classes.shape == (2, 6)
    with pytest.raises(ConfigError, match="neg_iou must be <= pos_iou"):
        match(boxes, [0, 1], ANCHORS, pos_iou=0.3, neg_iou=0.5)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0.9, 1], [0, 0, 0.2, 0.2]], np.float32)
    np.testing.assert_array_equal(nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5, 10), [1, 2])
    np.testing.assert_array_equal(nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5, 1), [1])


def test_decode_predictions_per_class_nms_and_thresholds():
    anchors = ANCHORS[:4]
    logits = np.full((1, 4, 3), -9.0, np.float32)   # background + 2 classes, all low
    logits[0, 0, 1] = 3.0                           # anchor 0: class 0
    logits[0, 0, 2] = 1.0                           # and class 1 (own NMS: kept)
    logits[0, 3, 2] = 0.0                           # anchor 3: class 1, score 0.5
    encodings = np.zeros((1, 4, 4), np.float32)     # boxes = the anchors
    (found,) = decode_predictions(encodings, logits, anchors, score_threshold=0.3)
    np.testing.assert_array_equal(found.classes, [0, 1, 1])
    np.testing.assert_allclose(found.scores, [1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1)), 0.5], rtol=1e-6)
    np.testing.assert_allclose(found.boxes, to_corners(anchors)[[0, 0, 3]], atol=1e-6)
    (top,) = decode_predictions(encodings, logits, anchors, score_threshold=0.3, max_detections=1)
    assert top.classes.tolist() == [0]
    (none,) = decode_predictions(encodings, logits, anchors, score_threshold=0.99)
    assert none.boxes.shape == (0, 4) and none.classes.shape == (0,)

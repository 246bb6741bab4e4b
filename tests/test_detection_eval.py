"""Detection evaluation: COCO mAP on hand-computed cases, host-vs-device agreement,
reading the postprocess op's outputs, and drawing."""

import numpy as np
import pytest

from pipeline.detection.evaluate import (Detections, box_iou, coco_map, detection_agreement,
                                         detections_from_outputs, draw_detections)
from pipeline.errors import ConfigError, DataError

SIZE = (100, 100)  # pixels (height, width) of every image
BOX = [0.2, 0.2, 0.6, 0.6]  # 40 x 40 pixels


def gt(boxes, classes):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "classes": np.asarray(classes, np.int64)}


def det(boxes, classes, scores):
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64),
                      np.asarray(scores, np.float32))


def test_perfect_detections_score_one():
    truth = [gt([BOX, [0.5, 0.1, 0.9, 0.3]], [0, 1]), gt([[0.0, 0.0, 1.0, 1.0]], [2])]
    found = [det([BOX, [0.5, 0.1, 0.9, 0.3]], [0, 1], [0.9, 0.8]), det([[0.0, 0.0, 1.0, 1.0]], [2], [0.7])]
    m = coco_map(truth, found, SIZE)
    assert (m.map, m.map_50, m.map_75) == pytest.approx((1.0, 1.0, 1.0))
    assert (m.images, m.boxes, m.detections) == (2, 3, 3)


def test_a_box_at_iou_0_62_counts_at_0_5_and_0_6_but_not_0_65():
    # Shifted 9.5 px right: IoU = 30.5 * 40 / (2 * 1600 - 30.5 * 40) = 30.5 / 49.5 = 0.616.
    shifted = [0.2, 0.295, 0.6, 0.695]
    assert box_iou([BOX], [shifted])[0, 0] == pytest.approx(30.5 / 49.5)
    m = coco_map([gt([BOX], [0])], [det([shifted], [0], [0.9])], SIZE)
    # A hit at IoU thresholds 0.50, 0.55 and 0.60 (AP 1 each), a miss at the 7 others.
    assert (m.map_50, m.map_75) == pytest.approx((1.0, 0.0))
    assert m.map == pytest.approx(3 / 10)


def test_a_wrong_class_scores_zero():
    m = coco_map([gt([BOX], [0])], [det([BOX], [1], [0.9])], SIZE)
    assert (m.map, m.map_50) == (0.0, 0.0)


def test_mean_over_the_classes_with_ground_truth():
    truth = [gt([BOX, [0.7, 0.7, 0.9, 0.9]], [0, 1])]
    m = coco_map(truth, [det([BOX, [0.7, 0.7, 0.9, 0.9]], [0, 0], [0.9, 0.8])], SIZE)
    # class 0: one hit then a false positive, AP 1; class 1: missed, AP 0.
    assert m.map_50 == pytest.approx(0.5)


def test_an_image_without_detections_is_a_miss():
    truth = [gt([BOX], [0]), gt([BOX], [0])]
    m = coco_map(truth, [det([BOX], [0], [0.9]), det([], [], [])], SIZE)
    # Precision 1 up to recall 0.5, none after: 51 of COCO's 101 recall points.
    assert m.map_50 == pytest.approx(51 / 101)
    assert coco_map(truth, [det([], [], [])] * 2, SIZE).map == 0.0


def test_images_may_each_have_their_size():
    truth = [gt([BOX], [0]), gt([[0.1, 0.1, 0.3, 0.3]], [1])]
    found = [det([BOX], [0], [0.9]), det([[0.1, 0.1, 0.3, 0.3]], [1], [0.8])]
    assert coco_map(truth, found, [(100, 100), (48, 64)]).map == pytest.approx(1.0)
    shifted = [det([[0.2, 0.295, 0.6, 0.695]], [0], [0.9]), found[1]]
    assert coco_map(truth, shifted).map == pytest.approx(coco_map(truth, shifted, [(30, 40), (480, 640)]).map)
    with pytest.raises(ConfigError, match=r"image_size must be one \(height, width\) or one per image \(2\)"):
        coco_map(truth, found, [(100, 100)])


def test_bad_ground_truth_is_one_clear_error():
    with pytest.raises(DataError, match="val.json: no ground-truth boxes in 2 images: mAP needs at least one"):
        coco_map([gt([], []), gt([], [])], [det([], [], [])] * 2, SIZE, source="val.json")
    with pytest.raises(DataError, match=r"val.json, image 0: box 1 \[0.5, 0.5, 0.4, 0.9\] is not a normalized"):
        coco_map([gt([BOX, [0.5, 0.5, 0.4, 0.9]], [0, 0])], [det([], [], [])], SIZE, source="val.json")
    with pytest.raises(DataError, match="val.json, image 0: boxes .* classes 2 and scores 2 do not match"):
        coco_map([gt([BOX], [0, 1])], [det([], [], [])], SIZE, source="val.json")
    with pytest.raises(ConfigError, match="val.json: 1 images of ground truth, 2 of detections"):
        coco_map([gt([BOX], [0])], [det([], [], [])] * 2, SIZE, source="val.json")
    with pytest.raises(DataError, match="detections, image 0: needs fields boxes, classes, scores"):
        coco_map([gt([BOX], [0])], [gt([BOX], [0])], SIZE)


def test_agreement_counts_matches_both_ways():
    host = [det([BOX, [0.0, 0.0, 0.1, 0.1], [0.7, 0.7, 0.9, 0.9], [0.3, 0.3, 0.4, 0.4]], [0, 1, 2, 0],
                [0.9, 0.8, 0.6, 0.2])]
    device = [det([[0.2, 0.2, 0.6, 0.61],  # IoU 0.976 with the host's first box
                   [0.0, 0.0, 0.1, 0.1],   # same box, another class
                   [0.7, 0.7, 0.9, 0.9],   # same, scored under the threshold: still the same detection
                   [0.5, 0.0, 0.6, 0.1]],  # the device's own
                  [0, 0, 2, 1], [0.9, 0.8, 0.45, 0.7])]
    a = detection_agreement(host, device, iou=0.9, score_threshold=0.5)
    assert (a.host_count, a.matched, a.fraction) == (3, 2, pytest.approx(2 / 3))
    assert (a.device_count, a.device_matched, a.reverse_fraction) == (3, 1, pytest.approx(1 / 3))
    assert detection_agreement(host, device, iou=0.99, score_threshold=0.5).matched == 1
    empty = detection_agreement([det([], [], [])], [det([], [], [])])
    assert (empty.host_count, empty.fraction, empty.reverse_fraction) == (0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="the host has 1 images, the device 2"):
        detection_agreement(host, device * 2)


def test_one_device_detection_matches_one_host_detection():
    host = [det([BOX, BOX], [0, 0], [0.9, 0.8])]
    a = detection_agreement(host, [det([BOX], [0], [0.9])])
    assert (a.matched, a.fraction, a.reverse_fraction) == (1, 0.5, 1.0)


def test_outputs_of_the_postprocess_op_become_detections():
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, :2] = [BOX, [0.1, 0.1, 0.2, 0.2]]
    classes = np.asarray([[2, 0, 7], [0, 0, 0]], np.float32)
    scores = np.asarray([[0.9, 0.4, 0.3], [0, 0, 0]], np.float32)
    got = detections_from_outputs(boxes, classes, scores, np.asarray([[2.0], [0.0]], np.float32))
    assert [d.classes.tolist() for d in got] == [[2, 0], []]
    assert got[0].classes.dtype == np.int64 and got[1].boxes.shape == (0, 4)
    assert detections_from_outputs(boxes, classes, scores, np.asarray([2.0, 0]), 0.5)[0].classes.tolist() == [2]
    with pytest.raises(DataError, match=r"detector outputs do not fit together: boxes \[2, 3, 4\]"):
        detections_from_outputs(boxes, classes, scores, np.asarray([4.0, 0]))


def test_drawing_puts_the_box_in_its_class_colour_on_an_enlarged_image():
    image = np.zeros((64, 64, 3), np.float32)
    picture = draw_detections(image, det([[0.25, 0.25, 0.75, 0.75]], [1], [0.87]), ["cat", "dog"])
    assert picture.size == (256, 256) and picture.mode == "RGB"
    assert picture.getpixel((64, 160)) == (0xf2, 0x8e, 0x2b)  # the left edge, second colour
    assert picture.getpixel((128, 128)) == (0, 0, 0)
    gray = draw_detections(np.zeros((32, 32, 1), np.uint8), det([], [], []), [], min_side=32)
    assert gray.size == (32, 32)
    with pytest.raises(DataError, match="class 1 has no label"):
        draw_detections(image, det([BOX], [1], [0.9]), ["cat"])

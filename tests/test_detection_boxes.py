"""Boxes (pipeline.detection.boxes): conversions, validation and transforms, hand-computed,
and checked against where the pixels of a fitted or warped image land."""

import numpy as np
import pytest

from pipeline.data.resize import fit_images
from pipeline.detection.augment import warp_image
from pipeline.detection.boxes import (affine_boxes, box_iou, boxes_to_coco, check_box, clip_boxes, coco_to_boxes,
                                      fit_boxes, flip_boxes, pad_geometry, voc_to_boxes, xyxy_to_boxes)
from pipeline.detection.sets import fit_image
from pipeline.errors import DataError


def _extent(mask: np.ndarray):
    """[ymin, xmin, ymax, xmax] in pixels (continuous) of the True pixels of a 2-D mask."""
    ys, xs = np.nonzero(mask)
    return [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]


def _rect_image(h, w, rows, cols, channels=1):
    x = np.zeros((h, w, channels), np.uint8)
    x[rows[0]:rows[1], cols[0]:cols[1]] = 255
    return x


def test_conversions_from_each_file_format():
    # One box, pixels x 10..40, y 20..60 (continuous), in a 100 wide x 200 high image.
    want = [[0.1, 0.1, 0.3, 0.4]]
    assert np.allclose(xyxy_to_boxes([10, 20, 40, 60], 100, 200), want)
    assert np.allclose(coco_to_boxes([10, 20, 30, 40], 100, 200), want)
    # VOC: 1-based inclusive pixel indexes 11..40 are continuous 10..40.
    assert np.allclose(voc_to_boxes([11, 21, 40, 60], 100, 200), want)
    assert xyxy_to_boxes([10, 20, 40, 60], 100, 200).dtype == np.float32
    assert np.allclose(boxes_to_coco(np.array(want, np.float32), 100, 200), [[10, 20, 30, 40]])


def test_check_box_clips_within_a_pixel_and_names_the_file_and_box():
    assert np.allclose(check_box("b", (-0.5, 0, 100.4, 50), 100, 50, "f.json"), [0, 0, 100, 50])
    with pytest.raises(DataError, match=r"^f\.json: annotation 7: box \[1, 2, 0, 5\] has a non-positive size"):
        check_box("[1, 2, 0, 5]", (1, 2, 1, 7), 100, 50, "f.json: annotation 7")
    with pytest.raises(DataError, match=r"^a\.xml: object #1 \(cat\): box B lies outside the 100x50 image"):
        check_box("B", (90, 10, 110, 20), 100, 50, "a.xml: object #1 (cat)")
    with pytest.raises(DataError, match="not a finite number"):
        check_box("B", (float("nan"), 0, 1, 1), 100, 50, "x")


def test_pad_geometry_shrinking_and_enlarging():
    # 50 high x 100 wide into 64x64: no whole factor fits, so shrink by 0.64 to 32x64, centred.
    assert pad_geometry((50, 100), (64, 64)) == (16, 0, 32, 64)
    assert np.allclose(fit_boxes(np.array([[0, 0, 1, 1], [0.5, 0.5, 1, 1]]), (50, 100), (64, 64), "pad"),
                       [[0.25, 0, 0.75, 1], [0.5, 0.5, 0.75, 1]])
    # 20x30 into 64x64: a whole factor 2 gives 40x60, top 12, left 2.
    assert pad_geometry((20, 30), (64, 64)) == (12, 2, 40, 60)
    assert np.allclose(fit_boxes(np.array([[0, 0, 1, 1]]), (20, 30), (64, 64), "pad"),
                       [[12 / 64, 2 / 64, 52 / 64, 62 / 64]])


@pytest.mark.parametrize("channels", [1, 3])
def test_padded_boxes_land_where_the_padded_pixels_land(channels):
    # Rows 5..10, columns 3..9 of a 20x30 image -> rows 22..32, columns 8..20 of 64x64.
    img = _rect_image(20, 30, (5, 10), (3, 9), channels)
    box = xyxy_to_boxes([3, 5, 9, 10], 30, 20)
    fitted, moved = fit_image(img, box, (64, 64, channels), "pad")
    assert _extent(fitted[..., 0] > 127) == [22, 8, 32, 20]
    assert np.allclose(moved * 64, [[22, 8, 32, 20]], atol=1e-4)
    # The numpy fit (the classification loader's) puts the pixels in the same place.
    numpy_fit = fit_images(img[None].astype(np.float32) / 255, (64, 64, channels), "pad")[0]
    assert _extent(numpy_fit[..., 0] > 0.5) == [22, 8, 32, 20]


def test_padded_boxes_follow_a_shrink():
    # 100x200 (h x w) -> 64x64: scale 0.32 to 32x64, top 16. Rows 50..100 -> 16 + 16..32.
    img = _rect_image(100, 200, (50, 100), (100, 200))
    fitted, moved = fit_image(img, xyxy_to_boxes([100, 50, 200, 100], 200, 100), (64, 64, 1), "pad")
    assert np.allclose(moved * 64, [[32, 32, 48, 64]], atol=1e-4)
    assert _extent(fitted[..., 0] > 127) == [32, 32, 48, 64]


def test_resize_keeps_normalized_boxes_and_the_pixels_follow():
    img = _rect_image(20, 30, (5, 10), (3, 9), 3)
    box = xyxy_to_boxes([3, 5, 9, 10], 30, 20)
    fitted, moved = fit_image(img, box, (40, 60, 3), "resize")
    assert np.array_equal(moved, box)
    # Enlarged x2 with a triangle filter: the box's edges fall half-way up the ramps.
    assert _extent(fitted[..., 0] > 127) == [10, 6, 20, 18]


def test_flip_by_hand_and_on_pixels():
    assert np.allclose(flip_boxes(np.array([[0.1, 0.2, 0.3, 0.5]])), [[0.1, 0.5, 0.3, 0.8]])
    img = _rect_image(20, 30, (5, 10), (3, 9))
    flipped = warp_image(img, True, 1.0, (0.0, 0.0))
    assert np.array_equal(flipped, img[:, ::-1])
    box = flip_boxes(xyxy_to_boxes([3, 5, 9, 10], 30, 20))
    assert np.allclose(box * [20, 30, 20, 30], [_extent(flipped[..., 0] > 127)], atol=1e-4)


def test_zoom_and_shift_by_hand_and_on_pixels():
    assert np.allclose(affine_boxes(np.array([[0.25, 0.25, 0.75, 0.75]]), zoom=2.0), [[0, 0, 1, 1]])
    assert np.allclose(affine_boxes(np.array([[0.2, 0.3, 0.4, 0.5]]), shift=(0.1, -0.2)),
                       [[0.3, 0.1, 0.5, 0.3]])
    img = _rect_image(40, 40, (10, 20), (16, 24))
    # Zoom 2 about the centre: rows 10..20 -> 0..20, columns 16..24 -> 12..28; then shift 5 px down.
    warped = warp_image(img, False, 2.0, (5 / 40, 0.0))
    box = affine_boxes(xyxy_to_boxes([16, 10, 24, 20], 40, 40), 2.0, (5 / 40, 0.0))
    assert np.allclose(box * 40, [[5, 12, 25, 28]])
    assert _extent(warped[..., 0] > 127) == [5, 12, 25, 28]


def test_clip_drops_boxes_mostly_outside_with_their_classes():
    boxes = np.array([[-0.5, 0.2, 0.5, 0.4],     # half inside: kept, clipped
                      [-0.7, 0.2, 0.3, 0.4],     # 30% inside: dropped
                      [0.5, 0.5, 0.51, 0.7],     # 1 pixel high in a 100-pixel image: dropped
                      [0.9, 0.9, 1.1, 1.1]])     # a quarter inside: dropped
    kept, classes = clip_boxes(boxes, np.array([3, 1, 2, 0]), (100, 100))
    assert np.allclose(kept, [[0, 0.2, 0.5, 0.4]]) and classes.tolist() == [3]
    assert kept.dtype == np.float32 and classes.dtype == np.int64
    none, no_classes = clip_boxes(np.zeros((0, 4)), np.zeros(0), (10, 10))
    assert none.shape == (0, 4) and no_classes.shape == (0,)


def test_iou_by_hand():
    a = np.array([[0, 0, 0.5, 0.5]])
    b = np.array([[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 1, 1], [0, 0, 0.5, 0.5]])
    # Overlap 0.0625 over a union of 0.25 + 0.25 - 0.0625.
    assert np.allclose(box_iou(a, b), [[0.0625 / 0.4375, 0.0, 1.0]])

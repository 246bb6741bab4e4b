"""Detection data sets (pipeline.detection): the synthetic set, the COCO and VOC readers
and their errors, the COCO writer's round trip, and paired image/box augmentation."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.data.splits import stream_rng
from pipeline.detection.augment import augment_detection
from pipeline.detection.boxes import box_iou
from pipeline.detection.coco import read_coco, write_coco
from pipeline.detection.sets import DetectionSet
from pipeline.detection.synthetic import SYNTHETIC_LABELS, load_synthetic, render_synthetic
from pipeline.detection.voc import read_voc
from pipeline.errors import ConfigError, DataError

SMALL = {"train": 6, "val": 2, "test": 4}


@pytest.fixture(scope="module")
def synthetic():
    return render_synthetic(12, (96, 96, 3), stream_rng(0, "test-synthetic"))


# The synthetic set ---------------------------------------------------------------------

def test_synthetic_is_deterministic_per_seed_and_split():
    a = load_synthetic((64, 64, 3), seed=1, counts=SMALL)
    b = load_synthetic((64, 64, 3), seed=1, counts={**SMALL, "train": 3})
    c = load_synthetic((64, 64, 3), seed=2, counts=SMALL)
    assert np.array_equal(a.test.images, b.test.images)  # the train count does not move the test set
    assert all(np.array_equal(x, y) for x, y in zip(a.test.boxes, b.test.boxes))
    assert not np.array_equal(a.test.images, c.test.images)
    assert not np.array_equal(a.train.images[:4], a.test.images)
    assert a.labels == SYNTHETIC_LABELS and len(a.train) == 6 and a.train.images.dtype == np.uint8
    assert a.test.names[0] == "synthetic-test-00000"


def test_synthetic_objects_count_size_and_overlap(synthetic):
    for boxes, classes in zip(synthetic.boxes, synthetic.classes):
        assert 1 <= len(boxes) <= 4 and len(classes) == len(boxes)
        assert classes.min() >= 0 and classes.max() < len(SYNTHETIC_LABELS)
        sides = np.concatenate([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
        assert sides.min() >= 0.12 - 1e-6 and sides.max() <= 0.5 + 1e-6
        iou = box_iou(boxes, boxes) - np.eye(len(boxes))
        assert iou.max() <= 0.2


def test_synthetic_boxes_are_tight(synthetic):
    """Each object's shape reaches all four edges of its box: on each edge line inside the
    box some pixel differs clearly from the line just outside it."""
    for img, boxes in zip(synthetic.images, synthetic.boxes):
        luma = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        px = np.round(boxes * 96).astype(int)
        for j, (y0, x0, y1, x1) in enumerate(px):
            others = np.delete(px, j, axis=0)
            near = ((others[:, 0] <= y1 + 2) & (others[:, 2] >= y0 - 2)
                    & (others[:, 1] <= x1 + 2) & (others[:, 3] >= x0 - 2))
            if near.any():
                continue  # an overlapping object may cover an edge
            edges = [(luma[y0, x0:x1], luma[y0 - 1, x0:x1], y0 > 0),
                     (luma[y1 - 1, x0:x1], luma[min(y1, 95), x0:x1], y1 < 96),
                     (luma[y0:y1, x0], luma[y0:y1, x0 - 1], x0 > 0),
                     (luma[y0:y1, x1 - 1], luma[y0:y1, min(x1, 95)], x1 < 96)]
            for inside, outside, has_outside in edges:
                if has_outside:  # an edge pixel at least half covered, contrast >= 0.3 luma
                    assert np.abs(inside - outside).max() > 30


def test_synthetic_grey_and_size_checks():
    grey = render_synthetic(2, (64, 80, 1), stream_rng(0, "grey"))
    assert grey.images.shape == (2, 64, 80, 1)
    with pytest.raises(ConfigError, match="must be >= 64, got 32x64"):
        load_synthetic((32, 64, 3), counts=SMALL)
    with pytest.raises(ConfigError, match="unknown split"):
        load_synthetic((64, 64, 3), counts={"tets": 1})


def test_detection_set_checks_its_arrays(synthetic):
    with pytest.raises(ValueError, match="expected float32 boxes"):
        DetectionSet(synthetic.images[:1], (np.zeros((1, 4)),), (np.zeros(1, np.int64),), ("a",), ("x",), "s")
    sub = synthetic.subset([3, 1])
    assert sub.names == (synthetic.names[3], synthetic.names[1])
    assert np.array_equal(sub.boxes[0], synthetic.boxes[3])
    assert sum(synthetic.counts().values()) == synthetic.num_objects()


# COCO ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fit", ["resize", "pad"])
def test_coco_round_trip_through_write_coco(tmp_path, synthetic, fit):
    ann = write_coco(synthetic, tmp_path)
    back = read_coco(tmp_path / "images", ann, (96, 96, 3), fit)
    assert np.array_equal(back.images, synthetic.images)
    assert back.labels == synthetic.labels
    for got, want in zip(back.boxes, synthetic.boxes):
        assert got.dtype == np.float32 and np.abs(got - want).max() <= 1e-6
    assert all(np.array_equal(g, w) for g, w in zip(back.classes, synthetic.classes))


def test_coco_round_trip_grey(tmp_path):
    grey = render_synthetic(2, (64, 64, 1), stream_rng(0, "grey"))
    back = read_coco(tmp_path / "images", write_coco(grey, tmp_path), (64, 64, 1), "resize")
    assert np.array_equal(back.images, grey.images)


def _coco_folder(tmp_path, size=(40, 20), **changes):
    """A 40x20 (w x h) image a.png with one box and an unannotated b.png; JSON changed as asked."""
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (40, 20)).save(tmp_path / "img" / "b.png")
    doc = {"images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 20},
                      {"id": 9, "file_name": "b.png", "width": 40, "height": 20}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [4, 2, 20, 10]},
                           {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 40, 20], "iscrowd": 1},
                           {"id": 3, "image_id": 7, "category_id": 3, "bbox": [30, 10, 10, 10]}],
           "categories": [{"id": 5, "name": "dog"}, {"id": 3, "name": "cat"}]}
    for key, value in changes.items():
        doc[key] = value(doc[key]) if callable(value) else value
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return tmp_path / "img", path


def test_coco_categories_crowds_and_images_without_boxes(tmp_path):
    images, ann = _coco_folder(tmp_path)
    s = read_coco(images, ann, (20, 40, 3), "resize")
    assert s.labels == ("cat", "dog")  # in order of category id (3, 5)
    assert s.names == ("a.png", "b.png")
    assert s.classes[0].tolist() == [1, 0]  # the crowd box is skipped
    assert np.allclose(s.boxes[0], [[0.1, 0.1, 0.6, 0.6], [0.5, 0.75, 1.0, 1.0]])
    assert s.boxes[1].shape == (0, 4) and s.classes[1].shape == (0,)
    # Padded into 40x40: the 40x20 image sits at rows 10..30.
    padded = read_coco(images, ann, (40, 40, 3), "pad")
    assert np.allclose(padded.boxes[0][0], [0.3, 0.1, 0.55, 0.6])


def _drop_key(key):
    return lambda entries: [{k: v for k, v in e.items() if k != key} for e in entries]


def _set_first(key, value):
    return lambda entries: [{**entries[0], key: value}] + entries[1:]


@pytest.mark.parametrize("changes, message", [
    ({"images": "oops"}, r"ann\.json: expected a list under 'images', got str"),
    ({"annotations": _drop_key("bbox")}, r"ann\.json: annotation #0 lacks the key 'bbox'"),
    ({"annotations": _set_first("image_id", 8)}, r"ann\.json: annotation 1: image_id 8 is not among the images"),
    ({"annotations": _set_first("category_id", 4)},
     r"ann\.json: annotation 1 \(image 7\): category_id 4 is not among the categories \(ids 3, 5\)"),
    ({"annotations": _set_first("bbox", [30, 2, 20, 10])},
     r"ann\.json: annotation 1 \(image 7, a\.png\): box \[30, 2, 20, 10\] lies outside the 40x20 image"),
    ({"annotations": _set_first("bbox", [4, 2, 0, 10])},
     r"ann\.json: annotation 1 \(image 7, a\.png\): box \[4, 2, 0, 10\] has a non-positive size"),
    ({"categories": _drop_key("name")}, r"ann\.json: category #0 lacks the key 'name'"),
    ({"images": _set_first("file_name", "gone.png")}, r"img/gone\.png: image file not found"),
])
def test_coco_errors_name_the_file_and_box(tmp_path, changes, message):
    images, ann = _coco_folder(tmp_path, **changes)
    with pytest.raises(DataError, match=message):
        read_coco(images, ann, (20, 40, 3), "resize")


def test_coco_file_errors(tmp_path):
    images, ann = _coco_folder(tmp_path)
    ann.write_text('{"images": [')
    with pytest.raises(DataError, match=r"ann\.json: not valid JSON \(Expecting value at line 1 column 13\)"):
        read_coco(images, ann, (20, 40, 3), "resize")
    with pytest.raises(DataError, match=r"nope\.json: annotation file not found"):
        read_coco(images, tmp_path / "nope.json", (20, 40, 3), "resize")
    images, ann = _coco_folder(tmp_path, size=(20, 40))
    with pytest.raises(DataError, match=r"a\.png: the image is 20x40 pixels but .*ann\.json gives image 7 as 40x20"):
        read_coco(images, ann, (20, 40, 3), "resize")
    images, ann = _coco_folder(tmp_path)
    (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"a\.png: (corrupt|not a readable) image"):
        read_coco(images, ann, (20, 40, 3), "resize")


# Pascal VOC ----------------------------------------------------------------------------

def _voc_xml(name, width, height, objects):
    body = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    return (f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{body}</annotation>")


def _voc_folder(tmp_path):
    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (50, 40), (90, 90, 90)).save(root / "JPEGImages" / "001.jpg", quality=95)
    Image.new("RGB", (30, 60), (10, 90, 90)).save(root / "JPEGImages" / "002.jpg", quality=95)
    (root / "Annotations" / "001.xml").write_text(_voc_xml(
        "001", 50, 40, [("person", (6, 11, 25, 30), False), ("dog", (1, 1, 50, 40), True)]))
    (root / "Annotations" / "002.xml").write_text(_voc_xml("002", 30, 60, [("cat", (1, 31, 30, 60), False)]))
    (root / "ImageSets" / "Main" / "val.txt").write_text("002\n")
    return root


def test_voc_reads_boxes_labels_and_splits(tmp_path):
    root = _voc_folder(tmp_path)
    s = read_voc(root, (40, 40, 3), "resize")
    assert s.labels == ("cat", "person")  # the difficult dog is skipped
    assert s.names == ("001.jpg", "002.jpg") and s.images.shape == (2, 40, 40, 3)
    # Pixels 6..25 (1-based, inclusive) of 50 -> continuous 5..25; rows 11..30 of 40 -> 10..30.
    assert np.allclose(s.boxes[0], [[0.25, 0.1, 0.75, 0.5]]) and s.classes[0].tolist() == [1]
    assert np.allclose(s.boxes[1], [[0.5, 0.0, 1.0, 1.0]]) and s.classes[1].tolist() == [0]
    assert "1 difficult objects skipped" in s.source
    every = read_voc(root, (40, 40, 3), "resize", include_difficult=True)
    assert every.labels == ("cat", "dog", "person") and every.classes[0].tolist() == [2, 1]
    val = read_voc(root, (40, 40, 1), "pad", split="val", labels=("cat", "dog", "person"))
    assert val.names == ("002.jpg",) and val.images.shape == (1, 40, 40, 1)
    # 60 high x 30 wide padded into 40x40: shrunk to 40x20, columns 10..30.
    assert np.allclose(val.boxes[0], [[0.5, 0.25, 1.0, 0.75]]) and val.classes[0].tolist() == [0]


def test_voc_errors_name_the_file_and_box(tmp_path):
    root = _voc_folder(tmp_path)
    ann = root / "Annotations"
    with pytest.raises(DataError, match=r"001\.xml: object 'person' is not among the labels \(cat\)"):
        read_voc(root, (40, 40, 3), labels=("cat",))
    with pytest.raises(DataError, match=r"ImageSets/Main/train\.txt: cannot read the split file"):
        read_voc(root, (40, 40, 3), split="train")
    (ann / "002.xml").write_text(_voc_xml("002", 30, 60, [("cat", (1, 31, 40, 60), False)]))
    with pytest.raises(DataError, match=r"002\.xml: object #1 \(cat\): box \[xmin 1, ymin 31, xmax 40, ymax 60\] "
                                        r"lies outside the 30x60 image"):
        read_voc(root, (40, 40, 3))
    (ann / "002.xml").write_text("<annotation><size><width>30</width>")
    with pytest.raises(DataError, match=r"002\.xml: not valid XML"):
        read_voc(root, (40, 40, 3))
    (ann / "002.xml").write_text("<annotation><size><width>30</width><height>60</height></size>"
                                 "<object><name>cat</name></object></annotation>")
    with pytest.raises(DataError, match=r"002\.xml: object #1 \(cat\) has no <bndbox>"):
        read_voc(root, (40, 40, 3))
    (ann / "002.xml").write_text(_voc_xml("003", 30, 60, []))
    with pytest.raises(DataError, match=r"JPEGImages/003\.jpg: image file not found"):
        read_voc(root, (40, 40, 3))
    (ann / "002.xml").write_text(_voc_xml("002", 60, 30, []))
    with pytest.raises(DataError, match=r"002\.jpg: the image is 30x60 pixels but .*002\.xml gives its size as 60x30"):
        read_voc(root, (40, 40, 3))


# Augmentation --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_augmentation_moves_boxes_with_the_pixels(dtype):
    n = 24
    images = np.zeros((n, 48, 64, 1), dtype)
    images[:, 12:30, 20:36] = 255 if dtype == np.uint8 else 1.0
    boxes = [np.array([[12 / 48, 20 / 64, 30 / 48, 36 / 64]], np.float32)] * n
    classes = [np.array([2], np.int64)] * n
    out, new_boxes, new_classes = augment_detection(images, boxes, classes, stream_rng(0, "aug"),
                                                    flip=True, shift=0.3, zoom=0.3)
    again = augment_detection(images, boxes, classes, stream_rng(0, "aug"), flip=True, shift=0.3, zoom=0.3)
    assert out.dtype == dtype and np.array_equal(out, again[0])
    assert all(np.array_equal(a, b) for a, b in zip(new_boxes, again[1]))
    half = 127 if dtype == np.uint8 else 0.5
    moved = 0
    for img, b, c in zip(out, new_boxes, new_classes):
        mask = img[..., 0] > half
        if len(b) == 0:  # dropped: little or nothing of the square is left in the image
            assert mask.sum() < 0.4 * 18 * 16 * 4
            continue
        assert c.tolist() == [2]
        ys, xs = np.nonzero(mask)
        got = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)
        assert np.abs(got - b[0] * [48, 64, 48, 64]).max() <= 1.0
        moved += not np.allclose(b[0], boxes[0][0])
    assert moved > n // 2


def test_augmentation_ranges_are_checked():
    with pytest.raises(ConfigError, match=r"zoom must be in \[0, 1\), got 1.5"):
        augment_detection(np.zeros((1, 8, 8, 1), np.uint8), [np.zeros((0, 4))], [np.zeros(0)],
                          stream_rng(0, "x"), zoom=1.5)

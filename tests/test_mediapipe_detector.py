"""A real client runs an exported detector: MediaPipe Tasks' ObjectDetector on a
``.tflite`` with object-detector metadata written by MediaPipe's metadata writer.

The detector is the tiny crafted one (:mod:`tests.helpers.detector`) exported in
float32 with TFLite's postprocess op. MediaPipe reads the embedded metadata
(normalization, output roles, labels) and detects on 8-bit RGB images; its detections
must be ours (``run_tflite_detector`` on the same file, images / 255): same count, same
classes and scores, boxes as MediaPipe's whole pixels of ours. The MediaPipe
environment is the real one; nothing is skipped.
"""

import numpy as np
import pytest

from pipeline.detection.types import Detections
from pipeline.errors import ConfigError, ModelFileError
from pipeline.publish.detector_metadata import (OUTPUT_ROLES, detect_with_mediapipe, embed_detector_metadata,
                                                matches_mediapipe, read_metadata)
from tests.helpers.detection import detection_model
from tests.helpers.detector import ANCHORS, BOX_BIAS, SIZE, build_detector, painted

LABELS = ("red", "green", "blue")  # class c scores image channel c
#: Squares (row, column, class, level) on the 4x4 grid: distinct levels give distinct
#: scores; the BOX_BIAS shift moves column-0 boxes over the left edge.
IMAGES = np.stack([painted([(0, 0, 0, 0.95), (2, 3, 2, 0.8)]), painted([(3, 1, 1, 0.7), (1, 0, 0, 0.6)]),
                   painted([(1, 2, 2, 0.9), (3, 3, 1, 0.75), (0, 1, 0, 0.5)])])
PIXELS = np.clip(np.round(IMAGES * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def plain_detector():
    """The crafted detector's float32 .tflite, without metadata."""
    from pipeline.detection.export import PostprocessConfig, convert_detector
    from pipeline.native import import_tensorflow
    from pipeline.variants import VARIANTS

    import_tensorflow()
    config = PostprocessConfig(max_detections=8, score_threshold=0.05, iou_threshold=0.5)
    return convert_detector(build_detector(box_bias=BOX_BIAS), ANCHORS, VARIANTS.get("float32"), config=config)


@pytest.fixture(scope="module")
def with_metadata(plain_detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("detector") / "model.tflite"
    path.write_bytes(embed_detector_metadata(plain_detector, LABELS, "tiny detector", "three painted colours",
                                             source="model.tflite"))
    return path


def mediapipe_pixels(boxes: np.ndarray, clamp: bool = True) -> np.ndarray:
    """Normalized [ymin, xmin, ymax, xmax] as MediaPipe's pixel boxes [x, y, width, height]:
    each value truncated to an integer and clamped to [0, SIZE] (its
    DetectionTransformationCalculator); with ``clamp`` False, the exact pixel values."""
    b = np.asarray(boxes, np.float32) * np.float32(SIZE)
    xywh = np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], axis=1)
    return np.clip(np.trunc(xywh), 0, SIZE) if clamp else xywh


@pytest.mark.integration
def test_metadata_reads_back_with_labels_normalization_and_output_roles(plain_detector, with_metadata):
    shown = read_metadata(with_metadata.read_bytes())
    assert shown["associated_files"]["labels.txt"].splitlines() == list(LABELS)
    graph = shown["metadata"]["subgraph_metadata"][0]
    [unit] = graph["input_tensor_metadata"][0]["process_units"]
    assert unit["options"] == {"mean": [0.0] * 3, "std": [255.0] * 3}
    outputs = graph["output_tensor_metadata"]
    assert tuple(t["name"] for t in outputs) == OUTPUT_ROLES
    assert outputs[0]["content"]["content_properties"] == {"index": [1, 0, 3, 2], "type": "BOUNDARIES"}
    [labels] = outputs[1]["associated_files"]  # on the category tensor: class i is line i
    assert (labels["name"], labels["type"]) == ("labels.txt", "TENSOR_VALUE_LABELS")
    assert shown["metadata"]["name"] == "tiny detector"
    # The packed labels carry a fixed time: the same model and labels give the same bytes.
    again = embed_detector_metadata(plain_detector, LABELS, "tiny detector", "three painted colours")
    assert again == with_metadata.read_bytes()


@pytest.mark.integration
def test_mediapipe_object_detector_agrees_with_our_evaluation(with_metadata):
    from pipeline.detection.evaluate import as_detections, run_tflite_detector

    theirs = [as_detections(d, "MediaPipe") for d in detect_with_mediapipe(with_metadata, PIXELS)]
    ours = run_tflite_detector(with_metadata, PIXELS.astype(np.float32) / np.float32(255))
    assert [len(d.scores) for d in theirs] == [len(d.scores) for d in ours]
    assert sum(len(d.scores) for d in ours) >= 10 and min(d.scores.min() for d in ours) < 0.1  # low ones too
    over_the_edge = 0
    for t, o in zip(theirs, ours):
        ti, oi = np.argsort(-t.scores, kind="stable"), np.argsort(-o.scores, kind="stable")
        assert len(np.unique(o.scores)) == len(o.scores)  # distinct: the order pairs them
        np.testing.assert_array_equal(t.classes[ti], o.classes[oi])
        np.testing.assert_allclose(t.scores[ti], o.scores[oi], atol=1e-5)
        got, want = np.round(t.boxes[ti] * SIZE), o.boxes[oi]
        got = np.stack([got[:, 1], got[:, 0], got[:, 3] - got[:, 1], got[:, 2] - got[:, 0]], axis=1)
        assert np.abs(got - mediapipe_pixels(want)).max() <= 1, (got, want * SIZE)
        # With its top-left corner in the image (a box may end past the right or bottom
        # edge), corner and size are ours within a pixel; past the left or top edge
        # MediaPipe moves the corner to 0 and keeps the size.
        inside = np.all(want[:, :2] >= 0, axis=1)
        exact = mediapipe_pixels(want, clamp=False)
        assert np.all(np.abs(got[inside] - exact[inside]) < 1)
        assert np.all(got[~inside][:, :2].min(axis=1) == 0)
        over_the_edge += int(np.sum(~inside))
    assert over_the_edge > 0  # the clamping rule was exercised
    # The build's check of its bundle says the same: every detection, and nothing else.
    total = sum(len(d.scores) for d in ours)
    assert matches_mediapipe(ours, theirs, SIZE, SIZE) == total == sum(len(d.scores) for d in theirs)
    moved = [Detections(t.boxes + np.float32(2.5 / SIZE), t.classes, t.scores) for t in theirs]
    relabelled = [Detections(t.boxes, (t.classes + 1) % len(LABELS), t.scores) for t in theirs]
    assert matches_mediapipe(ours, moved, SIZE, SIZE) == matches_mediapipe(ours, relabelled, SIZE, SIZE) == 0


class _NoMediaPipe:
    def run(self, *args, **kwargs):
        raise AssertionError("MediaPipe ran before the input was checked")


def test_bad_labels_and_models_are_refused_before_mediapipe_runs(tmp_path):
    model = detection_model(tmp_path / "postprocess.tflite", classes=2).read_bytes()
    with pytest.raises(ConfigError, match=r"^postprocess.tflite: 3 labels for a detector of 2 classes \(its class "
                                          r"scores are \[1, 8, 3\], background first\); give one label per class$"):
        embed_detector_metadata(model, LABELS, "x", "x", source="postprocess.tflite", env=_NoMediaPipe())
    with pytest.raises(ConfigError, match="label 'red' is given twice"):
        embed_detector_metadata(model, ["red", "red"], "x", "x", env=_NoMediaPipe())
    with pytest.raises(ModelFileError, match=r"postprocess.tflite: MediaPipe's ObjectDetector needs one float32 or "
                                             r"uint8 RGB image input \[1, H, W, 3\]; the model's inputs are "
                                             r"float32 \[1, 8, 4\], float32 \[1, 8, 3\]$"):
        embed_detector_metadata(model, LABELS[:2], "x", "x", source="postprocess.tflite", env=_NoMediaPipe())
    with pytest.raises(ModelFileError, match="not a TFLite"):
        embed_detector_metadata(b"not a model", LABELS, "x", "x", env=_NoMediaPipe())
    with pytest.raises(ConfigError, match=r"expected uint8 RGB images \[N, H, W, 3\], got float32"):
        detect_with_mediapipe(tmp_path / "model.tflite", IMAGES, env=_NoMediaPipe())


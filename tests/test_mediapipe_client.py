"""A real client runs the bundle: MediaPipe Tasks' ImageClassifier on ``bundle/model.tflite``.

On the real smoke build of the default recipe (conftest's ``smoke_build``): MediaPipe
reads the embedded metadata (normalization, labels) and classifies the test split as
8-bit RGB images; its top-1 must equal our own LiteRT evaluation of the same file on
the same images, image for image. The MediaPipe environment is the real one (``make
test`` builds it first); nothing is skipped.
"""

import json

import numpy as np
import pytest

from pipeline.data import load_dataset
from pipeline.publish.bundle import MODEL_FILE, PLAIN_MODEL_FILE
from pipeline.publish.tflite_metadata import classify_with_mediapipe, read_metadata
from pipeline.recipe.load import load_recipe
from pipeline.tflite.host import run_tflite

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def test_images(smoke_build):
    """The smoke build's test split as 8-bit pixels [N, H, W, C] and its labels."""
    recipe = load_recipe("default", smoke=True)
    shape = (recipe.model.input_size, recipe.model.input_size, recipe.model.channels)
    splits = load_dataset(recipe.data, shape, recipe.seed)
    pixels = np.clip(np.round(np.asarray(splits.x_test) * 255), 0, 255).astype(np.uint8)
    return pixels, splits.y_test


def _top1(scores: np.ndarray) -> np.ndarray:
    """Highest score, lowest index on a tie (int8 outputs tie often: 256 levels)."""
    return np.argmax(scores, axis=1)


def test_mediapipe_reads_the_bundle_and_agrees_with_our_evaluation(smoke_build, test_images):
    bundle = smoke_build.root / "bundle"
    meta = json.loads((bundle / "metadata.json").read_text())
    pixels, labels = test_images
    rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
    assert meta["tflite_metadata"]["mediapipe_tasks"] is True

    shown = read_metadata((bundle / MODEL_FILE).read_bytes())
    assert shown["associated_files"]["labels.txt"].splitlines() == list(smoke_build.summary.labels)
    [unit] = shown["metadata"]["subgraph_metadata"][0]["input_tensor_metadata"][0]["process_units"]
    assert unit["options"] == {"mean": [0.0] * 3, "std": [255.0] * 3}

    theirs = classify_with_mediapipe(bundle / MODEL_FILE, rgb)
    ours = run_tflite(bundle / MODEL_FILE, rgb.astype(np.float32) / np.float32(255))
    assert theirs.shape == ours.shape == (len(labels), len(smoke_build.summary.labels))
    disagree = np.flatnonzero(_top1(theirs) != _top1(ours))
    assert disagree.size == 0, (f"MediaPipe and LiteRT disagree on {disagree.size} of {len(labels)} images "
                                f"(first {disagree[:5].tolist()})")
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    # The metadata-free grey model, as evaluated by the build, classifies the same images alike.
    plain = run_tflite(bundle / PLAIN_MODEL_FILE, pixels.astype(np.float32) / np.float32(255))
    assert np.array_equal(_top1(plain), _top1(ours))

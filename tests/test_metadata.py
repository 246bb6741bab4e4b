"""TFLite metadata written by MediaPipe's writer in its isolated environment, on a tiny model.

The environment is the real one (``make test`` builds it first via ``make mediapipe-env``;
:func:`ensure_env` builds it here too when missing): no test here is skipped.
"""

import numpy as np
import pytest

from pipeline.errors import DeviceUnavailableError, ModelFileError
from pipeline.publish.mediapipe_env import REQUIREMENTS, MediaPipeEnv, ensure_env
from pipeline.publish.tflite_metadata import embed_metadata, read_metadata, rgb_front
from pipeline.tflite.host import run_tflite
from pipeline.tflite.reader import parse_tflite
from tests.helpers.fake_builds import LABELS, tiny_tflite


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.tflite"
    tiny_tflite(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def grey_images():
    """8-bit grey images as floats in [0, 1], the way the pipeline feeds them."""
    pixels = np.random.default_rng(3).integers(0, 256, (64, 32, 32, 1)).astype(np.uint8)
    return pixels.astype(np.float32) / np.float32(255)


@pytest.fixture(scope="module")
def embedded(tiny):
    return embed_metadata(tiny, name="tiny", description="a tiny test classifier", labels=LABELS, channels=1,
                          input_description="grey image", output_description="class probabilities")


def test_rgb_front_gives_the_grey_model_on_repeated_grey(tiny, grey_images):
    front = rgb_front(tiny)
    model = parse_tflite(front, "front")
    assert list(model.tensors[model.inputs[0]].shape) == [1, 32, 32, 3]
    assert [op.opcode for op in model.operators] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    grey = run_tflite(tiny, grey_images)
    rgb = run_tflite(front, np.repeat(grey_images, 3, axis=-1))
    np.testing.assert_allclose(rgb, grey, atol=1e-6)
    assert np.array_equal(rgb.argmax(1), grey.argmax(1))
    # A colour image goes through the luma weights, not one channel.
    colour = np.zeros((1, 32, 32, 3), np.float32)
    colour[..., 1] = 1.0
    np.testing.assert_allclose(run_tflite(front, colour), run_tflite(tiny, np.full((1, 32, 32, 1), 0.587,
                                                                                   np.float32)), atol=1e-6)


def test_rgb_front_needs_a_one_channel_float_input(tiny):
    with pytest.raises(ModelFileError, match=r"needs a float32 \[1, H, W, 1\] input; the model's input is "
                                             r"float32 \[1, 32, 32, 3\]"):
        rgb_front(rgb_front(tiny))


def test_embedded_metadata_reads_back_with_labels_and_normalization(embedded):
    assert embedded["rgb_front"] is True and embedded["color_space"] == "RGB"
    shown = read_metadata(embedded["model"])
    md = shown["metadata"]
    assert (md["name"], md["description"]) == ("tiny", "a tiny test classifier")
    [inp] = md["subgraph_metadata"][0]["input_tensor_metadata"]
    assert inp["content"]["content_properties"] == {"color_space": "RGB"}
    assert inp["process_units"] == [{"options_type": "NormalizationOptions",
                                     "options": {"mean": [0.0] * 3, "std": [255.0] * 3}}]
    [out] = md["subgraph_metadata"][0]["output_tensor_metadata"]
    assert out["description"] == "class probabilities"
    assert out["associated_files"][0]["name"] == "labels.txt"
    assert out["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert shown["associated_files"]["labels.txt"].splitlines() == LABELS


def test_metadata_does_not_change_the_numbers(tiny, embedded, grey_images):
    rgb = np.repeat(grey_images, 3, axis=-1)
    assert np.array_equal(run_tflite(embedded["model"], rgb), run_tflite(rgb_front(tiny), rgb))


def test_a_model_without_metadata_is_reported(tiny):
    with pytest.raises(DeviceUnavailableError, match="reading TFLite metadata failed.*"):
        read_metadata(tiny)


def test_the_environment_is_keyed_and_pinned():
    env = ensure_env(progress=None)
    manifest = env.manifest()
    assert manifest["key"] == env.key and env.root.name == env.key
    assert manifest["key_inputs"]["requirements"] == list(REQUIREMENTS)
    assert manifest["smoke"]["mediapipe"] == env.versions["mediapipe"] == "0.10.21"


def test_a_broken_environment_names_itself(tmp_path, tiny):
    broken = MediaPipeEnv(tmp_path / "nowhere")
    with pytest.raises(DeviceUnavailableError, match=r"reading TFLite metadata: no mediapipe-env environment at "
                                                      r".*nowhere .*build it with 'make mediapipe-env'"):
        read_metadata(tiny, env=broken)


def test_embedding_is_reproducible(tiny, embedded):
    """The packed labels.txt carries a fixed zip date: the same inputs give the same bytes."""
    again = embed_metadata(tiny, name="tiny", description="a tiny test classifier", labels=LABELS, channels=1,
                           input_description="grey image", output_description="class probabilities")
    assert again["model"] == embedded["model"]

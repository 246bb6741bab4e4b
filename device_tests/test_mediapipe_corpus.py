"""Every model of the MediaPipe wheel on pixel4 and camera-a53, on the real ARM runtimes.

    pytest device_tests/test_mediapipe_corpus.py

Each (model, device) runs once, one random input per model input (seed 0), two runs
at a time (each is a process of its own); the asserts share those results (a module
fixture). docs/devices.md has the table these runs give.

Agreement, as measured on this corpus: both devices' host references are their own
runtime and version (ai-edge-litert 2.3.0; tflite-runtime 2.14.0 built for x86_64),
yet float outputs are bit-exact only where no kernel differs by instruction set (one
of the 11 models camera-a53 loads): both runtimes hand float models to XNNPACK, whose x86
(AVX/FMA) and ARM (NEON) kernels round differently. So every float output must lie
within ``FLOAT_REL`` of the output's largest host magnitude: measured at most 1.7e-4
(pose_landmark_full's 256x256 segmentation logits, on both devices), 1e-5 or less for
every other output.

Every model the host reference loads runs on both devices. (tflite-runtime 2.14.0's
``get_tensor_details()`` crashes, SIGSEGV, on pose_detection and
face_detection_full_range_sparse, reading a tensor's sparsity parameters; the guest
runner reads tensors one field at a time instead: ``guest_runner.tensor_list``.)
"""

import time

import pytest

from benchmarks.mediapipe_corpus import DEVICES
from tests.helpers.mediapipe import mediapipe_models

pytestmark = pytest.mark.device

#: Float outputs vs the host reference: largest |difference| over the largest |host value|.
FLOAT_REL = 1e-3
#: Runs at a time (each an emulated process, and a host reference process).
WORKERS = 2
MODELS = {p.name: p for p in mediapipe_models()}


def _run(name, device):
    from pipeline.devices.check import run_device_check
    from pipeline.devices.model_io import random_inputs
    from pipeline.tflite.reader import read_tflite

    t0 = time.monotonic()
    # The wheel's own models: the host reference runs in this process (no isolated child).
    r = run_device_check(MODELS[name], device, random_inputs(read_tflite(MODELS[name]), 1))
    return r, time.monotonic() - t0


@pytest.fixture(scope="module")
def corpus():
    """``{(model name, device): (DeviceResult, wall s)}``: every model on every device, once
    (largest files first, so the two workers finish together)."""
    from concurrent.futures import ThreadPoolExecutor

    pairs = [(n, d) for n in sorted(MODELS, key=lambda n: -MODELS[n].stat().st_size) for d in DEVICES]
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip(pairs, pool.map(lambda p: _run(*p), pairs)))


def _lacking(path, device):
    """The custom ops the device runtime's op resolver lacks (asked of its host build)."""
    from pipeline.devices import op_support
    from pipeline.devices.profiles import get_device
    from pipeline.devices.targets import RUNTIMES
    from pipeline.tflite.reader import read_tflite

    model = read_tflite(path)
    custom = sorted({c.custom_code for c in model.op_codes if c.builtin == op_support.CUSTOM})
    ops = op_support.runtime_ops(RUNTIMES[get_device(device).runtime], custom)
    return [c for c in custom if not ops.custom[c]]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("profile_name", DEVICES)
def test_loads_or_names_the_custom_op_it_lacks(corpus, name, profile_name):
    from pipeline.devices.profiles import get_device

    r, _ = corpus[(name, profile_name)]
    lacking = _lacking(MODELS[name], profile_name)
    p = get_device(profile_name)
    if not lacking:
        assert r.loaded and r.verdict == "loads", r.load_error
        return
    if r.loaded:  # XNNPACK (LiteRT's default delegate) takes MediaPipe's transposed convolution
        assert p.runtime == "litert" and lacking == ["Convolution2DTransposeBias"], r
        return
    assert r.load_error_op in lacking, r
    assert r.verdict == f"not loadable on {p.runtime} {p.runtime_version}: custom op {r.load_error_op}"
    assert r.instructions_median is None and not r.outputs


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("profile_name", DEVICES)
def test_every_output_agrees_with_the_host(corpus, name, profile_name):
    r, _ = corpus[(name, profile_name)]
    if not r.loaded:
        return
    assert r.counts_exact and r.instructions_median > 0 and r.memory.fits, r
    from pipeline.tflite.reader import read_tflite

    assert len(r.outputs) == len(read_tflite(MODELS[name]).outputs) and r.inputs
    for o in r.outputs:
        assert o.dtype == "float32" and o.max_rel_diff <= FLOAT_REL, o


@pytest.mark.parametrize("profile_name", DEVICES)
def test_instruction_counts_repeat_exactly(corpus, profile_name):
    """Run to run, for the cheapest loaded model per device: the same per-inference counts.
    (Within a run they do not: the same input invoked twice differs by a few hundred
    instructions of the guest's Python, whose bytecode specializes as it warms.)"""
    from pipeline.devices.check import run_device_check
    from pipeline.devices.model_io import random_inputs
    from pipeline.tflite.reader import read_tflite

    loaded = [(r.instructions_median, name) for (name, dev), (r, _) in corpus.items()
              if dev == profile_name and r.loaded]
    _, name = min(loaded)
    first = corpus[(name, profile_name)][0]
    again = run_device_check(MODELS[name], profile_name, random_inputs(read_tflite(MODELS[name]), 1))
    assert again.instructions_per_inference == first.instructions_per_inference, name
    assert again.instructions_by_class == first.instructions_by_class, name


@pytest.mark.parametrize("profile_name", DEVICES)
def test_tflite_detection_postprocess_runs(tmp_path, profile_name):
    """The custom op TFLite registers itself loads on every device; its four outputs (two
    inputs in) match the host's (measured: bit-exact on both)."""
    from pipeline.devices.check import run_device_check
    from pipeline.devices.model_io import random_inputs
    from pipeline.tflite.reader import read_tflite
    from tests.helpers.detection import detection_model

    path = detection_model(tmp_path / "det.tflite")
    r = run_device_check(path, profile_name, random_inputs(read_tflite(path), 2))
    assert r.loaded and r.verdict == "loads", r.load_error
    assert [o.name for o in r.outputs] == ["detection_boxes", "detection_classes", "detection_scores",
                                           "num_detections"]
    assert all(o.max_rel_diff <= FLOAT_REL for o in r.outputs), r.outputs

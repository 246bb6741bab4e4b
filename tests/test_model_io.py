"""Any model on a device, without qemu: random inputs, inputs by tensor name from an .npz,
the per-output comparison, the not-loadable verdict, and ``device run --inputs`` errors."""

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.devices.model_io import (as_arrays, compare_all, compare_output, input_specs, load_named_inputs,
                                       not_loadable, random_inputs, validate_named_inputs)
from pipeline.errors import ConfigError, DataError


def _model(inputs, outputs=(("out", "float32", (1, 3), 0.0, 0),)):
    """A parsed model whose inputs/outputs are (name, dtype, shape, scale, zero_point)."""
    from pipeline.tflite.reader import Quantization, Tensor, TFLiteModel

    specs = list(inputs) + list(outputs)
    tensors = [Tensor(i, name, shape, dt, 0, Quantization((scale,), (zp,)) if scale else Quantization())
               for i, (name, dt, shape, scale, zp) in enumerate(specs)]
    return TFLiteModel(size=1, opcodes=[], tensors=tensors, operators=[], inputs=tuple(range(len(inputs))),
                       outputs=tuple(range(len(inputs), len(specs))), buffers=[b""])


MULTI = _model([("image", "float32", (1, 4, 4, 3), 0.0, 0), ("q", "int8", (1, 5), 0.5, -3),
                ("ids", "int32", (1, 2), 0.0, 0), ("mask", "bool", (1, 2), 0.0, 0)])


def test_random_inputs_one_array_per_input_within_range():
    xs = random_inputs(MULTI, 3)
    assert [a.shape for a in xs] == [(3, 4, 4, 3), (3, 5), (3, 2), (3, 2)]
    assert [a.dtype for a in xs] == [np.float32, np.float32, np.int32, np.bool_]
    assert all(0 <= a.min() and a.max() < 1 for a in xs[:2])  # the quantized one: floats in range
    assert set(np.unique(xs[2])) <= {0, 1}
    again = random_inputs(MULTI, 3)
    assert all(np.array_equal(a, b) for a, b in zip(xs, again))  # seed 0
    low = random_inputs(MULTI, 2, -2.0, -1.0)
    assert -2 <= low[0].min() and low[0].max() < -1


def test_random_inputs_of_one_input_are_the_classifier_draw():
    """A one-input model gets what ``device run --random`` always drew: default_rng(0).random."""
    model = _model([("x", "float32", (1, 8, 8, 1), 0.0, 0)])
    (x,) = random_inputs(model, 2)
    assert np.array_equal(x, np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32))


@pytest.mark.parametrize("n, low, high, message", [
    (0, 0.0, 1.0, "need at least one sample, got 0"),
    (1, 1.0, 1.0, "the range [1.0, 1.0) is empty"),
])
def test_random_inputs_reject(n, low, high, message):
    with pytest.raises(ConfigError) as e:
        random_inputs(MULTI, n, low, high)
    assert message in str(e.value)


def _arrays(**over):
    arrays = {"image": np.zeros((2, 4, 4, 3), np.float32), "q": np.zeros((2, 5), np.int8),
              "ids": np.zeros((2, 2), np.int32), "mask": np.zeros((2, 2), bool)}
    arrays.update(over)
    return arrays


def test_named_inputs_from_npz_in_model_order(tmp_path):
    path = tmp_path / "in.npz"
    arrays = _arrays(q=np.ones((2, 5), np.float64))  # floats for a quantized input are fine
    np.savez(path, **{k: arrays[k] for k in ("mask", "ids", "q", "image")})
    xs = load_named_inputs(path, MULTI, samples=1)
    assert [a.shape[0] for a in xs] == [1, 1, 1, 1]
    assert [a.dtype for a in xs] == [np.float32, np.float64, np.int32, np.bool_]


@pytest.mark.parametrize("arrays, message", [
    ({k: v for k, v in _arrays().items() if k != "ids"}, "no array for input tensor 'ids'; found"),
    (dict(_arrays(), extra=np.zeros(2)), "array 'extra' names no input tensor of the model"),
    (_arrays(image=np.zeros((2, 4, 4, 1), np.float32)),
     "input 'image' has shape [2, 4, 4, 1]; the model expects [N, 4, 4, 3] with N >= 1"),
    (_arrays(ids=np.zeros((2, 2), np.float32)), "input 'ids' has dtype float32; the model expects int32"),
    (_arrays(q=np.zeros((2, 5), np.uint8)),
     "input 'q' has dtype uint8; the model expects int8 (or floats: it is quantized)"),
    (_arrays(image=np.zeros((2, 4, 4, 3), np.int8)), "input 'image' has dtype int8; the model expects float"),
    (_arrays(ids=np.zeros((3, 2), np.int32)), "inputs have different numbers of samples (image 2, q 2, ids 3"),
    (_arrays(image=np.zeros((0, 4, 4, 3), np.float32)), "input 'image' has shape [0, 4, 4, 3]"),
])
def test_named_inputs_errors_name_the_file_and_the_tensor(tmp_path, arrays, message):
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as e:
        load_named_inputs(path, MULTI)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def test_named_inputs_unreadable(tmp_path):
    path = tmp_path / "in.npz"
    path.write_bytes(b"not an archive")
    with pytest.raises(DataError, match=r"in.npz: cannot read as .npz"):
        load_named_inputs(path, MULTI)


def test_validate_named_inputs_counts_arrays():
    with pytest.raises(DataError, match="m.tflite: 1 input arrays for 4 model inputs"):
        validate_named_inputs(MULTI, [np.zeros((1, 4, 4, 3), np.float32)], "m.tflite")
    assert validate_named_inputs(MULTI, list(_arrays().values()), "m.tflite") == 2
    assert [s.name for s in input_specs(MULTI)] == ["image", "q", "ids", "mask"]
    assert input_specs(MULTI)[1].describe() == "int8 [1, 5] scale 0.5 zero_point -3"


def test_compare_output_float_and_integer():
    host = np.array([[1.0, -4.0], [0.5, 2.0]], np.float32)
    dev = np.array([[1.0, -4.0], [0.5, 2.001]], np.float32)
    a = compare_output("boxes", dev, host)
    assert (a.name, a.dtype, a.shape, a.samples, a.exact_count, a.exact_fraction) == (
        "boxes", "float32", (1, 2), 2, 1, 0.5)
    assert a.max_abs_diff == pytest.approx(0.001, rel=1e-3)
    assert a.max_rel_diff == pytest.approx(0.001 / 4, rel=1e-3)  # relative to the largest |host|
    q = compare_output("scores", np.array([[3, 5]], np.int8), np.array([[3, 7]], np.int8))
    assert (q.exact_count, q.max_abs_diff, q.max_rel_diff) == (0, 2.0, 2 / 7)
    same = compare_output("z", np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32))
    assert (same.exact_fraction, same.max_abs_diff, same.max_rel_diff) == (1.0, 0.0, 0.0)
    off = compare_output("z", np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32))
    assert off.max_rel_diff == float("inf")


def test_compare_all_checks_counts_and_shapes():
    a = np.zeros((2, 3), np.float32)
    assert len(compare_all(["a", "b"], [a, a], [a, a])) == 2
    with pytest.raises(ConfigError, match="1 host outputs for 2 device outputs"):
        compare_all(["a", "b"], [a, a], [a])
    with pytest.raises(ConfigError, match=r"output 'b': host outputs have shape \[2, 4\], device outputs \[2, 3\]"):
        compare_all(["a", "b"], [a, a], [a, np.zeros((2, 4), np.float32)])
    assert len(as_arrays(a)) == 1 and len(as_arrays([a, a])) == 2


def test_verdict_text():
    assert (not_loadable("litert", "2.3.0", "custom op Landmarks2TransformMatrix")
            == "not loadable on litert 2.3.0: custom op Landmarks2TransformMatrix")


def test_verdict_of_a_guest_load_error():
    from pipeline.devices.check import what_it_lacks
    from pipeline.devices.guest_result import parse_load_error

    custom = parse_load_error("Encountered unresolved custom op: Convolution2DTransposeBias.\nSee instructions")
    assert custom.op == "Convolution2DTransposeBias" and what_it_lacks(custom) == "custom op Convolution2DTransposeBias"
    versioned = parse_load_error("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'")
    assert what_it_lacks(versioned) == "op FULLY_CONNECTED version 12"


def test_device_run_inputs_npz_errors_exit_2(tmp_path):
    """Bad --inputs: one line naming the file and the tensor, exit 2, before any runtime."""
    from pathlib import Path

    from pipeline.cli import main

    seed = Path(__file__).parent / "fuzz_regressions" / "seed_float32.tflite"
    path = tmp_path / "in.npz"
    np.savez(path, wrong=np.zeros((1, 8, 8, 1), np.float32))
    res = CliRunner().invoke(main, ["device", "run", "--device", "pixel4", str(seed), "--inputs", str(path)])
    assert res.exit_code == 2
    assert res.output.startswith(f"error: {path}: no array for input tensor ") and "Traceback" not in res.output


def test_tflite_detection_postprocess_is_not_a_missing_op(tmp_path):
    """TFLite registers TFLite_Detection_PostProcess itself: no runtime lacks it, and the
    host reference runs its two inputs to four outputs."""
    from pipeline.devices.check import lacks_custom_op, reference_outputs
    from pipeline.devices.profiles import get_device
    from pipeline.tflite.reader import read_tflite
    from tests.helpers.detection import detection_model

    path = detection_model(tmp_path / "det.tflite")
    model = read_tflite(path)
    assert not any(lacks_custom_op(model, get_device(d)) for d in ("pixel4", "camera-a53"))
    boxes, classes, scores, count = reference_outputs(path, random_inputs(model, 2), get_device("pixel4"))
    assert boxes.shape == (2, 3, 4) and classes.shape == scores.shape == (2, 3) and list(count) == [3, 3]

"""Parsers of what a device run leaves: instruction counts, load errors, the guest's result."""

import json

import pytest

from pipeline.devices.guest_result import TensorInfo, parse_guest_result, parse_load_error
from pipeline.devices.insn_counts import CLASSES, ClassCounts, inference_counts, parse_insn_counts
from pipeline.errors import DeviceOutputError, DeviceUnavailableError

HEADER = "insn_count 2 classes=simd_mac,simd_other,ldst,branch,scalar"


def region(i, c):
    return (f"region index={i} total={sum(c)} simd_mac={c[0]} simd_other={c[1]} ldst={c[2]} "
            f"branch={c[3]} scalar={c[4]}")


def counts_file(regions, total=999):
    lines = [HEADER] + [region(i, c) for i, c in enumerate(regions)]
    return "\n".join(lines + [f"end regions={len(regions)} total={total} profiled=0 blocks=0"]) + "\n"



# -- parse_insn_counts ----------------------------------------------------------

def test_parse_insn_counts_reads_regions_and_total():
    counts = parse_insn_counts(counts_file([(0, 40, 2377, 1489, 3286), (9, 8, 7, 6, 5)], 123))
    assert counts.process_total == 123
    assert counts.regions[0] == ClassCounts(0, 40, 2377, 1489, 3286)
    assert counts.regions[1].total == 35
    assert counts.regions[1].to_dict() == dict(zip(CLASSES, (9, 8, 7, 6, 5)))


@pytest.mark.parametrize("text, message", [
    ("", "expected header 'insn_count 2 classes=simd_mac,simd_other,ldst,branch,scalar', "
         "got an empty file"),
    ("insn_count 1 classes=simd_mac,simd_other,ldst,branch,scalar\nend regions=0 total=1\n",
     "a version 1 file (no block profile) from an older plugin; expected 'insn_count 2 classes="
     "simd_mac,simd_other,ldst,branch,scalar': rebuild the ARM runtime and run again"),
    ("insn_count 2 classes=a\nend regions=0 total=1 profiled=0 blocks=0\n",
     "got 'insn_count 2 classes=a'"),
    (HEADER + "\n", "no end line after 0 regions (the guest crashed or was killed)"),
    (HEADER + "\n" + region(0, (1, 1, 1, 1, 1)) + "\n",
     "no end line after 1 regions (the guest crashed or was killed)"),
    (HEADER + "\n" + region(1, (1, 1, 1, 1, 1)) + "\nend regions=1 total=5\n",
     "line 2: region index 1, expected 0"),
    (HEADER + "\nregion index=0 total=6 simd_mac=1 simd_other=1 ldst=1 branch=1 scalar=1\n"
     "end regions=1 total=5\n", "line 2: total 6 != sum of classes 5"),
    (HEADER + "\nregion index=0 total=5 simd_mac=1 simd_other=1 ldst=1 branch=1\n"
     "end regions=1 total=5\n", "line 2: unrecognised"),
    (HEADER + "\nregion index=0 total=-5 simd_mac=1 simd_other=1 ldst=1 branch=1 scalar=-9\n",
     "line 2: unrecognised"),
    (HEADER + "\nerror region 0 begun twice\nend regions=0 total=5\n",
     "plugin reported: region 0 begun twice"),
    (HEADER + "\nend regions=2 total=5 profiled=0 blocks=0\n", "end line says 2 regions, file has 0"),
    (HEADER + "\nend regions=0 total=5\n", "line 2: unrecognised: 'end regions=0 total=5'"),
    (HEADER + "\nend regions=0 total=5 profiled=0 blocks=0\nregion index=0 total=0 simd_mac=0 simd_other=0 "
     "ldst=0 branch=0 scalar=0\n", "line 3: text after the end line"),
    (HEADER + "\ngarbage\n", "line 2: unrecognised: 'garbage'"),
])
def test_parse_insn_counts_rejects_malformed(text, message):
    with pytest.raises(DeviceOutputError, match="instruction counts") as e:
        parse_insn_counts(text)
    assert message in str(e.value)


def test_parse_insn_counts_checks_expected_regions():
    with pytest.raises(DeviceOutputError, match="1 regions, expected 3"):
        parse_insn_counts(counts_file([(1, 1, 1, 1, 1)]), expect_regions=3)


def test_malformed_output_is_a_device_error():
    # Maps to the CLI's "device unavailable" exit code.
    assert issubclass(DeviceOutputError, DeviceUnavailableError)


# -- inference_counts -----------------------------------------------------------

def test_inference_counts_subtracts_marker_overhead():
    text = counts_file([(0, 1, 10, 5, 20), (100, 9, 40, 15, 60), (50, 5, 30, 10, 40),
                        (52, 5, 31, 10, 40), (50, 5, 30, 10, 41)])
    c = inference_counts(parse_insn_counts(text), samples=3)
    assert c.marker_overhead.total == 36
    assert c.warmup == ClassCounts(100, 8, 30, 10, 40)
    assert c.totals == (99, 102, 100)
    assert c.median == ClassCounts(50, 4, 20, 5, 21)  # the median inference's own classes


def test_inference_counts_median_is_an_observed_inference():
    text = counts_file([(0, 0, 0, 0, 0)] * 2 + [(4, 0, 0, 0, 0), (2, 0, 0, 0, 0)])
    assert inference_counts(parse_insn_counts(text), samples=2).median.total == 2


def test_inference_counts_rejects_wrong_region_count():
    with pytest.raises(DeviceOutputError, match="3 regions for 2 inputs, expected 4"):
        inference_counts(parse_insn_counts(counts_file([(1, 1, 1, 1, 1)] * 3)), samples=2)


def test_inference_counts_rejects_region_below_overhead():
    text = counts_file([(0, 0, 10, 0, 0), (0, 0, 20, 0, 0), (5, 0, 9, 0, 0)])
    with pytest.raises(DeviceOutputError, match="below the marker overhead in ldst"):
        inference_counts(parse_insn_counts(text), samples=1)


# -- parse_load_error -----------------------------------------------------------

def test_parse_load_error_names_op_and_version():
    msg = ("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'. An older version "
           "of this builtin might be supported. Are you using an old TFLite binary with a newer "
           "model?\nRegistration failed.\n")
    err = parse_load_error(msg)
    assert (err.op, err.version) == ("FULLY_CONNECTED", 12)
    assert err.message == msg.strip()


@pytest.mark.parametrize("msg, op", [
    ("Encountered unresolved custom op: MyOp.\nNode number 3 (MyOp) failed to prepare.", "MyOp"),
    ("Op builtin_code out of range: 150. Are you using old TFLite binary with newer model?",
     "builtin_code 150"),
    ("Could not open 'x.tflite'.", None),
])
def test_parse_load_error_other_messages(msg, op):
    err = parse_load_error(msg)
    assert err.op == op and err.version is None and err.message == msg


def test_parse_load_error_rejects_empty():
    with pytest.raises(DeviceOutputError, match="load error: empty message"):
        parse_load_error("  \n")


# -- parse_guest_result ---------------------------------------------------------

def guest_json(**over):
    obj = {
        "format": "mm-guest-result 1", "runtime": "litert", "runtime_version": "2.3.0",
        "numpy_version": "2.2.6", "threads": 1, "loaded": True, "load_error": None,
        "input": {"name": "in", "shape": [1, 4, 4, 3], "dtype": "int8", "scale": 0.0039,
                  "zero_point": -128},
        "output": {"name": "out", "shape": [1, 10], "dtype": "int8", "scale": 0.1,
                   "zero_point": 3},
        "tensors": [{"index": 0, "name": "in", "shape": [1, 4, 4, 3], "dtype": "int8",
                     "nbytes": 48}],
        "samples": 2, "wall_s": [0.5, 0.25],
        "regions": {"marker_overhead": 0, "warmup": 1, "first_inference": 2},
    }
    obj.update(over)
    return json.dumps(obj)


def test_parse_guest_result_loaded():
    g = parse_guest_result(guest_json())
    assert g.loaded and g.load_error is None and g.samples == 2
    assert g.input.shape == (1, 4, 4, 3) and g.input.zero_point == -128
    assert g.tensors == (TensorInfo(0, "in", (1, 4, 4, 3), "int8", 48),)
    assert g.wall_s == (0.5, 0.25)


def test_parse_guest_result_not_loaded():
    text = json.dumps({"format": "mm-guest-result 1", "runtime": "tflite-runtime",
                       "runtime_version": "2.14.0", "numpy_version": "1.26.4", "threads": 1,
                       "loaded": False,
                       "load_error": "Didn't find op for builtin opcode 'CONV_2D' version '9'"})
    g = parse_guest_result(text)
    assert not g.loaded and (g.load_error.op, g.load_error.version) == ("CONV_2D", 9)
    assert g.input is None and g.samples == 0


@pytest.mark.parametrize("text, message", [
    ("{", "guest result: not JSON"),
    ("[]", "guest result: expected a JSON object"),
    (guest_json(format="mm-guest-result 3"), "format 'mm-guest-result 3', expected"),
    (guest_json(loaded="yes"), "'loaded' is 'yes', expected bool"),
    (guest_json(threads=True), "'threads' is True, expected int"),
    (guest_json(extra=1), "unexpected keys ['extra']"),
    (guest_json(samples=3), "wall_s must hold 3 non-negative numbers"),
    (guest_json(samples=0, wall_s=[]), "samples is 0, expected at least 1"),
    (guest_json(wall_s=[0.5, -1]), "wall_s must hold 2 non-negative numbers"),
    (guest_json(load_error="boom"), "loaded, yet load_error is 'boom'"),
    (guest_json(regions={"warmup": 0}), "regions {'warmup': 0}, expected"),
    (guest_json(input={"name": "in", "shape": [1, "4"], "dtype": "int8", "scale": 1.0,
                       "zero_point": 0}), "input: shape [1, '4'] is not a list of ints"),
    (guest_json(tensors=[{"index": 0, "name": "t", "shape": [1], "dtype": "int8"}]),
     "tensor 0: missing key 'nbytes'"),
    (json.dumps({"format": "mm-guest-result 1", "runtime": "litert", "runtime_version": "2.3.0",
                 "numpy_version": "2", "threads": 1, "loaded": False}),
     "missing key 'load_error'"),
])
def test_parse_guest_result_rejects_malformed(text, message):
    with pytest.raises(DeviceOutputError) as e:
        parse_guest_result(text)
    assert message in str(e.value)

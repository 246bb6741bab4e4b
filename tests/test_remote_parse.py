"""The pure parts of real-device measurement: targets, core lists, ssh's failure messages,
the guest's timing object, the store of measured points and a file's number format."""

import json
from pathlib import Path

import pytest

from pipeline.devices.guest_result import DeviceFacts, Timing, parse_guest_result
from pipeline.devices.remote import store
from pipeline.devices.remote.measurement import Measurement
from pipeline.devices.remote.ssh import connection_error
from pipeline.devices.remote.target import AdbTarget, SshTarget, parse_cores, parse_target
from pipeline.errors import ConfigError, DataError, DeviceOutputError


@pytest.mark.parametrize("text, target", [
    ("ssh://pi@camera.local:2222", SshTarget("camera.local", 2222, "pi")),
    ("ssh://10.0.0.7", SshTarget("10.0.0.7", 22, None)),
    ("ssh://root@[fe80::1]:22", SshTarget("fe80::1", 22, "root")),
    ("adb://emulator-5554", AdbTarget("emulator-5554")),
    ("adb://192.168.1.4:5555", AdbTarget("192.168.1.4:5555")),
])
def test_targets(text, target):
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["camera.local", "ssh://", "ssh://a@b:0", "ssh://a b", "http://x", "adb://"])
def test_bad_targets_name_the_forms(text):
    with pytest.raises(ConfigError, match=r"ssh://\[USER@\]HOST\[:PORT\] or adb://SERIAL|outside 1-65535"):
        parse_target(text)


def test_core_lists():
    assert parse_cores("0-3") == (0, 1, 2, 3)
    assert parse_cores("4,6") == (4, 6)
    assert parse_cores("0-1,4") == (0, 1, 4)
    for bad in ("", "3-1", "a", "0-"):
        with pytest.raises(ConfigError, match="CPU list"):
            parse_cores(bad)


TARGET = SshTarget("127.0.0.1", 2222, "pi")


@pytest.mark.parametrize("stderr, words", [
    ("ssh: connect to host 127.0.0.1 port 2222: Connection refused\r\n", ["connection refused", "2222"]),
    ("pi@127.0.0.1: Permission denied (publickey).\r\n", ["authentication failed for pi@127.0.0.1", "key.pem"]),
    ("@@@@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n...\r\n"
     "Host key verification failed.\r\n", ["has changed", "ssh-keygen -R '[127.0.0.1]:2222'"]),
    ("ssh: Could not resolve hostname nowhere: Name or service not known\r\n", ["unknown host name"]),
    ("ssh: connect to host 10.1.1.1 port 22: Connection timed out\r\n", ["no answer"]),
    ("Connection to 127.0.0.1 closed by remote host.\r\n", ["lost during the run", "closed by remote host"]),
])
def test_ssh_failures_are_one_sentence(stderr, words):
    message = connection_error(stderr, TARGET, Path("key.pem"), "the run")
    assert "\n" not in message
    for w in words:
        assert w in message


PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 1
CPU part\t: 0xd08

Revision\t: c03114
Serial\t\t: 10000000a1b2c3d4
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_board_and_cpu_from_what_a_board_says():
    from pipeline.devices.guest_runner import board_and_cpu

    assert board_and_cpu(PI4_CPUINFO, None) == ("Raspberry Pi 4 Model B Rev 1.4", "implementer 0x41 part 0xd08")
    assert board_and_cpu(PI4_CPUINFO, "Raspberry Pi 4 Model B Rev 1.5")[0] == "Raspberry Pi 4 Model B Rev 1.5"
    assert board_and_cpu("model name\t: AMD EPYC\n", None) == (None, "AMD EPYC")
    assert board_and_cpu(None, None) == (None, None)


RESULT = {"format": "mm-guest-result 2", "runtime": "litert", "runtime_version": "2.3.0",
          "numpy_version": "2.2.6", "threads": 1, "loaded": True, "load_error": None,
          "device": {"model": "Raspberry Pi 4 Model B Rev 1.4", "cpu": None, "machine": "aarch64",
                     "kernel": "6.1.0-rpi7", "governor": "ondemand", "cpus": 4},
          "timing": {"init_s": 0.002, "first_inference_s": 0.01, "warmup_runs": 2, "warmup_mean_s": 0.005,
                     "runs": 3, "mean_s": 0.004, "std_s": 0.0001, "min_s": 0.0039, "max_s": 0.0042,
                     "peak_rss_kib": 40000, "cpus_allowed": [0, 1]},
          "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32", "scale": 0.0, "zero_point": 0}],
          "outputs": [{"name": "y", "shape": [1, 4], "dtype": "float32", "scale": 0.0, "zero_point": 0}],
          "tensors": [], "samples": 1, "wall_s": [0.004],
          "regions": {"marker_overhead": 0, "warmup": 1, "first_inference": 2}}


def test_guest_timing_and_device_facts():
    r = parse_guest_result(json.dumps(RESULT))
    assert r.timing.runs == 3 and r.timing.cpus_allowed == (0, 1) and r.device.governor == "ondemand"
    plain = {k: v for k, v in RESULT.items() if k not in ("timing", "device")}
    assert parse_guest_result(json.dumps(plain)).timing is None  # what the emulator writes


@pytest.mark.parametrize("change, message", [
    ({"runs": 0}, "runs 0"),
    ({"mean_s": -1.0}, "mean_s is negative"),
    ({"extra": 1}, "unexpected keys"),
    ({"peak_rss_kib": "40 MB"}, "peak_rss_kib"),
])
def test_malformed_timing_raises(change, message):
    bad = dict(RESULT, timing=dict(RESULT["timing"], **change))
    with pytest.raises(DeviceOutputError, match=message):
        parse_guest_result(json.dumps(bad))


def measurement(**kw) -> Measurement:
    timing = Timing(init_s=0.002, first_inference_s=0.01, warmup_runs=2, warmup_mean_s=0.005, runs=3,
                    mean_s=0.004, std_s=0.0001, min_s=0.0039, max_s=0.0042, peak_rss_kib=40960, cpus_allowed=None)
    facts = DeviceFacts(model="Raspberry Pi 4", cpu=None, machine="aarch64", kernel="6.1", governor=None, cpus=4)
    return Measurement(**{**dict(
        target="ssh://pi@rpi:22", model="/m/add.tflite", model_sha256="ab" * 32, number_format="int8",
        runtime="litert", runtime_version="2.3.0", loaded=True, verdict="loads", timing=timing, device=facts,
        settings={"threads": 4, "runs": 3, "warmup": 2, "cores": (0, 1, 2, 3), "remote_python": "python3",
                  "runtime": "litert 2.3.0"}, measured_at="2026-01-01T00:00:00+00:00"), **kw})


def test_store_appends_rows_and_keeps_a_copy_of_the_model(tmp_path):
    path = tmp_path / "store" / "measured.csv"
    model = tmp_path / "add.tflite"
    model.write_bytes(b"model bytes")
    store.append(measurement(model=str(model)), path)
    store.append(measurement(model=str(model), number_format="float32"), path)
    rows = store.read_rows(path)
    assert [r["number_format"] for r in rows] == ["int8", "float32"]
    assert rows[0]["mean_ms"] == "4.0000" and rows[0]["cores"] == "0,1,2,3" and rows[0]["peak_rss_mib"] == "40.00"
    assert rows[0]["device_model"] == "Raspberry Pi 4" and rows[0]["threads"] == "4"
    assert store.model_copy("ab" * 32, path).read_bytes() == b"model bytes"
    assert not [p for p in path.parent.rglob(".*")]  # no temporary file left


def test_a_foreign_store_is_refused(tmp_path):
    path = tmp_path / "measured.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="columns"):
        store.append(measurement(), path)
    assert path.read_text() == "a,b\n1,2\n"

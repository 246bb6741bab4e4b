"""Tests of pipeline.devices: parsers, profiles, runtime key, plugin decoder, CLI.

Unit tests run anywhere. Tests marked ``device`` build the ARM runtime (root and
Debian's packages needed, a few minutes once, cached) and run tiny TFLite models
under qemu-aarch64 on pixel4, rpi4 and camera-a53 (about a minute when cached).
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.devices import runtime as rt
from pipeline.devices.check import DeviceResult, compare_outputs, estimate_memory
from pipeline.devices.parse import (CLASSES, ClassCounts, TensorInfo, inference_counts, parse_guest_result,
                                    parse_insn_counts, parse_load_error)
from pipeline.devices.profiles import (DEVICES, FIELDS, DeviceProfile, get_device, load_profile,
                                       load_profiles)
from pipeline.devices.targets import CORES, RUNTIMES, cpuinfo_text
from pipeline.errors import ConfigError, DeviceOutputError, DeviceUnavailableError, RuntimeIncompatibleError

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
    ("Encountered unresolved custom op: MyOp.\nNode number 3 (MyOp) failed to prepare.", "MyOp."),
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
    (guest_json(format="mm-guest-result 2"), "format 'mm-guest-result 2', expected"),
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


# -- profiles -------------------------------------------------------------------

# From shared/reference/devices.md: every registered device must be listed here.
EXPECTED = {
    "pixel1": ("cortex-a72", "0xd08", "litert"),
    "pixel2": ("cortex-a72", "0xd08", "litert"),
    "pixel3": ("cortex-a76", "0xd0b", "litert"),
    "pixel3a": ("cortex-a76", "0xd0b", "litert"),
    "pixel4": ("cortex-a76", "0xd0b", "litert"),
    "rpi4": ("cortex-a72", "0xd08", "litert"),
    "camera-a53": ("cortex-a53", "0xd03", "tflite-runtime"),
    "graviton2": ("neoverse-n1", "0xd0c", "litert"),
}


@pytest.mark.parametrize("name", DEVICES.names())
def test_every_registered_device_is_expected(name):
    assert name in EXPECTED, f"device {name!r} has no entry in this test's EXPECTED table"
    p = get_device(name)
    assert (p.qemu_cpu, p.cpu_part, p.runtime) == EXPECTED[name]
    assert p.runtime_version == RUNTIMES[p.runtime].version
    assert p.default_threads == 1  # counts repeat exactly only single-threaded


def test_every_expected_device_is_registered():
    assert sorted(DEVICES.names()) == sorted(EXPECTED)


def test_camera_has_512mb_and_legacy_runtime():
    cam = get_device("camera-a53")
    assert (cam.ram_mb, cam.runtime, cam.runtime_version) == (512, "tflite-runtime", "2.14.0")


def test_get_device_unknown_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        get_device("pixel9")
    assert str(e.value) == ("unknown device 'pixel9'; valid: camera-a53, graviton2, pixel1, "
                            "pixel2, pixel3, pixel3a, pixel4, rpi4")


def test_profile_round_trips_pickles_and_is_frozen():
    import dataclasses
    import pickle

    p = get_device("rpi4")
    assert DeviceProfile.from_dict(p.to_dict()) == p
    assert dataclasses.asdict(p) == dict(p.to_dict(), sources=p.sources)  # a list in plain form
    assert pickle.loads(pickle.dumps(p)) == p
    json.dumps(p.to_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.cores = 8


def base_profile(**over):
    d = get_device("pixel4").to_dict()
    d.update(over)
    return d


VALID_KEYS = ("name, description, qemu_cpu, cpu_part, cores, clock_ghz, ram_mb, runtime, "
              "runtime_version, default_threads, core, sched_model, sched_model_reason, clock_1t_ghz, "
              "cache_kb, dram_gbps, sources")


@pytest.mark.parametrize("data, message", [
    (base_profile(coress=4), f"unknown key 'coress'; valid keys: {VALID_KEYS}"),
    ({k: v for k, v in base_profile().items() if k != "ram_mb"},
     f"missing key 'ram_mb'; valid keys: {VALID_KEYS}"),
    (base_profile(qemu_cpu="max"), "qemu_cpu 'max' enables SME: XNNPACK then picks SME kernels "
                                   "and int8 results come out wrong; use 'max,sme=off'"),
    (base_profile(qemu_cpu="max,sve=off"), "qemu_cpu 'max,sve=off' enables SME"),
    (base_profile(qemu_cpu="cortex-a57"), "qemu_cpu 'cortex-a57' has no emulated /proc/cpuinfo; "
                                          "valid: cortex-a53, cortex-a72, cortex-a76, neoverse-n1"),
    (base_profile(cpu_part="0xd03"), "cpu_part 0xd03 does not match qemu_cpu cortex-a76 (0xd0b)"),
    (base_profile(cpu_part="a76"), "cpu_part must be a hex CPU part like \"0xd0b\", got 'a76'"),
    (base_profile(runtime="tflite"), "runtime 'tflite' is unknown; valid: litert, tflite-runtime"),
    (base_profile(runtime_version="2.4.0"),
     "runtime_version '2.4.0': the ARM runtime installs litert 2.3.0 only"),
    (base_profile(cores=0), "cores must be an integer >= 1, got 0"),
    (base_profile(default_threads=True), "default_threads must be an integer >= 1, got True"),
    (base_profile(sched_model="cortex-a78"), "sched_model 'cortex-a78' is not an LLVM 19 AArch64 -mcpu"),
    (base_profile(sources=[]), "sources must be a non-empty list of citations, got []"),
    (base_profile(dram_gbps=0), "dram_gbps must be a number in (0, 10000), got 0"),
    (base_profile(clock_1t_ghz="fast"), "clock_1t_ghz must be a number in (0, 10), got 'fast'"),
    (base_profile(clock_ghz="fast"), "clock_ghz must be a number in (0, 10), got 'fast'"),
    # Fitted latency parameters are their own data (pipeline.latency.params), not a profile key.
    (base_profile(latency={"cost_ldst": 1.0}), f"unknown key 'latency'; valid keys: {VALID_KEYS}"),
    (base_profile(description=""), "description must be a non-empty string, got ''"),
    ([1, 2], "expected a mapping of name, description"),
])
def test_profile_validation_messages(data, message):
    with pytest.raises(ConfigError) as e:
        DeviceProfile.from_dict(data, source="device profile x.yaml")
    assert str(e.value).startswith("device profile x.yaml: ")
    assert message in str(e.value)


def test_profile_accepts_unquoted_hex_part(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "pipeline" / "devices" / "profiles"
            / "pixel4.yaml").read_text()
    text = text.replace('cpu_part: "0xd0b"', "cpu_part: 0xd0b")
    (tmp_path / "pixel4.yaml").write_text(text)
    p = load_profile(tmp_path / "pixel4.yaml")
    assert p.cpu_part == "0xd0b"


def test_profile_name_must_match_file(tmp_path):
    path = tmp_path / "phone.yaml"
    path.write_text(json.dumps(base_profile()))  # JSON is YAML
    with pytest.raises(ConfigError, match="device profile phone.yaml: name 'pixel4' must equal "
                                          "the file name 'phone'"):
        load_profile(path)


def test_profile_bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="device profile bad.yaml: cannot read"):
        load_profiles(tmp_path)


def test_load_profiles_from_directory(tmp_path):
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.yaml").write_text(json.dumps(base_profile(name=stem)))
    assert load_profiles(tmp_path).names() == ["a", "b"]


def test_profile_fields_are_the_documented_ones():
    assert FIELDS == tuple(VALID_KEYS.split(", "))


# -- targets: cpuinfo -----------------------------------------------------------

@pytest.mark.parametrize("name", list(CORES))
def test_cpuinfo_matches_core(name):
    core = CORES[name]
    text = cpuinfo_text(core)
    assert text.count("processor\t:") == 4
    assert f"CPU part\t: 0x{core.cpu_part:03x}\n" in text
    assert "CPU implementer\t: 0x41" in text
    assert ("asimddp" in text) == (name in ("cortex-a76", "neoverse-n1")) == core.dotprod


# -- runtime: key, cache dir, host tools, command -------------------------------

def test_runtime_key_is_stable_and_tracks_plugin_source(tmp_path, monkeypatch):
    key = rt.runtime_key()
    assert key == rt.runtime_key() and len(key) == 16
    for name in rt.PLUGIN_SOURCES:
        shutil.copy(rt.PLUGIN_DIR / name, tmp_path / name)
    monkeypatch.setattr(rt, "PLUGIN_DIR", tmp_path)
    assert rt.runtime_key() == key
    with open(tmp_path / "insn_count.c", "a") as f:
        f.write("/* changed */\n")
    assert rt.runtime_key() != key


def test_runtime_key_tracks_cpuinfo(monkeypatch):
    key = rt.runtime_key()
    monkeypatch.setattr(rt, "GUEST_CPUS", 8)
    assert rt.runtime_key() != key


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path))
    assert rt.cache_dir() == tmp_path.resolve() / "arm-runtime"
    monkeypatch.delenv("MOBILE_MODEL_CACHE")
    assert rt.cache_dir() == Path.home().resolve() / ".cache" / "mobile-model" / "arm-runtime"


def test_missing_tools_without_root_say_what_to_install(monkeypatch):
    monkeypatch.setattr(rt.shutil, "which", lambda tool: None)
    monkeypatch.setattr(rt.os, "geteuid", lambda: 1000)
    with pytest.raises(DeviceUnavailableError) as e:
        rt.ensure_host_tools(rt.RUN_TOOLS)
    assert str(e.value) == ("emulated ARM devices need Debian packages qemu-user; install them "
                            "with: sudo apt-get install -y --no-install-recommends qemu-user")


def test_build_without_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(rt, "ensure_host_tools", lambda *a, **k: None)
    monkeypatch.setattr(rt.os, "geteuid", lambda: 1000)
    with pytest.raises(DeviceUnavailableError, match="building the ARM runtime needs root"):
        rt.ensure_runtime(progress=None)
    assert not (tmp_path / "arm-runtime").exists()


def test_qemu_command_and_env(tmp_path):
    arm = rt.ArmRuntime(root=tmp_path, key="k", qemu="/usr/bin/qemu-aarch64")
    cmd = arm.command("cortex-a53", ["script.py", "--x"], counts_path=tmp_path / "c.txt")
    sysroot = tmp_path / "sysroots" / "cortex-a53"
    assert cmd == ["/usr/bin/qemu-aarch64", "-seed", "1", "-cpu", "cortex-a53", "-L", str(sysroot),
                   "-plugin", f"{tmp_path}/plugin/insn_count.so,out={tmp_path}/c.txt",
                   f"{sysroot}/usr/bin/python3", "script.py", "--x"]
    assert "-plugin" not in arm.command("cortex-a53", ["s.py"], plugin_args=["profile_from=2"])
    cmd = arm.command("cortex-a53", ["s.py"], counts_path=tmp_path / "c.txt",
                      plugin_args=["profile_from=2"])
    assert cmd[cmd.index("-plugin") + 1] == f"{tmp_path}/plugin/insn_count.so,out={tmp_path}/c.txt,profile_from=2"
    env = arm.env("tflite-runtime")
    assert env["PYTHONHASHSEED"] == "0" and env["PYTHONPATH"] == "/opt/mm/tflite-runtime"
    with pytest.raises(DeviceUnavailableError, match="no sysroot for qemu cpu 'max'"):
        arm.command("max", [])


def test_runtime_cli_info(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path))
    assert rt.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"key": rt.runtime_key(), "path": str(tmp_path / "arm-runtime" / info["key"]),
                    "built": False}


# -- plugin: A64 decoder (compiled with gcc against the plugin's own header) ----

# Encodings produced by GNU as (aarch64-linux-gnu-as -march=armv8.3-a+dotprod+fp16).
A64_CASES = {
    "simd_mac": {
        "4e829420": "sdot v0.4s, v1.16b, v2.16b", "6fa2e020": "udot v0.4s, v1.16b, v2.4b[1]",
        "4fa5e883": "sdot v3.4s, v4.16b, v5.4b[3]", "0e228020": "smlal v0.8h, v1.8b, v2.8b",
        "4e628020": "smlal2 v0.4s, v1.8h, v2.8h", "2e228020": "umlal v0.8h, v1.8b, v2.8b",
        "0e22c020": "smull v0.8h, v1.8b, v2.8b", "4e22cc20": "fmla v0.4s, v1.4s, v2.4s",
        "4fa21020": "fmla v0.4s, v1.4s, v2.s[1]", "6e22dc20": "fmul v0.4s, v1.4s, v2.4s",
        "4ea29420": "mla v0.4s, v1.4s, v2.4s", "4e629c20": "mul v0.8h, v1.8h, v2.8h",
        "6ea2b420": "sqrdmulh v0.4s, v1.4s, v2.4s", "4f82d020": "sqrdmulh v0.4s, v1.4s, v2.s[0]",
        "7ea2b420": "sqrdmulh s0, s1, s2", "1f020c20": "fmadd s0, s1, s2, s3",
        "1e620820": "fmul d0, d1, d2", "4f62c020": "sqdmulh v0.8h, v1.8h, v2.h[2]",
    },
    "simd_other": {
        "4ea28420": "add v0.4s", "4e22d420": "fadd v0.4s", "0e211000": "saddw v0.8h",
        "4f3d0420": "sshr v0.4s, #3", "4f00e400": "movi v0.16b", "4e040c20": "dup v0.4s, w1",
        "1e380020": "fcvtzs w0, s1", "4e22f420": "fmax v0.4s", "4e023820": "zip1 v0.16b",
        "4e020020": "tbl v0.16b", "4ea25420": "srshl v0.4s", "6e82e420": "fcadd v0.4s, #90",
    },
    "ldst": {
        "4cdf7000": "ld1 {v0.16b}, [x0], #16", "4c00a820": "st1 {v0.4s, v1.4s}, [x1]",
        "3dc00400": "ldr q0, [x0, #16]", "f9400020": "ldr x0, [x1]", "38001420": "strb w0",
        "a8c17bfd": "ldp x29, x30", "c85f7c20": "ldxr x0", "f8200041": "ldadd x0, x1, [x2]",
    },
    "branch": {
        "14000000": "b", "94000000": "bl", "54000001": "b.ne", "b4000000": "cbz x0",
        "37180000": "tbnz w0, #3", "d65f03c0": "ret", "d61f0200": "br x16", "d63f0100": "blr x8",
    },
    "scalar": {
        "91001020": "add x0, x1, #4", "9b020c20": "madd x0", "9b027c20": "mul x0, x1, x2",
        "d37df020": "lsl x0", "9a820020": "csel x0", "90000000": "adrp x0", "d2800020": "mov x0",
        "d4000001": "svc #0", "d503201f": "nop", "d5033bbf": "dmb ish", "d53bd040": "mrs x0",
    },
}

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "a64_classes.h"
int main(void) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        printf("%s\n", a64_class_names[a64_classify((uint32_t)strtoul(line, NULL, 16))]);
    }
    return 0;
}
"""


def test_a64_decoder_classes(tmp_path):
    (tmp_path / "driver.c").write_text(DRIVER)
    exe = tmp_path / "driver"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{rt.PLUGIN_DIR}", "-o", str(exe),
                    str(tmp_path / "driver.c")], check=True)
    words = [(w, cls, asm) for cls, cases in A64_CASES.items() for w, asm in cases.items()]
    out = subprocess.run([str(exe)], input="\n".join(w for w, _, _ in words) + "\n",
                         capture_output=True, text=True, check=True).stdout.split()
    wrong = [f"{asm} ({w}): {got}, expected {cls}" for (w, cls, asm), got in zip(words, out)
             if got != cls]
    assert not wrong and len(out) == len(words)


def test_plugin_compiles_cleanly(tmp_path):
    subprocess.run(["gcc", *rt.PLUGIN_CFLAGS, "-Wextra", "-Wno-unused-parameter", "-Werror",
                    "-o", str(tmp_path / "p.so"), str(rt.PLUGIN_DIR / "insn_count.c")], check=True)
    syms = subprocess.run(["nm", "-D", "--defined-only", str(tmp_path / "p.so")],
                          capture_output=True, text=True, check=True).stdout
    exported = sorted(line.split()[-1] for line in syms.splitlines()
                      if " T " in line or " D " in line)
    assert exported == ["qemu_plugin_install", "qemu_plugin_version"]


# -- check: pure helpers --------------------------------------------------------

def test_compare_outputs_int8():
    host = np.array([[1, 2, 3], [4, 5, 6]], np.int8)
    dev = np.array([[1, 2, 3], [4, 7, 6]], np.int8)
    a = compare_outputs(dev, host)
    assert (a.exact_count, a.exact_fraction, a.max_abs_diff) == (1, 0.5, 2.0)
    assert a.top1_agreement == 0.5 and a.dtype == "int8"


def _model(dtypes_buffers):
    from pipeline.tflite.reader import Quantization, Tensor, TFLiteModel

    tensors = [Tensor(i, f"t{i}", (1, 2), dt, buf, Quantization())
               for i, (dt, buf) in enumerate(dtypes_buffers)]
    return TFLiteModel(size=1, opcodes=[], tensors=tensors, operators=[], inputs=(0,),
                       outputs=(len(tensors) - 1,), buffers=[b"", b"\0\0"])


def test_host_reference_is_the_device_runtime_and_version():
    import platform

    from pipeline.devices.check import host_reference
    from pipeline.devices.host_twin import needs_twin, twin_specs
    from pipeline.devices.targets import RUNTIMES

    # The pipeline runs ai-edge-litert 2.3.0 itself (the phones' runtime); the camera's
    # tflite-runtime 2.14.0 gets its own x86_64 build.
    assert not needs_twin(RUNTIMES["litert"]) and needs_twin(RUNTIMES["tflite-runtime"])
    assert host_reference(get_device("pixel4")) == "xnnpack"
    assert host_reference(get_device("camera-a53")) == f"tflite-runtime 2.14.0 {platform.machine()}"
    (spec,) = twin_specs()
    assert spec.requirements == RUNTIMES["tflite-runtime"].requirements  # the guest's own pins


@pytest.mark.integration
def test_the_host_twin_runs_the_device_runtime_and_reports_what_it_cannot_load(tiny_models):
    from pipeline.devices.host_twin import twin_outputs
    from pipeline.devices.targets import RUNTIMES
    from pipeline.tflite.host import host_outputs_for

    paths, x, _ = tiny_models
    runtime = RUNTIMES["tflite-runtime"]
    y = twin_outputs(paths["int8"], x, runtime)
    assert y.shape == host_outputs_for(paths["int8"], x).shape and y.dtype == np.int8
    # tflite-runtime 2.14 has no FULLY_CONNECTED version 12: neither build loads it.
    with pytest.raises(DeviceOutputError, match=r"tflite-runtime 2.14.0 \S+ does not load .*dynamic.*"
                                                r"FULLY_CONNECTED' version '12'"):
        twin_outputs(paths["dynamic"], x, runtime)


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((2, 3), np.float32), None, "inputs have shape [3] per sample; m.tflite expects [2]"),
    (np.zeros((0, 2), np.float32), None, "device check needs at least one input sample"),
    (np.zeros((2, 2), np.int8), None, "inputs must be float images in [0, 1], got dtype int8"),
    (np.zeros((2, 2), np.float32), np.zeros(3), "labels y has 3 entries for 2 inputs"),
])
def test_device_check_validates_inputs(x, y, message):
    from pipeline.devices.check import validate_inputs

    with pytest.raises(ConfigError) as e:
        validate_inputs(_model([("float32", 0), ("float32", 1), ("float32", 0)]), x, y, "m.tflite")
    assert str(e.value) == message


def test_cli_device_run_rejects_non_tflite(tmp_path):
    from pipeline.cli.devices import device

    model = tmp_path / "m.tflite"
    model.write_bytes(b"not a model at all")
    res = CliRunner().invoke(device, ["run", "--device", "pixel4", str(model), "--random", "1",
                                      "-q"])
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and "not a TFLite model" in res.output


def test_compare_outputs_shape_mismatch():
    with pytest.raises(ConfigError, match=r"host outputs have shape \[2, 3\], device outputs "
                                          r"\[1, 3\]"):
        compare_outputs(np.zeros((1, 3)), np.zeros((2, 3)))


def test_estimate_memory():
    from pipeline.tflite.reader import Quantization, Tensor, TFLiteModel

    tensors = [Tensor(0, "in", (1, 4), "float32", 0, Quantization()),
               Tensor(1, "w", (4, 2), "float32", 1, Quantization()),
               Tensor(2, "out", (1, 2), "float32", 2, Quantization())]
    model = TFLiteModel(size=100, opcodes=[], tensors=tensors, operators=[], inputs=(0,),
                        outputs=(2,), buffers=[b"", b"\0" * 32, b""])
    guest = [TensorInfo(0, "in", (1, 4), "float32", 16), TensorInfo(1, "w", (4, 2), "float32", 32),
             TensorInfo(2, "out", (1, 2), "float32", 8)]
    m = estimate_memory(model, guest, ram_mb=1)
    assert (m.weights_bytes, m.activation_bytes, m.total_bytes) == (32, 24, 56)
    assert m.fits and m.fraction_of_ram == 56 / 2**20


def test_device_result_json_and_require_loaded():
    r = DeviceResult(device="camera-a53", qemu_cpu="cortex-a53", runtime="tflite-runtime",
                     runtime_version="2.14.0", model="/m/dyn.tflite", model_sha256="0", threads=1,
                     samples=2, loaded=False, load_error="Didn't find op ...\nRegistration failed.",
                     load_error_op="FULLY_CONNECTED", load_error_op_version=12)
    assert json.loads(json.dumps(r.to_dict()))["load_error_op_version"] == 12
    with pytest.raises(RuntimeIncompatibleError) as e:
        r.require_loaded()
    assert str(e.value) == ("dyn.tflite does not load on camera-a53 (tflite-runtime 2.14.0): op "
                            "FULLY_CONNECTED version 12 is not supported (Didn't find op ...)")


# -- CLI ------------------------------------------------------------------------

def test_cli_devices_table_and_json():
    from pipeline.cli.devices import devices

    out = CliRunner().invoke(devices, []).output.splitlines()
    assert out[0].split() == ["device", "qemu", "cpu", "part", "cores", "GHz", "RAM", "MB",
                              "runtime", "threads"]
    assert [line.split()[0] for line in out[1:]] == DEVICES.names()
    data = json.loads(CliRunner().invoke(devices, ["--json"]).output)
    assert [d["name"] for d in data] == DEVICES.names()


def test_cli_device_run_needs_one_input_source(tmp_path):
    from pipeline.cli.devices import device

    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    for extra in ([], ["--random", "2", "--data", str(tmp_path / "d.npz")]):
        res = CliRunner().invoke(device, ["run", "--device", "pixel4", str(model), *extra])
        assert res.exit_code == 2
        assert res.output.strip() == "error: give exactly one of --recipe RECIPE, --data NPZ or --random N"


def test_cli_device_run_unknown_device(tmp_path):
    from pipeline.cli.devices import device

    res = CliRunner().invoke(device, ["run", "--device", "pixel9", "m.tflite", "--random", "1"])
    assert res.exit_code == 2 and "'pixel9' is not one of 'camera-a53'" in res.output


def test_cli_npz_missing_arrays(tmp_path):
    from pipeline.cli.devices import load_npz_inputs
    from pipeline.errors import DataError

    np.savez(tmp_path / "d.npz", images=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"d.npz: missing array\(s\) x, y; found images"):
        load_npz_inputs(tmp_path / "d.npz", None)


# -- latency and its provenance in the matrix and `device run` ------------------

MODEL = "llvm-mca neoverse-n1 + memory"


def provenance(validated, ms=6.65):
    """What :func:`pipeline.latency.estimate.attach_latency` sets on a result dict."""
    return {"latency_ms": ms, "latency_validated": validated, "latency_model": MODEL,
            "latency_cycles": 16_100_000.0, "latency_ipc": 1.85}


def loaded_result() -> DeviceResult:
    from pipeline.devices.check import Agreement, MemoryEstimate

    return DeviceResult(device="pixel4", qemu_cpu="cortex-a76", runtime="litert", runtime_version="2.3.0",
                        model="/m/int8.tflite", model_sha256="0", threads=1, samples=2, loaded=True, top1=50.0,
                        agreement=Agreement("xnnpack", "int8", 2, 2, 1.0, 0.0, 1.0), instructions_median=30_000_000,
                        instructions_by_class={c: 6_000_000 for c in CLASSES}, counts_exact=True,
                        wall_s_per_image=0.5, memory=MemoryEstimate(2**20, 2**20, 2**21, 2**30, 2**-9, True))


def test_the_matrix_estimates_from_the_full_result_and_records_no_latency(monkeypatch):
    from pipeline.build.matrix import device_metrics, stage_record, with_latency
    from pipeline.latency import estimate
    from pipeline.summary import LATENCY_FIELDS, DeviceSummary

    seen = []

    def attach(result, device, threads):
        seen.append((dict(result), device, threads))
        result.update(provenance(False))

    monkeypatch.setattr(estimate, "attach_latency", attach)  # replaced whole: the real one is not needed
    result = loaded_result().to_dict()
    record = stage_record(device_metrics(result))  # what the manifest holds: no latency
    assert not set(record) & set(LATENCY_FIELDS + ("threads",))
    m = with_latency(DeviceSummary.from_dict(record), result, "pixel4", 4)
    [(given, device, threads)] = seen
    assert given == loaded_result().to_dict() and (device, threads) == ("pixel4", 4)  # the whole result
    assert (m.latency_ms, m.latency_validated, m.latency_model, m.latency_cycles, m.latency_ipc, m.threads) == \
        (6.65, False, MODEL, 16_100_000.0, 1.85, 4)
    assert stage_record(m) == record


@pytest.mark.parametrize("validated", [True, False])
def test_device_table_shows_latency_provenance_and_marks_unvalidated(validated):
    import dataclasses

    from pipeline.build.matrix import device_metrics, device_table
    from pipeline.summary import UNVALIDATED_NOTE, BuildSummary

    m = dataclasses.replace(device_metrics(loaded_result().to_dict()), **provenance(validated))
    summary = BuildSummary(recipe="t", float_top1=0.0, params=0, macs=0, deploy_variant="int8", labels=(),
                           variants={}, devices={"pixel4": {"int8": m, "float32": device_metrics({"loaded": False})}})
    table = device_table(summary)
    assert "| est. latency ms | M cycles (1 thread) | IPC | latency model |" in table
    mark = "" if validated else "*"
    assert f"| pixel4 | int8 | yes | 50.0 | 30.000 | 6.65{mark} | 16.100 | 1.85 | {MODEL} | 100% |" in table
    assert ("*" in table) == (not validated) and (UNVALIDATED_NOTE in table) == (not validated)
    header, rule = table.splitlines()[:2]
    assert header.count("|") == rule.count("|") == table.splitlines()[-1 if validated else -3].count("|")


@pytest.mark.parametrize("latency, text", [
    (provenance(False), f"estimated latency   6.65 ms ({MODEL}: 16,100,000 cycles on 1 thread, IPC 1.85; "
                        "UNVALIDATED: no published measurement of this core and numeric format was in the "
                        "latency model's fit or its check (docs/latency.md))"),
    (provenance(True), f"estimated latency   6.65 ms ({MODEL}: 16,100,000 cycles on 1 thread, IPC 1.85; "
                       "validated)"),
    (dict.fromkeys(provenance(True)), "estimated latency   n/a (no latency model for this device)"),
])
def test_cli_device_run_prints_latency_provenance(latency, text):
    from pipeline.cli.devices import format_result
    from pipeline.summary import LatencyEstimate

    out = format_result(loaded_result(), LatencyEstimate.from_result(latency))
    assert text in out.splitlines()[5]


# -- on emulated devices --------------------------------------------------------

DEVICE_UNDER_TEST = ("pixel4", "rpi4", "camera-a53")
DOTPROD_DEVICES = tuple(d for d in DEVICE_UNDER_TEST if CORES[get_device(d).qemu_cpu].dotprod)
N = 6


@pytest.fixture(scope="session")
def arm_runtime():
    # No skip: a suite that cannot reach the ARM runtime must fail loudly (the
    # message of DeviceUnavailableError says what to install).
    return rt.ensure_runtime()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """float32, int8 (int8 I/O) and dynamic-range .tflite files of tiny Keras models."""
    from pipeline.native import import_tensorflow

    tf = import_tensorflow()
    import tf_keras as keras

    out = tmp_path_factory.mktemp("device-models")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    conv = keras.Sequential([
        layers.Input((32, 32, 3)),
        layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem"),
        layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
        layers.Conv2D(32, 1, activation="relu", name="pw"),
        layers.GlobalAveragePooling2D(name="pool"),
        layers.Dense(10, name="logits"),
    ])
    rng = np.random.default_rng(0)
    x = rng.random((N, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, N)

    def rep():
        for i in range(N):
            yield [x[i:i + 1]]

    paths = {}
    c = tf.lite.TFLiteConverter.from_keras_model(conv)
    paths["float32"] = out / "float32.tflite"
    paths["float32"].write_bytes(c.convert())
    c = tf.lite.TFLiteConverter.from_keras_model(conv)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = rep
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = c.inference_output_type = tf.int8
    paths["int8"] = out / "int8.tflite"
    paths["int8"].write_bytes(c.convert())
    # Dynamic-range quantization needs >= 1024 weights in a kernel: 8*8*3*16 = 3072.
    dense = keras.Sequential([layers.Input((8, 8, 3)), layers.Flatten(), layers.Dense(16)])
    c = tf.lite.TFLiteConverter.from_keras_model(dense)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    paths["dynamic"] = out / "dynamic.tflite"
    paths["dynamic"].write_bytes(c.convert())
    return paths, x, y


@pytest.fixture(scope="session")
def device_results(arm_runtime, tiny_models):
    """Memoised run_device_check(device, variant) over the tiny models."""
    from pipeline.devices.check import run_device_check

    paths, x, y = tiny_models
    cache = {}

    def get(device, variant):
        if (device, variant) not in cache:
            cache[device, variant] = run_device_check(paths[variant], device, x, y,
                                                      runtime=arm_runtime)
        return cache[device, variant]

    return get


@pytest.mark.device
@pytest.mark.parametrize("device", DEVICE_UNDER_TEST)
def test_int8_bit_exact_with_host(device_results, device):
    r = device_results(device, "int8")
    assert r.loaded and r.counts_exact
    assert r.agreement.dtype == "int8"
    # Each device is compared with its own runtime and version on the host.
    legacy = get_device(device).runtime == "tflite-runtime"
    assert r.agreement.host_reference.startswith("tflite-runtime 2.14.0 ") if legacy else (
        r.agreement.host_reference == "xnnpack")
    assert r.agreement.exact_count == N, r.agreement
    assert r.top1 is not None and r.memory.fits


@pytest.mark.device
@pytest.mark.parametrize("device", DEVICE_UNDER_TEST)
def test_float32_close_to_host(device_results, device):
    r = device_results(device, "float32")
    assert r.loaded and r.agreement.dtype == "float32"
    assert r.agreement.max_abs_diff < 1e-4, r.agreement


@pytest.mark.device
@pytest.mark.parametrize("device", DEVICE_UNDER_TEST)
def test_instruction_counts_repeat_exactly(device_results, tiny_models, arm_runtime, device):
    from pipeline.devices.check import run_device_check

    paths, x, y = tiny_models
    first = device_results(device, "int8")
    again = run_device_check(paths["int8"], device, x, y, runtime=arm_runtime)
    assert again.instructions_per_inference == first.instructions_per_inference
    assert again.instructions_by_class == first.instructions_by_class
    assert again.warmup_instructions == first.warmup_instructions
    assert len(first.instructions_per_inference) == N and first.instructions_median > 0
    assert sum(first.instructions_by_class.values()) == first.instructions_median


@pytest.mark.device
@pytest.mark.parametrize("device", DOTPROD_DEVICES)
def test_int8_cheaper_than_float32(device_results, device):
    # Only where the core has dot-product instructions: on cortex-a72/a53 the int8
    # kernels (widening smlal + requantization) execute MORE instructions than fp32
    # fmla kernels (measured; fewer MACs per cycle is the latency model's business).
    int8, fp32 = device_results(device, "int8"), device_results(device, "float32")
    assert int8.instructions_median < fp32.instructions_median
    assert int8.instructions_by_class["simd_mac"] < fp32.instructions_by_class["simd_mac"]


@pytest.mark.device
@pytest.mark.parametrize("device", DEVICE_UNDER_TEST)
def test_int8_needs_fewer_multiply_instructions(device_results, device):
    int8, fp32 = device_results(device, "int8"), device_results(device, "float32")
    assert int8.instructions_by_class["simd_mac"] < fp32.instructions_by_class["simd_mac"]


@pytest.mark.device
def test_counts_reflect_the_emulated_core(device_results):
    # cortex-a76 has dotprod (sdot), cortex-a72 does not: different int8 kernels.
    a76, a72 = device_results("pixel4", "int8"), device_results("rpi4", "int8")
    assert a76.instructions_median < a72.instructions_median
    assert a76.instructions_by_class["simd_mac"] > 0


@pytest.mark.device
def test_dynamic_range_model_not_loadable_on_camera(arm_runtime, tiny_models):
    from pipeline.devices.check import run_device_check

    paths, _, _ = tiny_models
    x = np.random.default_rng(1).random((2, 8, 8, 3), dtype=np.float32)
    r = run_device_check(paths["dynamic"], "camera-a53", x, runtime=arm_runtime)
    assert not r.loaded
    assert (r.load_error_op, r.load_error_op_version) == ("FULLY_CONNECTED", 12)
    assert "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'" in r.load_error
    with pytest.raises(RuntimeIncompatibleError, match="op FULLY_CONNECTED version 12"):
        r.require_loaded()
    assert run_device_check(paths["dynamic"], "pixel4", x, runtime=arm_runtime).loaded


def _fake_run(returncode, stderr):
    from pipeline.devices.runner import DeviceRun

    return DeviceRun(command=("qemu-aarch64", "guest_runner.py"), env=(("HOME", "/"),), returncode=returncode,
                     stdout="", stderr=stderr, result_text=None, counts_text=None, outputs=None, wall_s=0.5)


SEED_MODEL = Path(__file__).parent / "fuzz_regressions" / "seed_int8.tflite"


def test_a_runtime_that_crashes_on_the_model_is_a_result_not_an_outage(monkeypatch):
    """A guest that dies on SIGSEGV is the model's problem on that runtime: the build
    records it like an unloadable model, ``device run`` names it; exit 3 is kept for
    a runtime that is not there or output that makes no sense."""
    from pipeline.build.matrix import device_metrics, device_table
    from pipeline.devices import check

    crash = "qemu: uncaught target signal 11 (Segmentation fault) - core dumped\n"
    monkeypatch.setattr(check, "run_on_device", lambda *a, **k: _fake_run(-11, crash))
    x = np.zeros((2, 8, 8, 1), np.float32)
    r = check.run_device_check(SEED_MODEL, "camera-a53", x, runtime=object())
    assert not r.loaded and r.runtime == "tflite-runtime" and r.samples == 2
    assert r.load_error == ("the runtime crashed on this model (SIGSEGV): "
                            "qemu: uncaught target signal 11 (Segmentation fault) - core dumped")
    with pytest.raises(RuntimeIncompatibleError, match=r"seed_int8.tflite does not load on camera-a53 "
                                                      r"\(tflite-runtime 2.14.0\) \(the runtime crashed"):
        r.require_loaded()
    from pipeline.summary import BuildSummary

    summary = BuildSummary(recipe="t", float_top1=0.0, params=0, macs=0, deploy_variant="int8-qat", labels=(),
                           variants={}, devices={"camera-a53": {"int8-qat": device_metrics(r.to_dict())}})
    table = device_table(summary)
    assert "| camera-a53 | int8-qat | no (the runtime crashed on this model (SIGSEGV)) |" in table

    monkeypatch.setattr(check, "run_on_device", lambda *a, **k: _fake_run(1, "Traceback ...\nOSError: boom\n"))
    with pytest.raises(DeviceOutputError, match=r"camera-a53: the emulated run of seed_int8.tflite exited 1"):
        check.run_device_check(SEED_MODEL, "camera-a53", x, runtime=object())

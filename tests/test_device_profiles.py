"""Device profiles, emulated cores, the ARM runtime (key, cache, host tools, qemu command)
and the instruction-count plugin's A64 decoder."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.devices import runtime as rt
from pipeline.devices.profiles import (DEVICES, FIELDS, DeviceProfile, get_device, load_profile,
                                       load_profiles)
from pipeline.devices.targets import CORES, RUNTIMES, cpuinfo_text
from pipeline.errors import ConfigError, DeviceUnavailableError


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
              "cache_kb, dram_gbps, dram_bus_bits, dram_mts, sources")


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
    text = (Path(__file__).resolve().parents[1] / "pipeline" / "devices" / "profile_data"
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

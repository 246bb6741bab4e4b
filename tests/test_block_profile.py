"""Tests of the block profile: the plugin's block lines, their checks, re-joining, hot blocks.

``data/insn_count_v2.txt`` is recorded plugin output, trimmed: the tiny float32 conv
model of test_device_emulated.py (32x32x3: stem conv, depthwise, pointwise, pool, dense) run
with one input on pixel4 (cortex-a76, ai-edge-litert), regions 0-2 as guest_runner.py
marks them. Of the run's 1,523 blocks, 16 are kept: the hottest XNNPACK kernel blocks,
a block QEMU split at a page boundary (0x5508f73fec | 0x5508f74000), two it split at
its block size limit, a loop entry overlapping its loop body (0x5508f30c08 and
0x5508f30c14), and a call with its return point (0x472bb0, 0x472bc0). Region 2 and the
end line were recomputed for the kept blocks (classes from a64_classes.h), so the file
passes every check a whole run passes.

Tests marked ``device`` run the plugin under qemu-aarch64 (the ARM runtime is built on
first use, see test_device_emulated.py).
"""

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.devices import runtime as rt
from pipeline.devices.check import DeviceResult
from pipeline.devices.blocks import BlockProfile, HotProfile, block_profile, hot_blocks, is_branch, rejoin
from pipeline.devices.insn_counts import Block, parse_insn_counts
from pipeline.errors import ConfigError, DeviceOutputError

FIXTURE = Path(__file__).parent / "data" / "insn_count_v2.txt"
SEED_MODEL = Path(__file__).parent / "fuzz_regressions" / "seed_float32.tflite"
NOP, RET, SVC, BRK, HVC = 0xD503201F, 0xD65F03C0, 0xD4000001, 0xD4200000, 0xD4000002


@pytest.fixture(scope="module")
def text():
    return FIXTURE.read_text()


def profile_of(text, samples=1):
    return block_profile(parse_insn_counts(text), samples)


def block_line(b: Block) -> str:
    return (f"block vaddr=0x{b.vaddr:x} insns={b.insns} count={b.count} words="
            + ",".join(f"{w:08x}" for w in b.words))


def with_blocks(text, extra):
    """The fixture with more block lines, its end line and region 2 made to agree with them."""
    lines = text.splitlines()
    added = sum(b.executed for b in extra)
    region = parse_insn_counts(text).regions[2]
    lines[3] = (f"region index=2 total={region.total + added} simd_mac={region.simd_mac} "
                f"simd_other={region.simd_other} ldst={region.ldst} branch={region.branch} "
                f"scalar={region.scalar + added}")
    profiled = parse_insn_counts(text).profiled + added
    blocks = sum(line.startswith("block ") for line in lines) + len(extra)
    lines[-1:] = [block_line(b) for b in extra] + [
        f"end regions=3 total=429248948 profiled={profiled} blocks={blocks}"]
    return "\n".join(lines) + "\n"


def blk(vaddr, insns, count, last=NOP):
    return Block(vaddr=vaddr, words=(NOP,) * (insns - 1) + (last,), count=count)


# -- parsing ------------------------------------------------------------------------

def test_recorded_blocks_add_up_to_the_profiled_inference(text):
    counts = parse_insn_counts(text)
    profile = block_profile(counts, samples=1)
    assert len(profile.blocks) == 16 and profile.inferences == 1
    assert profile.instructions == counts.profiled == counts.regions[2].total == 146104
    b = profile.blocks[0]
    assert (b.vaddr, b.words, b.count) == (0x472BB0, (0xA9BF7BFD, 0x910003FD, 0xB9400400, 0x97FEAEC5), 2)
    assert (b.insns, b.executed, b.end) == (4, 8, 0x472BC0)


def test_blocks_may_overlap_when_they_agree(text):
    profile = profile_of(text)
    entry, body = (next(b for b in profile.blocks if b.vaddr == v) for v in (0x5508F30C08, 0x5508F30C14))
    assert entry.words[3:] == body.words  # a jump into the loop started a block mid-way
    inner = max(profile.blocks, key=lambda b: b.executed)
    prefix = Block(inner.vaddr, inner.words[:4], 3)  # a shorter translation at the same address
    middle = Block(inner.vaddr + 8, inner.words[2:], 2)
    assert len(profile_of(with_blocks(text, [prefix, middle])).blocks) == 18


@pytest.mark.parametrize("old, new, message", [
    ("words=a9bf7bfd,", "words=A9BF7BFD,",
     "line 5: malformed block line: 'block vaddr=0x472bb0 insns=4 count=2 words=A9BF7BFD,910003fd,"),
    ("block vaddr=0x472bb0 insns=4 count=2", "block vaddr=0x472bb0 count=2",
     "line 5: malformed block line"),
    ("block vaddr=0x472bb0 insns=4", "block vaddr=0x472bb0 insns=5",
     "line 5: block at 0x472bb0 says insns=5 but lists 4 words"),
    ("block vaddr=0x472bb0 insns=4 count=2", "block vaddr=0x472bb0 insns=4 count=0",
     "line 5: block at 0x472bb0 has count=0 (the plugin writes only blocks that ran)"),
    ("profiled=146104", "profiled=146105",
     "end line says profiled=146105, the block lines execute 146104 instructions"),
    ("blocks=16", "blocks=17", "end line says 17 blocks, file has 16"),
    ("end regions=3 total=429248948 profiled=146104 blocks=16", "end regions=3 total=429248948",
     "line 21: unrecognised: 'end regions=3 total=429248948'"),
    ("block vaddr=0x472bc0", "region index=3 total=0 simd_mac=0 simd_other=0 ldst=0 branch=0 scalar=0\n"
                             "block vaddr=0x472bc0", "line 6: region after the block lines"),
    ("end regions", "error 2 translated instructions are not 4-byte A64 words (the first at 0x400)\nend regions",
     "plugin reported: 2 translated instructions are not 4-byte A64 words (the first at 0x400)"),
])
def test_malformed_block_lines_are_refused(text, old, new, message):
    assert old in text
    with pytest.raises(DeviceOutputError, match="instruction counts") as e:
        parse_insn_counts(text.replace(old, new, 1))
    assert message in str(e.value)


def test_a_block_listed_twice_is_refused(text):
    twice = with_blocks(text, [blk(0x1000, 2, 1), blk(0x1000, 2, 1)])
    with pytest.raises(DeviceOutputError) as e:
        parse_insn_counts(twice)
    assert str(e.value) == ("instruction counts: the block at 0x1000 is listed more than once "
                            "(the plugin merges re-translations)")


def test_blocks_must_add_up_to_the_profiled_regions_exactly(text):
    region = "region index=2 total=146104 simd_mac=70104 simd_other=6216 ldst=35780 branch=3685 scalar=30319"
    assert region in text
    one_more = text.replace(region, region.replace("146104", "146105").replace("30319", "30320"))
    with pytest.raises(DeviceOutputError) as e:
        profile_of(one_more)
    assert str(e.value) == (
        "block profile: the blocks execute 146104 instructions, regions 2-2 count 146105; they must "
        "be equal (was the plugin's profile_from not 2, or the guest multi-threaded?)")
    with pytest.raises(DeviceOutputError, match="3 regions for 2 inputs, expected 4"):
        profile_of(text, samples=2)


def test_code_changed_under_a_block_is_refused(text):
    inner = next(b for b in profile_of(text).blocks if b.vaddr == 0x5508F7CDE0)
    rewritten = Block(inner.vaddr + 8, (inner.words[2] ^ 1,) + inner.words[3:], 1)
    with pytest.raises(DeviceOutputError) as e:
        profile_of(with_blocks(text, [rewritten]))
    assert str(e.value) == (
        f"block profile: the guest changed code at 0x5508f7cde8 ({inner.words[2]:08x} in the block at "
        f"0x5508f7cde0, {inner.words[2] ^ 1:08x} in the block at 0x5508f7cde8): JIT or self-modifying "
        "code; the block profile cannot be trusted")


# -- re-joining ----------------------------------------------------------------------

def test_rejoin_joins_blocks_split_at_a_page_boundary_and_the_size_limit(text):
    profile = profile_of(text)
    raw = {b.vaddr: b for b in profile.blocks}
    joined = {b.vaddr: b for b in rejoin(profile.blocks)}
    assert raw[0x5508F73FEC].end == 0x5508F74000  # a page boundary, no branch before it
    assert joined[0x5508F73FEC] == Block(0x5508F73FEC, raw[0x5508F73FEC].words + raw[0x5508F74000].words, 5)
    assert (joined[0x5508F77554].insns, joined[0x5508F7773C].insns) == (92 + 30, 97 + 17)
    assert len(joined) == len(raw) - 3 and 0x5508F74000 not in joined
    assert BlockProfile(tuple(joined.values()), 1).instructions == profile.instructions


def test_rejoin_keeps_blocks_apart_after_branches_and_calls(text):
    # Both pairs run equally often, but a block ending in a call (bl) or a
    # conditional branch (b.ne) is left by more than falling through.
    joined = {b.vaddr for b in rejoin(profile_of(text).blocks)}
    assert {0x472BB0, 0x472BC0, 0x5508F7773C, 0x5508F77904, 0x5508F77970} <= joined


def test_rejoin_joins_chains_and_only_blocks_entered_from_one_place():
    a, b, c = blk(0x1000, 2, 5), blk(0x1008, 3, 5), blk(0x1014, 1, 5, RET)
    assert rejoin([c, a, b]) == (Block(0x1000, a.words + b.words + c.words, 5),)
    entered_by_a_jump_too = replace(b, count=6)
    assert rejoin([entered_by_a_jump_too, a]) == (a, entered_by_a_jump_too)
    shorter_translation = blk(0x1008, 1, 5)
    assert rejoin([a, b, shorter_translation]) == (a, shorter_translation, b)
    also_falls_into_b = blk(0x1004, 1, 5)
    assert rejoin([a, also_falls_into_b, b]) == (a, also_falls_into_b, b)


@pytest.mark.parametrize("last", [0x14000000, 0x94000000, 0x54000001, 0xB4000000, 0x37180000, RET,
                                  0xD61F0200, 0xD63F0100, SVC, HVC, BRK])
def test_rejoin_never_joins_after_a_branch_or_exception(last):
    a, b = blk(0x1000, 2, 5, last), blk(0x1008, 1, 5)
    assert rejoin([b, a]) == (a, b)


DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "a64_classes.h"
int main(void) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        printf("%d\n", a64_classify((uint32_t)strtoul(line, NULL, 16)) == A64_BRANCH);
    }
    return 0;
}
"""


def test_is_branch_agrees_with_the_plugin_decoder(tmp_path, text):
    (tmp_path / "driver.c").write_text(DRIVER)
    exe = tmp_path / "driver"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{rt.PLUGIN_DIR}", "-o", str(exe),
                    str(tmp_path / "driver.c")], check=True)
    recorded = [w for b in profile_of(text).blocks for w in b.words]
    words = recorded + [int(w) for w in np.random.default_rng(0).integers(0, 2**32, 20000)]
    out = subprocess.run([str(exe)], input="".join(f"{w:08x}\n" for w in words), capture_output=True,
                         text=True, check=True).stdout.split()
    wrong = [f"{w:08x}" for w, c in zip(words, out) if is_branch(w) != (c == "1")]
    assert not wrong and len(out) == len(words)
    assert 100 < sum(map(is_branch, words)) < len(words) / 2


# -- hot blocks ----------------------------------------------------------------------

def test_hot_blocks_are_the_fewest_that_hold_the_coverage(text):
    profile = BlockProfile(rejoin(profile_of(text).blocks), 1)
    hot, cold = hot_blocks(profile)
    covered = sum(b.executed for b in hot)
    assert (len(hot), cold) == (10, 66) and covered + cold == profile.instructions
    assert covered >= 0.99 * profile.instructions > covered - hot[-1].executed
    assert [b.executed for b in hot] == sorted((b.executed for b in hot), reverse=True)
    assert hot[0].vaddr == 0x5508F7CDE0
    everything, none = hot_blocks(profile, 1.0)
    assert len(everything) == len(profile.blocks) and none == 0


def test_hot_blocks_break_ties_by_address():
    low, high = blk(0x1000, 2, 2), blk(0x2000, 1, 4)
    assert hot_blocks(BlockProfile((high, low), 1), 0.5) == ((low,), 4)


@pytest.mark.parametrize("coverage", [0, -0.5, 1.01])
def test_hot_blocks_coverage_must_be_a_fraction(coverage):
    with pytest.raises(ConfigError, match=r"hot block coverage must be in \(0, 1\], got"):
        hot_blocks(BlockProfile((), 1), coverage)


def test_hot_profile_round_trips_through_json(text):
    profile = BlockProfile(rejoin(profile_of(text).blocks), 1)
    hot = HotProfile.of(profile)
    d = json.loads(json.dumps(hot.to_dict()))
    assert d["inferences"] == 1 and d["instructions"] == profile.instructions == 146104
    assert d["cold_instructions"] == 66 and d["coverage"] == 0.99 and len(d["hot"]) == 10
    assert d["hot"][0] == {"vaddr": 0x5508F7CDE0, "words": list(hot.hot[0].words), "count": 774}
    assert HotProfile.from_dict(d) == hot


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("hot"), "missing key 'hot'"),
    (lambda d: d.update(extra=1), "unexpected keys ['extra']"),
    (lambda d: d.update(coverage=True), "'coverage' is True, expected int or float"),
    (lambda d: d.update(inferences=0), "inferences 0 (>= 1)"),
    (lambda d: d.update(instructions=d["instructions"] + 1),
     "instructions 146105, but the hot blocks and cold_instructions add up to 146104"),
    (lambda d: d["hot"][0].update(words=[]), "hot block 0: words must be a non-empty list of 32-bit words"),
    (lambda d: d["hot"][1].update(words=[2**32]), "hot block 1: words must be a non-empty list of 32-bit words"),
    (lambda d: d["hot"][0].update(count=0), "hot block 0: count 0 (>= 1)"),
    (lambda d: d["hot"].append([1, [2], 3]), "hot block 10: expected an object, got [1, [2], 3]"),
])
def test_hot_profile_from_dict_refuses_malformed(text, change, message):
    d = HotProfile.of(BlockProfile(rejoin(profile_of(text).blocks), 1)).to_dict()
    change(d)
    with pytest.raises(DeviceOutputError, match="block profile") as e:
        HotProfile.from_dict(d)
    assert message in str(e.value)


# -- the device result ----------------------------------------------------------------

def _guest_result(threads):
    io = {"name": "x", "shape": [1, 8, 8, 1], "dtype": "float32", "scale": 0.0, "zero_point": 0}
    return json.dumps({"format": "mm-guest-result 1", "runtime": "litert", "runtime_version": "2.3.0",
                       "numpy_version": "2.2.6", "threads": threads, "loaded": True, "load_error": None,
                       "input": io, "output": dict(io, shape=[1, 3]), "tensors": [], "samples": 1,
                       "wall_s": [0.5], "regions": {"marker_overhead": 0, "warmup": 1, "first_inference": 2}})


@pytest.mark.parametrize("threads", [1, 2])
def test_device_result_holds_the_rejoined_profile_and_stores_its_hot_part(monkeypatch, text, threads):
    from pipeline.devices import check
    from pipeline.devices.runner import DeviceRun

    outputs = np.zeros((1, 3), np.float32)
    run = DeviceRun(command=("qemu-aarch64",), env=(), returncode=0, stdout="", stderr="",
                    result_text=_guest_result(threads), counts_text=text, outputs=outputs, wall_s=1.0)
    monkeypatch.setattr(check, "run_on_device", lambda *a, **k: run)
    r = check.run_device_check(SEED_MODEL, "pixel4", np.zeros((1, 8, 8, 1), np.float32),
                               host_outputs=outputs, runtime=object())
    d = json.loads(json.dumps(r.to_dict()))
    assert "blocks" not in d and "blocks=" not in repr(r)
    if threads == 2:  # block counts and region totals are not taken in step
        assert r.blocks is None and d["block_profile"] is None
        return
    assert r.blocks == BlockProfile(rejoin(profile_of(text).blocks), 1)
    assert HotProfile.from_dict(d["block_profile"]) == HotProfile.of(r.blocks)
    assert r.blocks.instructions == r.instructions_median + r.marker_overhead_instructions


def test_device_result_without_blocks_stores_none():
    r = DeviceResult(device="camera-a53", qemu_cpu="cortex-a53", runtime="tflite-runtime",
                     runtime_version="2.14.0", model="/m/x.tflite", model_sha256="0", threads=1,
                     samples=1, loaded=False, load_error="no")
    assert r.to_dict()["block_profile"] is None and "blocks" not in r.to_dict()


# -- the plugin under qemu ------------------------------------------------------------

MARKED = ("import os\nfor magic in (0x6D6D5F7200000001, 0x6D6D5F7200000002):\n"
          "    try:\n        os.lseek(-1, magic, 0)\n    except OSError:\n        pass\n")


@pytest.fixture(scope="module")
def arm_runtime():
    return rt.ensure_runtime()


def _guest(arm, tmp_path, *plugin_args):
    counts = tmp_path / "counts.txt"
    done = subprocess.run(arm.command("cortex-a53", ["-c", MARKED], counts, plugin_args=plugin_args),
                          env=arm.env("litert"), capture_output=True, text=True, timeout=120)
    return done, counts


@pytest.mark.device
def test_plugin_profiles_from_the_region_asked_for(arm_runtime, tmp_path):
    done, counts = _guest(arm_runtime, tmp_path, "profile_from=0")
    assert done.returncode == 0, done.stderr
    c = parse_insn_counts(counts.read_text(), expect_regions=1)
    assert c.blocks and c.profiled == c.regions[0].total == sum(b.executed for b in c.blocks)
    done, counts = _guest(arm_runtime, tmp_path)  # default 2: region 0 is not profiled
    c = parse_insn_counts(counts.read_text(), expect_regions=1)
    assert (c.blocks, c.profiled) == ((), 0)


@pytest.mark.device
def test_plugin_refuses_a_bad_profile_from(arm_runtime, tmp_path):
    done, _ = _guest(arm_runtime, tmp_path, "profile_from=-1")
    assert done.returncode != 0
    assert "insn_count: profile_from must be a region index (0, 1, 2, ...), got '-1'" in done.stderr


@pytest.mark.device
def test_device_check_profiles_every_measured_inference_and_repeats_exactly(arm_runtime):
    from pipeline.devices.check import run_device_check

    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    r = run_device_check(SEED_MODEL, "pixel4", x, runtime=arm_runtime)
    assert r.blocks is not None and r.blocks.inferences == 3
    assert r.blocks.instructions == sum(r.instructions_per_inference) + 3 * r.marker_overhead_instructions
    stored = HotProfile.from_dict(json.loads(json.dumps(r.to_dict()))["block_profile"])
    assert stored == HotProfile.of(r.blocks)
    assert sum(b.executed for b in stored.hot) >= 0.99 * stored.instructions
    assert run_device_check(SEED_MODEL, "pixel4", x, runtime=arm_runtime).blocks == r.blocks

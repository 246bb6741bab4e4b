"""pipeline.latency.mca: A64 blocks priced by LLVM 19's pipeline models (llvm-mc, llvm-mca).

These tests run the real llvm-mc-19 and llvm-mca-19 (Debian package llvm-19, installed
by `make system-deps` as root): without them they fail, they do not skip.
"""

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.devices.profiles import SCHED_MODELS
from pipeline.errors import ConfigError, DeviceOutputError, DeviceUnavailableError
from pipeline.latency import mca

DATA = Path(__file__).resolve().parent / "data"
DOTPROD = ("+dotprod", "+fullfp16")
N1 = mca.SchedModel("neoverse-n1", DOTPROD)

# An fp32 GEMM micro-kernel loop body: 4 ldr q (post-increment), 8 fmla v.4s by
# element, subs, b.ne (words from llvm-mc-19 -show-encoding).
GEMM_F32 = [0x3cc10430, 0x3cc10431, 0x3cc10448, 0x3cc10449,
            0x4f901100, 0x4f901121, 0x4fb01102, 0x4fb01123,
            0x4f901904, 0x4f901925, 0x4fb01906, 0x4fb01927,
            0xf1000400, 0x54fffe61]
# The same loop with sdot v.4s, v.16b, v.4b[i] (needs +dotprod) in place of fmla.
GEMM_SDOT = GEMM_F32[:4] + [0x4f90e100, 0x4f90e121, 0x4fb0e102, 0x4fb0e123,
                            0x4f90e904, 0x4f90e925, 0x4fb0e906, 0x4fb0e927] + GEMM_F32[-2:]
SDOT = 0x4f90e100
BL = 0x97ffffe7    # bl #-100
BLR = 0xd63f0060   # blr x3
B = 0x17ffffe7     # b #-100
BR = 0xd61f0060    # br x3
UDF = 0x00000000   # udf #0: decodes, but no model can schedule it
NOT_A64 = 0xffffffff


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh $MOBILE_MODEL_CACHE per test."""
    monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "latency" / "mca"


def xnnpack_blocks():
    data = json.loads((DATA / "mca_xnnpack_blocks.json").read_text())
    return ([[int(w, 16) for w in b["words"]] for b in data["blocks"]],
            [int(b["offset"], 16) for b in data["blocks"]], tuple(data["mattr"]))


def test_llvm_19_is_installed():
    assert "LLVM version 19." in mca.mca_version(mca.find_tool("llvm-mca"))
    assert mca.find_tool("llvm-mc")


def test_golden_cycles_of_an_fp32_gemm_loop_on_neoverse_n1():
    # LLVM 19.1.7, -mcpu=neoverse-n1, 500 iterations: 2011 cycles in all, i.e. the
    # 4-cycle steady state (8 fmla on the two V pipes) plus an 11-cycle fill.
    [timing] = mca.block_cycles([GEMM_F32], N1)
    assert timing == mca.BlockTiming(cycles_per_iteration=2011 / 500, calls=0, insns=14)
    assert mca.ITERATIONS == 500


def test_cycles_converge_with_iterations(monkeypatch):
    blocks, addresses, mattr = xnnpack_blocks()
    model = mca.SchedModel("neoverse-n1", mattr)
    at_default = mca.block_cycles(blocks, model, addresses)
    monkeypatch.setattr(mca, "ITERATIONS", 10 * mca.ITERATIONS)
    at_ten_times = mca.block_cycles(blocks, model, addresses)
    # The fill and drain of the pipeline, spread over the iterations: within 0.5%, or
    # 0.1 cycle for the smallest blocks.
    for short, long in zip(at_default, at_ten_times):
        assert short.cycles_per_iteration == pytest.approx(long.cycles_per_iteration, rel=0.005, abs=0.1)


def test_disassembles_real_compiler_output_word_for_word():
    blocks, addresses, mattr = xnnpack_blocks()
    texts = mca.disassemble_blocks(blocks, mattr, addresses)
    assert [len(t) for t in texts] == [len(b) for b in blocks]
    # llvm-mc prints a comment line after some instructions ("mov w19, #5" then "// =0x5").
    assert texts[-1] == ["mov\tw19, #5", "cbz\tx0, #80"]
    assert mca.disassemble([SDOT], DOTPROD) == ["sdot\tv0.4s, v8.16b, v16.4b[0]"]


def test_a_word_that_is_not_a64_is_rejected():
    with pytest.raises(DeviceOutputError, match=r"word 0xffffffff \(instruction 1 of block 0 at 0x4000\) "
                                                r"with -mattr=\+dotprod,\+fullfp16"):
        mca.disassemble([GEMM_F32[0], NOT_A64], DOTPROD, address=0x4000)


def test_sdot_without_dotprod_is_rejected_not_dropped():
    # llvm-mc itself only warns and drops the word.
    with pytest.raises(DeviceOutputError, match=r"word 0x4f90e100 \(instruction 4 of block 1 at 0x20\) "
                                                r"with -mattr=\+fullfp16.*\+dotprod"):
        mca.disassemble_blocks([GEMM_F32, GEMM_SDOT], ("+fullfp16",), addresses=[0x10, 0x20])
    with pytest.raises(DeviceOutputError, match=r"word 0x4f90e100 .* with no -mattr"):
        mca.block_cycles([GEMM_SDOT], mca.SchedModel("neoverse-n1"))


def test_an_instruction_the_model_cannot_schedule_is_an_error():
    with pytest.raises(DeviceOutputError, match=r"neoverse-n1.*'udf\\t#0' in block 1 at 0x88"):
        mca.block_cycles([GEMM_F32, [UDF, GEMM_F32[-1]]], N1, addresses=[0x44, 0x88])


def test_unknown_cpu_and_feature_are_config_errors():
    with pytest.raises(ConfigError, match="'no-such-cpu' is not a recognized processor"):
        mca.block_cycles([GEMM_F32], mca.SchedModel("no-such-cpu"))
    with pytest.raises(ConfigError, match=r"\+no-such-feature"):
        mca.block_cycles([GEMM_F32], mca.SchedModel("neoverse-n1", ("+no-such-feature",)))
    with pytest.raises(ConfigError, match="scheduling information.*carmel"):
        mca.model_in_use("carmel")


@pytest.mark.parametrize("blocks, message", [
    ([[]], "block 0 has no instruction words"),
    ([GEMM_F32, [1 << 32]], r"block 1: instruction words are integers in \[0, 0xffffffff\], got 4294967296"),
    ([[-1]], "got -1"),
])
def test_malformed_blocks_are_config_errors(blocks, message):
    with pytest.raises(ConfigError, match=message):
        mca.block_cycles(blocks, N1)


@pytest.mark.parametrize("mcpu, mattr, message", [
    ("", (), "e.g. 'neoverse-n1'; got ''"),
    ("Neoverse-N1", (), "got 'Neoverse-N1'"),
    ("neoverse-n1", "+dotprod", "got the string '\\+dotprod'"),
    ("neoverse-n1", ("dotprod",), r"'\+name' or '-name'.*\['dotprod'\]"),
])
def test_sched_model_is_validated(mcpu, mattr, message):
    with pytest.raises(ConfigError, match=message):
        mca.SchedModel(mcpu, mattr)


def test_sched_model_key():
    assert mca.SchedModel("neoverse-n1", ["+dotprod", "+fullfp16"]) == N1
    assert N1.key == "neoverse-n1:+dotprod,+fullfp16"
    assert mca.SchedModel("cortex-a55").key == "cortex-a55:"


def test_batching_gives_the_numbers_of_one_block_per_call(tmp_path, monkeypatch):
    blocks, addresses, mattr = xnnpack_blocks()
    model = mca.SchedModel("cortex-a55", mattr)
    batched = mca.price_blocks(blocks, model, addresses)
    assert batched.stats.analysed == len(blocks)
    for n, words in enumerate(blocks):
        monkeypatch.setenv("MOBILE_MODEL_CACHE", str(tmp_path / f"alone{n}"))
        assert mca.block_cycles([words], model) == [batched.timings[n]]


def test_one_llvm_mc_and_one_llvm_mca_process_per_call(monkeypatch):
    blocks, addresses, mattr = xnnpack_blocks()
    started = []
    real_run = subprocess.run

    def counting_run(command, *args, **kwargs):
        started.append(Path(command[0]).name)
        return real_run(command, *args, **kwargs)

    mca.mca_version(mca.find_tool("llvm-mca"))  # remembered on disk from here on
    monkeypatch.setattr(subprocess, "run", counting_run)
    mca.price_blocks(blocks, mca.SchedModel("cortex-a57", mattr), addresses)
    assert sorted(started) == ["llvm-mc-19", "llvm-mca-19"]


def test_the_second_call_is_served_from_the_cache_without_a_process(cache, monkeypatch):
    blocks, addresses, mattr = xnnpack_blocks()
    model = mca.SchedModel("kryo", mattr)
    first = mca.price_blocks(blocks, model, addresses)
    assert (first.stats.analysed, first.stats.cached) == (len(blocks), 0)
    assert first.stats.llvm_seconds > 0
    assert len(list(cache.glob("*.json"))) == len(blocks)

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "run", no_process)
    second = mca.price_blocks(blocks, model, addresses)
    assert second.timings == first.timings
    assert (second.stats.analysed, second.stats.cached, second.stats.llvm_seconds) == (0, len(blocks), 0.0)


def test_only_new_blocks_are_analysed():
    mca.block_cycles([GEMM_F32], N1)
    both = mca.price_blocks([GEMM_F32, GEMM_SDOT], N1)
    assert (both.stats.analysed, both.stats.cached) == (1, 1)
    # Another model, another entry.
    assert mca.price_blocks([GEMM_F32], mca.SchedModel("neoverse-n1")).stats.analysed == 1


@pytest.mark.parametrize("mcpu", ["cortex-a53", "cortex-a55", "cortex-a57", "neoverse-n1", "kryo"])
def test_a_call_costs_what_a_plain_branch_costs(mcpu):
    model = mca.SchedModel(mcpu, DOTPROD)
    body = GEMM_F32[:-1]
    with_bl, with_b, with_blr, with_br = mca.block_cycles(
        [body + [BL], body + [B], body + [BLR], body + [BR]], model)
    assert with_bl.cycles_per_iteration == with_b.cycles_per_iteration
    assert with_blr.cycles_per_iteration == with_br.cycles_per_iteration
    assert (with_bl.calls, with_blr.calls, with_b.calls, with_br.calls) == (1, 1, 0, 0)
    # llvm-mca's default (100 cycles per call) would be far above the block's own cost.
    assert with_bl.cycles_per_iteration < 40


CASAL = 0x88e07c41  # casal w0, w1, [x2]: an LSE atomic (needs +lse)
NOP = 0xd503201f


@pytest.mark.parametrize("mcpu", ["cortex-a55", "neoverse-n1"])
def test_an_lse_atomic_is_counted_apart_and_priced_as_a_nop(mcpu):
    model = mca.SchedModel(mcpu, ("+lse",))
    body = GEMM_F32[:4]
    with_cas, with_nop = mca.block_cycles([body + [CASAL], body + [NOP]], model)
    assert (with_cas.atomics, with_nop.atomics) == (1, 0)
    assert with_cas.cycles_per_iteration == with_nop.cycles_per_iteration


def test_an_lse_atomic_without_lse_is_rejected():
    with pytest.raises(DeviceOutputError, match="88e07c41"):
        mca.block_cycles([[CASAL]], N1)


def test_a_block_ending_in_ret_is_priced():
    ret_block = xnnpack_blocks()[0][4]  # the qs8 GEMM's last block: 4 stores, ret
    [timing] = mca.block_cycles([ret_block], N1)
    assert timing.insns == 5 and timing.cycles_per_iteration > 0


# What LLVM 19 uses for each -mcpu: the prefix of the model's resource names.
MODEL_IN_USE = {
    "cortex-a53": "A53", "cortex-a55": "CortexA55",
    "cortex-a57": "A57", "cortex-a72": "A57", "cortex-a73": "A57", "cortex-a75": "A57",
    "cortex-a76": "A57", "cortex-a78": "A57",
    "neoverse-n1": "N1", "kryo": "Kryo",
}


def test_every_profile_sched_model_has_its_model_listed_here():
    assert set(SCHED_MODELS) <= set(MODEL_IN_USE), set(SCHED_MODELS) - set(MODEL_IN_USE)


@pytest.mark.parametrize("mcpu", sorted(MODEL_IN_USE))
def test_model_in_use(mcpu):
    assert mca.model_in_use(mcpu) == MODEL_IN_USE[mcpu]


def test_cpus_sharing_a_model_price_alike():
    blocks, addresses, mattr = xnnpack_blocks()
    by_cpu = {cpu: mca.block_cycles(blocks, mca.SchedModel(cpu, mattr), addresses)
              for cpu in ("cortex-a57", "cortex-a76", "neoverse-n1")}
    assert by_cpu["cortex-a57"] == by_cpu["cortex-a76"]
    assert by_cpu["cortex-a76"] != by_cpu["neoverse-n1"]


def test_a_missing_tool_names_the_package_and_make_target(tmp_path):
    with pytest.raises(DeviceUnavailableError, match=r"llvm-mca-19 not found.*Debian package llvm-19.*"
                                                     r"make system-deps"):
        mca.find_tool("llvm-mca", search_path=str(tmp_path))


def test_an_unversioned_tool_of_another_llvm_is_refused(tmp_path):
    fake = tmp_path / "llvm-mca"
    fake.write_text("#!/bin/sh\necho 'Debian LLVM version 14.0.6'\n")
    fake.chmod(0o755)
    with pytest.raises(DeviceUnavailableError, match="the llvm-mca on PATH is not LLVM 19"):
        mca.find_tool("llvm-mca", search_path=str(tmp_path))

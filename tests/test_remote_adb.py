"""``device run --target adb://SERIAL`` through a stand-in ``adb`` and ``benchmark_model``,
and the parser of benchmark_model's output.

No phone is attached: the stand-in adb runs push and shell on this machine, with
``/data/local/tmp`` mapped into a temporary directory; the stand-in benchmark_model loads
the model with the host's LiteRT, times it, and prints what the real tool prints.
"""

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.devices.remote.benchmark_output import parse_benchmark_output, refusal
from pipeline.errors import EXIT_BAD_INPUT, EXIT_DEVICE_UNAVAILABLE, EXIT_OK, DeviceOutputError
from tests.helpers.tiny_tflite import UNKNOWN_OP, int8_add_model, unknown_custom_op_model

SERIAL = "emulator-5554"

# As LiteRT's benchmark_model prints it (numbers from a run of a small float model).
REAL_OUTPUT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/mobile-model/m.tflite]
INFO: #threads used for CPU inference: [4]
INFO: Loaded model /data/local/tmp/mobile-model/m.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 4.27635
INFO: Initialized session in 3.281ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=22 first=40532 curr=22187 min=21962 max=40532 avg=23023.9 std=3822

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=22290 curr=22207 min=21947 max=22531 avg=22168.5 std=104

INFO: Inference timings in us: Init: 3281, First inference: 40532, Warmup (avg): 23023.9, Inference (avg): 22168.5
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the \
actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=5.37891 overall=12.0938
INFO: Overall peak memory footprint (MB) via periodic monitoring: 16.2305
"""


def test_parses_benchmark_model_output():
    out = parse_benchmark_output(REAL_OUTPUT)
    t = out.timing
    assert (t.init_s, t.first_inference_s, t.warmup_mean_s, t.mean_s) == (3281e-6, 40532e-6, 23023.9e-6, 22168.5e-6)
    assert (t.warmup_runs, t.runs, t.min_s, t.max_s, t.std_s) == (22, 50, 21947e-6, 22531e-6, 104e-6)
    assert t.peak_rss_kib == round(16.2305 * 1024) and out.threads == 4
    assert (out.init_footprint_mb, out.overall_footprint_mb) == (5.37891, 12.0938)


@pytest.mark.parametrize("broken, message", [
    ("", "no 'Inference timings in us"),
    (REAL_OUTPUT.replace("count=50", "cnt=50"), "1 'count=... avg=... std=...' line"),
    (REAL_OUTPUT.replace("Warmup (avg)", "Warm-up"), "no 'Inference timings in us"),
    (REAL_OUTPUT.replace("min=21947", "min=22300"), "impossible timings"),
])
def test_output_it_cannot_read_raises(broken, message):
    with pytest.raises(DeviceOutputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_benchmark_output(broken)


def test_a_refusal_names_the_op():
    text = (f"ERROR: Encountered unresolved custom op: {UNKNOWN_OP}.\n"
            f"ERROR: Node number 0 ({UNKNOWN_OP}) failed to prepare.\n")
    assert refusal(text).op == UNKNOWN_OP
    assert refusal("Segmentation fault") is None


STAND_IN_ADB = """\
    import os, shutil, subprocess, sys
    root, log = os.environ["FAKE_ADB_ROOT"], os.environ["FAKE_ADB_LOG"]
    with open(log, "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\\n")
    args = sys.argv[1:]
    serial, cmd, rest = args[1], args[2], args[3:]
    if serial != {serial!r}:
        sys.exit(print(f"error: device '{{serial}}' not found", file=sys.stderr) or 1)
    local = lambda p: p.replace("/data/local/tmp", root + "/data/local/tmp")
    if cmd == "get-state":
        print("device")
    elif cmd == "push":
        shutil.copy(rest[0], local(rest[1]))
        print(f"{{rest[0]}}: 1 file pushed.")
    elif cmd == "shell":
        env = dict(os.environ, PATH=root + "/bin:" + os.environ["PATH"])
        sys.exit(subprocess.run(["sh", "-c", local(" ".join(rest))], env=env).returncode)
"""

STAND_IN_BENCHMARK = """\
    import sys, time
    flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    threads, runs, warmup = (int(flags[k]) for k in ("num_threads", "num_runs", "warmup_runs"))
    print("INFO: STARTING!")
    print(f"INFO: Num threads: [{threads}]")
    print(f"INFO: Graph: [{flags['graph']}]")
    from ai_edge_litert.interpreter import Interpreter
    t0 = time.perf_counter()
    try:
        interp = Interpreter(model_path=flags["graph"], num_threads=threads)
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        print(f"ERROR: {e}")
        print("ERROR: Failed to allocate tensors!")
        print("ERROR: Benchmarking failed.")
        sys.exit(1)
    init = (time.perf_counter() - t0) * 1e6

    def loop(n):
        us = []
        for _ in range(n):
            t = time.perf_counter()
            interp.invoke()
            # Whole microseconds, as the tool records them (int64): then min <= avg <= max
            # holds for what it prints even when a run takes under a microsecond.
            us.append(round((time.perf_counter() - t) * 1e6))
        avg = sum(us) / n
        std = (sum((u - avg) ** 2 for u in us) / n) ** 0.5
        print(f"INFO: count={n} first={us[0]} curr={us[-1]} min={min(us)} max={max(us)} "
              f"avg={avg:g} std={std:.0f}")
        return us[0], avg
    first, warm = loop(max(warmup, 1))
    _, avg = loop(runs)
    print(f"INFO: Inference timings in us: Init: {init:.0f}, First inference: {first:.0f}, "
          f"Warmup (avg): {warm:g}, Inference (avg): {avg:g}")
    print("INFO: Memory footprint delta from the start of the tool (MB): init=1.5 overall=2.25")
    print("INFO: Overall peak memory footprint (MB) via periodic monitoring: 30.5")
"""


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@pytest.fixture
def phone(tmp_path, monkeypatch):
    root = tmp_path / "phone"
    (root / "bin").mkdir(parents=True)
    (root / "data/local/tmp/mobile-model").mkdir(parents=True)
    script(root / "bin" / "getprop", 'import sys\nprint({"ro.product.model": "Stand-in Phone"}.get(sys.argv[1], ""))\n')
    tools = tmp_path / "tools"
    tools.mkdir()
    script(tools / "adb", STAND_IN_ADB.format(serial=SERIAL))
    bench = script(tmp_path / "benchmark_model", STAND_IN_BENCHMARK)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("MOBILE_MODEL_REMOTE_CACHE", str(tmp_path / "cache"))
    return {"root": root, "bench": bench, "log": log, "tmp": tmp_path}


def run(model, *extra, serial=SERIAL):
    return CliRunner(mix_stderr=False).invoke(main, ["device", "run", str(model), "--target", f"adb://{serial}",
                                                     "--timed-runs", "7", "--warmup", "2", "-q", *extra])


def test_measures_with_benchmark_model_pushed_once(phone):
    model = int8_add_model(phone["tmp"] / "m.tflite")
    r = run(model, "--benchmark-model", str(phone["bench"]), "--json")
    assert r.exit_code == EXIT_OK, r.stderr
    d = json.loads(r.stdout)
    t = d["timing"]
    assert d["loaded"] and d["runtime"] == "benchmark_model" and len(d["runtime_version"]) == 12
    assert t["runs"] == 7 and t["warmup_runs"] == 2 and t["mean_s"] > 0 and t["peak_rss_kib"] == round(30.5 * 1024)
    assert d["device"]["model"] == "Stand-in Phone" and d["device"]["kernel"] == os.uname().release
    assert d["outputs"] == [] and d["outputs_agree"] is None and d["number_format"] == "int8"
    # The tool is remembered and not pushed again; the model is removed after each run.
    r = run(model, "--cores", "0")
    assert r.exit_code == EXIT_OK, r.stderr
    assert "not compared" in r.stdout and "--cores 0" in r.stdout
    pushes = [line for line in phone["log"].read_text().splitlines() if " push " in line]
    assert sum("benchmark_model" in p for p in pushes) == 1 and len(pushes) == 3
    assert sorted(p.name for p in (phone["root"] / "data/local/tmp/mobile-model").iterdir()) == [
        "benchmark_model", "benchmark_model.sha256"]
    rows = json.loads(CliRunner(mix_stderr=False).invoke(main, ["device", "measured", "--json"]).stdout)
    assert [r["target"] for r in rows] == [f"adb://{SERIAL}"] * 2 and rows[1]["cores"] == "0"


def test_a_model_benchmark_model_refuses_is_a_verdict(phone):
    model = unknown_custom_op_model(phone["tmp"] / "bad.tflite")
    r = run(model, "--benchmark-model", str(phone["bench"]), "--json")
    assert r.exit_code == EXIT_OK, r.stderr
    d = json.loads(r.stdout)
    assert not d["loaded"] and d["verdict"].endswith(f": custom op {UNKNOWN_OP}")


def test_errors_are_one_line(phone):
    model = int8_add_model(phone["tmp"] / "m.tflite")
    r = run(model)
    assert r.exit_code == EXIT_BAD_INPUT and "--benchmark-model PATH" in r.stderr
    r = run(model, "--benchmark-model", str(phone["bench"]), serial="nope")
    assert r.exit_code == EXIT_DEVICE_UNAVAILABLE and "not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    r = run(model, "--random", "2")
    assert r.exit_code == EXIT_BAD_INPUT and "own random inputs" in r.stderr
    r = run(model, "--warmup", "0")
    assert r.exit_code == EXIT_BAD_INPUT and "at least one warm-up" in r.stderr


def test_a_refusal_is_read_from_the_words_where_adb_shell_exits_0(phone, monkeypatch):
    # adb before Android 7 does not pass the command's exit code on.
    adb = phone["tmp"] / "tools" / "adb"
    adb.write_text(adb.read_text().replace("sys.exit(subprocess.run(", "subprocess.run(").replace(
        ".returncode)", ".returncode") + "    sys.exit(0)\n")
    model = unknown_custom_op_model(phone["tmp"] / "bad.tflite")
    r = run(model, "--benchmark-model", str(phone["bench"]), "--json")
    assert r.exit_code == EXIT_OK, r.stderr
    assert json.loads(r.stdout)["verdict"].endswith(f": custom op {UNKNOWN_OP}")

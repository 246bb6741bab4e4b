"""Atomic writes, manifest records, stage caching, the build lock."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import BuildLockedError
from pipeline.store.manifest import Manifest
from pipeline.store.atomic import atomic_path, atomic_write_bytes
from pipeline.store.lock import build_lock
from pipeline.store import memory
from pipeline.store.memory import measure_stage, peak_rss_mb, reset_peak_rss
from pipeline.store.reproduce import code_fingerprint, reproducibility_record


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


def test_stage_runs_once_then_caches(tmp_path):
    m = Manifest(tmp_path)
    out = tmp_path / "a.bin"
    calls = []

    def work():
        calls.append(1)
        atomic_write_bytes(out, b"data")
        return {"x": 1}

    r1 = m.run_stage("s", {"k": 1}, {}, {"out": out}, work, log=lambda s: None)
    r2 = Manifest(tmp_path).run_stage("s", {"k": 1}, {}, {"out": out}, work, log=lambda s: None)
    assert (r1.cached, r2.cached, len(calls)) == (False, True, 1)
    assert r2.metrics == {"x": 1}
    rec = json.loads((tmp_path / "manifest.json").read_text())["stages"]["s"]
    assert rec["outputs"]["out"]["path"] == "a.bin" and len(rec["outputs"]["out"]["sha256"]) == 64
    assert "tensorflow" in rec["versions"] and rec["wall_s"] >= 0


MIB = 2 ** 20


def _allocate(mib):
    """Touches ``mib`` MiB (``b"x" * n`` writes every page; a zeroed buffer may never be resident)."""
    return len(b"x" * (mib * MIB))


def test_stage_records_its_peak_memory_and_a_cached_stage_keeps_it(tmp_path):
    out = tmp_path / "a.bin"

    def work():
        atomic_write_bytes(out, b"data")
        return {}

    r1 = Manifest(tmp_path).run_stage("s", {}, {}, {"out": out}, work, log=lambda s: None)
    rec = json.loads((tmp_path / "manifest.json").read_text())["stages"]["s"]
    assert rec["peak_rss_mb"] > 0 and r1.peak_rss_mb == rec["peak_rss_mb"]
    r2 = Manifest(tmp_path).run_stage("s", {}, {}, {"out": out}, work, log=lambda s: None)
    assert (r2.cached, r2.peak_rss_mb, r2.wall_s) == (True, rec["peak_rss_mb"], rec["wall_s"])


@pytest.mark.skipif(sys.platform != "linux", reason="the peak RSS counter is reset through Linux's /proc")
def test_peak_memory_is_per_stage(tmp_path):
    """A stage that holds 200 MiB reports it; the small stage after it does not inherit that peak."""
    m = Manifest(tmp_path)

    def stage(name, mib):
        def work():
            _allocate(mib)
            atomic_write_bytes(tmp_path / name, b"")
            return {}
        return m.run_stage(name, {}, {}, {"out": tmp_path / name}, work, log=lambda s: None).peak_rss_mb

    big, small = stage("big", 200), stage("small", 1)
    assert big - small > 150, (big, small)
    stages = Manifest(tmp_path).stages
    assert (stages["big"]["peak_rss_mb"], stages["small"]["peak_rss_mb"]) == (big, small)


@pytest.mark.skipif(sys.platform != "linux", reason="the peak RSS counter is reset through Linux's /proc")
def test_measure_stage_outside_a_manifest_stage_and_nested():
    """The data step measures itself with measure_stage; a nested measurement's reset does not
    hide the outer block's earlier peak."""
    with measure_stage() as outer:
        _allocate(200)
        with measure_stage() as inner:
            _allocate(1)
    assert outer.per_stage and inner.per_stage
    assert outer.peak_rss_mb - inner.peak_rss_mb > 150, (outer, inner)
    assert inner.wall_s <= outer.wall_s
    assert set(outer.record()) == {"wall_s", "peak_rss_mb"}


@pytest.mark.skipif(sys.platform != "linux", reason="the peak RSS counter is reset through Linux's /proc")
def test_the_whole_process_peak_survives_the_per_stage_resets():
    """The build's summary records the process's peak: a later stage's reset must not lose an
    earlier stage's 200 MiB (the kernel's own ru_maxrss does lose it)."""
    with measure_stage() as big:
        _allocate(200)
    with measure_stage() as small:
        _allocate(1)
    assert big.peak_rss_mb - small.peak_rss_mb > 150
    assert memory.process_peak_rss_mb() >= big.peak_rss_mb


def test_without_proc_the_peak_is_the_process_peak(monkeypatch):
    """Where /proc is unavailable, the figure is ru_maxrss (the peak since the process started)."""
    monkeypatch.setattr(memory, "CLEAR_REFS", Path("/nonexistent/clear_refs"))
    monkeypatch.setattr(memory, "STATUS", Path("/nonexistent/status"))
    assert reset_peak_rss() is False
    assert peak_rss_mb() > 0
    with measure_stage() as m:
        pass
    assert not m.per_stage and m.peak_rss_mb > 0


@pytest.mark.parametrize("change", ["config", "input", "output_damaged", "output_missing"])
def test_stage_reruns_when_anything_changes(tmp_path, change):
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    inp.write_bytes(b"1")
    calls = []

    def work():
        calls.append(1)
        atomic_write_bytes(out, b"result")
        return {}

    m = Manifest(tmp_path)
    m.run_stage("s", {"k": 1}, {"in": inp}, {"out": out}, work, log=lambda s: None)
    cfg = {"k": 1}
    if change == "config":
        cfg = {"k": 2}
    elif change == "input":
        inp.write_bytes(b"2")
    elif change == "output_damaged":
        out.write_bytes(b"truncated")
    else:
        out.unlink()
    m.run_stage("s", cfg, {"in": inp}, {"out": out}, work, log=lambda s: None)
    assert len(calls) == 2


def test_stage_that_fails_records_nothing(tmp_path):
    m = Manifest(tmp_path)

    def boom():
        raise ValueError("no")

    with pytest.raises(ValueError):
        m.run_stage("s", {}, {}, {"out": tmp_path / "o"}, boom, log=lambda s: None)
    assert "s" not in Manifest(tmp_path).stages


def test_corrupt_manifest_means_nothing_cached(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    assert Manifest(tmp_path).stages == {}


def test_build_lock_excludes_a_second_build(tmp_path):
    with build_lock(tmp_path):
        with pytest.raises(BuildLockedError, match="another build is running in"):
            with build_lock(tmp_path):
                pass
    with build_lock(tmp_path):  # released
        pass


def test_build_lock_removes_temporary_files_of_a_killed_writer(tmp_path):
    keras = tmp_path / "keras"
    keras.mkdir()
    stale = [keras / ".qat.h5.k3j_x9ab.tmp.h5", tmp_path / ".manifest.json.0a1b2c3d.tmp"]
    for p in stale:
        p.write_bytes(b"half-written")
    kept = [keras / "qat.h5", tmp_path / ".lock", keras / ".notes.tmp"]
    for p in kept:
        p.write_bytes(b"x")
    staging = [tmp_path / ".bundle.ab12cd34.tmp", tmp_path / ".bundle.ef56gh78.old"]  # a killed bundle swap
    for d in staging:
        d.mkdir()
        (d / "model.tflite").write_bytes(b"x")
    (tmp_path / "bundle").mkdir()
    with build_lock(tmp_path):
        assert not any(p.exists() for p in stale + staging)
    assert all(p.exists() for p in kept) and (tmp_path / "bundle").is_dir()


# A process that takes the lock, records one stage, redirects fd 2 the way the
# converters do, and is then sent a signal.
_SIGNALLED = """
import os, signal, sys, tempfile, time
from pathlib import Path
from pipeline.store.manifest import Manifest
from pipeline.store.atomic import atomic_write_bytes
from pipeline.store.lock import build_lock
root = Path(sys.argv[1])
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored
with build_lock(root):
    out = root / "a.bin"
    Manifest(root).run_stage("train", {}, {}, {"out": out}, lambda: atomic_write_bytes(out, b"1") or {},
                             log=lambda s: None)
    hidden = tempfile.TemporaryFile()
    os.dup2(hidden.fileno(), 2)
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    time.sleep(30)
print("not reached")
"""


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_in_a_build_exits_at_once_with_one_line(tmp_path, sig, code):
    before = signal.getsignal(signal.SIGINT)
    r = subprocess.run([sys.executable, "-c", _SIGNALLED, str(tmp_path), sig], capture_output=True, text=True,
                       timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == code and r.stdout == ""
    assert r.stderr == (f"error: build interrupted ({sig}); 1 completed stage(s) kept (train) in {tmp_path}; "
                        "no partial artifact is used: run the same command again to resume\n")
    with build_lock(tmp_path):  # the kernel released the lock
        assert "train" in Manifest(tmp_path).stages
    assert signal.getsignal(signal.SIGINT) is before  # restored in this process


def test_reproducibility_record_names_what_a_build_depends_on(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    rec = reproducibility_record(7, True, "0123456789abcdef")
    assert rec["seed"] == 7 and rec["determinism"]["tf_op_determinism"] is True
    assert rec["env"]["PYTHONHASHSEED"] == "0" and "TF_USE_LEGACY_KERAS" in rec["env"]
    libraries = {"tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "numpy"}
    assert libraries <= set(rec["versions"])
    assert rec["code_sha256"] == code_fingerprint() and len(rec["arm_runtime_key"]) == 16
    assert {"system", "machine", "libc"} <= set(rec["platform"]) and rec["python"].count(".") == 2

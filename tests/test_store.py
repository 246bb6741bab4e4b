"""Atomic writes, manifest records, stage caching, the build lock."""

import json

import pytest

from pipeline.store import BuildLockedError, Manifest, atomic_path, atomic_write_bytes, build_lock


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

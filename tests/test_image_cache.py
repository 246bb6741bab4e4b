"""The decoded-image cache and the streaming input path (pipeline.data.cache, .images, train.stream).

Each test has a cache directory of its own (MOBILE_MODEL_IMAGE_CACHE).
"""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import ImageSet, load_dataset
from pipeline.data import cache as image_cache
from pipeline.errors import DataError
from tests.helpers.folders import folder_cfg, make_folder, save


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_MODEL_IMAGE_CACHE", str(tmp_path / "image-cache"))
    return tmp_path / "image-cache"


def _load(root, shape=(16, 16, 3), seed=0, **kw):
    return load_dataset(folder_cfg(root, **kw), shape, seed)


def _chunks(cache: Path):
    return sorted(cache.glob("*/chunk-*.json"))


def test_a_rerun_decodes_nothing_and_reads_the_same_images(tmp_path, own_cache):
    root = make_folder(tmp_path / "data")
    first = _load(root)
    assert first.loading["decoded"] == 30 and first.loading["hashed"] == 30
    again = _load(root)
    assert again.loading["decoded"] == 0 and again.loading["hashed"] == 0
    for split in ("train", "val", "test"):
        (xa, ya), (xb, yb) = first.split(split), again.split(split)
        assert np.array_equal(np.asarray(xa), np.asarray(xb)) and np.array_equal(ya, yb)
        assert not xa.in_memory  # read from the cache files, not held
    assert len(_chunks(own_cache)) == 1


def test_a_grown_class_folder_decodes_only_its_new_files(tmp_path, own_cache):
    root = make_folder(tmp_path / "data")
    _load(root)
    (chunk,) = _chunks(own_cache)
    before = chunk.stat().st_mtime_ns
    for j in range(10, 15):
        save(root / "cat" / f"img{j:03d}.png", Image.new("RGB", (12, 10), (j + 1, 10, 200)))
    grown = _load(root)
    assert grown.loading["hashed"] == 5 and grown.loading["decoded"] == 5
    assert len(_chunks(own_cache)) == 2 and chunk.stat().st_mtime_ns == before
    assert sum(grown.report["available_per_class"].values()) == 35


def test_a_changed_file_is_hashed_and_decoded_again(tmp_path):
    root = make_folder(tmp_path / "data")
    _load(root)
    path = root / "dog" / "img003.png"
    save(path, Image.new("RGB", (12, 10), (250, 250, 250)))
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    changed = _load(root)
    assert changed.loading["hashed"] == 1 and changed.loading["decoded"] == 1


def test_splits_do_not_depend_on_the_cache_state(tmp_path, own_cache):
    root = make_folder(tmp_path / "data")
    cold = _load(root, seed=5)
    warm = _load(root, seed=5)
    other = _load(root, seed=6)
    for split in ("train", "val", "test"):
        assert np.array_equal(np.asarray(cold.split(split)[0]), np.asarray(warm.split(split)[0]))
    # The test split is a function of the seed: the file colours (j + 1) say which files.
    assert not np.array_equal(np.asarray(cold.x_test)[:, 0, 0, 0], np.asarray(other.x_test)[:, 0, 0, 0])


def test_every_bad_file_is_listed_once_and_not_decoded_again(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dog" / "empty.png").write_bytes(b"")
    good = save(tmp_path / "x.jpg", Image.new("RGB", (64, 64), (9, 9, 9)))
    (root / "eel" / "cut.jpg").write_bytes(good.read_bytes()[:200])
    written = []
    for attempt in range(2):
        with pytest.raises(DataError) as err:
            _load(root)
        text = str(err.value)
        assert text.startswith("3 unreadable image files in ")
        assert "cat/broken.jpg: " in text and "dog/empty.png: zero-byte file" in text and "eel/cut.jpg: " in text
        written.append({p: p.stat().st_mtime_ns for p in (tmp_path / "image-cache").rglob("*.json")})
    # The second load hashed nothing and decoded nothing: no index or chunk record was
    # written again, and the errors came from the cache.
    assert written[0] == written[1]
    index = json.loads(next((tmp_path / "image-cache" / "files").glob("*.json")).read_text())
    assert len(index["files"]) == 33


def test_a_decompression_bomb_is_an_error_naming_the_file(tmp_path):
    root = make_folder(tmp_path / "data")
    Image.new("1", (20_000, 20_000)).save(root / "dog" / "huge.png")  # 400 Mpx, a few KiB on disk
    with pytest.raises(DataError) as err:
        _load(root)
    assert "dog/huge.png: 20000x20000 pixels, more than the 89,478,485 decoded at most " \
           "(decompression-bomb guard)" in str(err.value)


def test_a_full_disk_keeps_nothing_partial(tmp_path, own_cache, monkeypatch):
    root = make_folder(tmp_path / "data")
    real = np.lib.format.write_array

    def full(f, arr, **kw):
        f.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", full)
    with pytest.raises(DataError) as err:
        _load(root)
    assert "could not write the image cache in" in str(err.value)
    assert "No space left on device" in str(err.value) and "nothing partial was kept" in str(err.value)
    leftovers = [p.name for p in own_cache.rglob("*") if p.is_file() and p.parent.name != "files"]
    assert leftovers == []
    monkeypatch.setattr(np.lib.format, "write_array", real)
    assert _load(root).loading["decoded"] == 30


def test_a_chunk_without_its_record_or_cut_short_is_not_trusted(tmp_path, own_cache):
    root = make_folder(tmp_path / "data")
    _load(root)
    (record,) = _chunks(own_cache)
    data = record.with_suffix(".npy")
    data.write_bytes(data.read_bytes()[:-10])  # cut short: ignored, decoded again
    assert _load(root).loading["decoded"] == 30
    record.unlink()  # data without its record: ignored
    for other in _chunks(own_cache):
        other.unlink()
    assert _load(root).loading["decoded"] == 30


def test_decoding_on_every_core_gives_the_same_bytes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data", per_class={"a": 40, "b": 40}, size=(40, 30))
    pooled = _load(root, shape=(24, 24, 3))
    assert pooled.loading["workers"] == min(2, image_cache._cores()) or image_cache._cores() == 1
    monkeypatch.setenv("MOBILE_MODEL_IMAGE_CACHE", str(tmp_path / "serial"))
    monkeypatch.setattr(image_cache, "POOL_MIN_FILES", 10_000)
    serial = _load(root, shape=(24, 24, 3))
    assert serial.loading["workers"] == 1
    assert np.array_equal(np.asarray(pooled.x_train), np.asarray(serial.x_train))


def test_large_jpegs_decode_at_reduced_scale_to_the_same_picture(tmp_path):
    grad = np.linspace(0, 255, 1600).astype(np.uint8)
    img = Image.fromarray(np.stack([np.tile(grad, (1200, 1))] * 3, axis=-1), "RGB")
    path = save(tmp_path / "big.jpg", img, quality=95)
    arr, mode, conv = image_cache.decode_file(path, (96, 96, 3), "resize")
    assert arr.shape == (96, 96, 3) and arr.dtype == np.uint8 and mode == "RGB" and conv == []
    expected = np.linspace(0, 255, 96)
    assert np.abs(arr[48, :, 0].astype(float) - expected).max() < 8  # a left-to-right ramp, as drawn


def test_image_set_reads_like_an_array_and_shards_without_overlap():
    x = (np.arange(10 * 4 * 4 * 3) % 256).astype(np.uint8).reshape(10, 4, 4, 3)
    s = ImageSet.from_array(x)
    assert s.shape == (10, 4, 4, 3) and len(s) == 10 and s.dtype == np.float32
    assert s[2:5].dtype == np.float32 and np.allclose(s[2:5], x[2:5] / 255, atol=1e-7)
    assert np.allclose(s[:, 1:3, 0], x[:, 1:3, 0] / 255, atol=1e-7) and np.allclose(s[7], x[7] / 255)
    shards = [s.shard(i, 3) for i in range(3)]
    assert sorted(len(p) for p in shards) == [3, 3, 4]
    seen = np.concatenate([np.asarray(p) for p in shards])
    assert len({row.tobytes() for row in seen}) == 10
    with pytest.raises(IndexError):
        s[np.array([10])]


def test_each_worker_reads_its_own_share_of_an_epoch(tmp_path):
    from pipeline.train.stream import train_dataset

    root = make_folder(tmp_path / "data", per_class={"a": 20, "b": 20})
    s = _load(root, shape=(8, 8, 3))
    order = np.random.default_rng(0).permutation(len(s.x_train))
    reads = []
    for worker in range(2):
        batches = list(train_dataset(s.x_train, s.y_train, order, 8, share=(worker, 2)).as_numpy_iterator())
        assert all(len(xb) <= 4 for xb, _ in batches)  # the global batch of 8, split over 2 workers
        reads.append({row.tobytes() for xb, _ in batches for row in xb})
    assert not reads[0] & reads[1]
    assert len(reads[0]) == len(reads[1]) == len(order) // 2


def test_worker_share_reads_tf_config(monkeypatch):
    from pipeline.train.stream import worker_share

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert worker_share() == (0, 1)
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert worker_share() == (1, 2)


@pytest.mark.integration
def test_two_local_workers_each_read_their_own_half(tmp_path):
    """MultiWorkerMirroredStrategy over two processes on 127.0.0.1 (TF_CONFIG): each
    worker reads only its share of the training images, the two shares are disjoint."""
    import socket
    import subprocess
    import sys

    root = make_folder(tmp_path / "data", per_class={"a": 30, "b": 30}, size=(40, 40))
    _load(root, shape=(32, 32, 3))  # decoded once, before the workers start
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    child = Path(__file__).with_name("multiworker_child.py")
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, str(child), str(root), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    reads = [json.loads((tmp_path / f"read-{i}.json").read_text()) for i in range(2)]
    assert all(r["replicas"] == 2 for r in reads)
    halves = [set(r["read"]) for r in reads]
    assert halves[0] and halves[1] and not halves[0] & halves[1]
    # Each read its half of the training images (and the full validation and test splits,
    # read through their own ImageSets, which are not recorded here).
    assert len(halves[0]) == len(halves[1]) == reads[0]["train"] // 2


def test_decoding_processes_work_from_a_script_without_a_main_guard(tmp_path):
    """The decoding processes are fresh interpreters: a user's plain script that calls the
    loader (no ``if __name__ == "__main__"``) is not run again by them."""
    import subprocess
    import sys

    root = make_folder(tmp_path / "data", per_class={"a": 40, "b": 40}, size=(40, 30))
    script = tmp_path / "plain.py"
    script.write_text(
        "from pipeline.data import load_dataset\n"
        "from pipeline.recipe.schema import DataConfig\n"
        f"s = load_dataset(DataConfig(dataset='folder', path={str(root)!r}), (24, 24, 3), 0)\n"
        "print('workers', s.loading['workers'], 'decoded', s.loading['decoded'])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"workers {min(2, image_cache._cores())} decoded 80"

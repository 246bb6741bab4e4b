"""The decoded-image cache: every image file decoded once, at the model's input size, as uint8.

A folder of photos is read in three steps:

1. **Index** (:func:`index_files`): each file's content hash (sha256), taken again
   only for files whose size or modification time changed since the last build
   (the folder's file index, ``files/<folder key>.json``).
2. **Decode** (:func:`decode_missing`): only files whose content hash is not yet in
   the cache for these settings (input size, channels, fit, decoder version) are
   decoded, on every core (a decoding process per core,
   :mod:`pipeline.data.decode_worker`), up to CHUNK files a task; each task writes one
   chunk, ``<settings>/chunk-<id>.npy`` (uint8 NHWC) and then
   ``chunk-<id>.json`` (the content hash, source mode and conversions of every
   image, and the error of every file that could not be decoded). Both are written
   to a temporary name and renamed: a chunk without its ``.json`` is never read,
   so a full disk or a killed build leaves nothing that a later build trusts.
3. **Read** (:class:`Store`): the chunk records say where each content hash lives;
   :class:`pipeline.data.images.ImageSet` reads images from there on demand.

A class folder that grows adds one chunk of its new files; a rerun with nothing
changed stats the files and reads the chunk records, and decodes nothing. Files
that failed to decode are remembered by content hash, so a rerun lists them again
without decoding them again.

Location: ``$MOBILE_MODEL_IMAGE_CACHE``, else ``$MOBILE_MODEL_CACHE/images`` (default
``~/.cache/mobile-model/images``). At 224x224x3 each image takes 147 KiB.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data.images import ChunkFile, ImageSet
from pipeline.data.resize import channel_note, fit_images
from pipeline.errors import DataError, Log
from pipeline.store.atomic import atomic_path, atomic_write_text, json_hash, short_hash
from pipeline.vocabulary import FIT_MODES, check_implements


#: Bumped whenever decoding changes what a cached image holds (it is part of the cache key).
DECODER_VERSION = 1
#: Images per chunk file and per decoding task (about 37 MiB at 224x224x3).
CHUNK = 256
#: Largest image decoded, in pixels (Pillow's own default warning level, 89.5 Mpx: a
#: 48 Mpx phone photo passes). The header is checked before any pixel is decoded, so a
#: 20,000 x 20,000 PNG is an error naming the file, not an out-of-memory kill.
MAX_PIXELS = 89_478_485
#: Below this many files to decode, decoding stays in this process (no pool start-up).
POOL_MIN_FILES = 64
#: Colour behind transparent pixels: black, the same as ``fit: pad`` borders.
ALPHA_BACKGROUND = "black"


def cache_root() -> Path:
    """``$MOBILE_MODEL_IMAGE_CACHE`` if set (a disk with room for the decoded photos), else
    ``$MOBILE_MODEL_CACHE/images`` (default ``~/.cache/mobile-model/images``)."""
    own = os.environ.get("MOBILE_MODEL_IMAGE_CACHE")
    if own:
        return Path(own).expanduser().resolve()
    base = os.environ.get("MOBILE_MODEL_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "mobile-model"
    return (root.expanduser() / "images").resolve()


def settings_key(shape: Tuple[int, int, int], fit: str) -> str:
    """The cache directory name of images decoded to ``shape`` by ``fit``."""
    h, w, c = shape
    return f"{h}x{w}x{c}-{fit}-{json_hash({'shape': [h, w, c], 'fit': fit, 'decoder': DECODER_VERSION}, 12)}"


# Step 1: the file index --------------------------------------------------------------------

def index_files(root: Path, paths: Sequence[Path],
                log: Log = lambda m: None) -> Tuple[List[Optional[str]], int, Dict[int, str]]:
    """Content hash (sha256 hex) of each of ``paths``, hashing only new or changed files.

    Returns:
        (hashes in the order of ``paths``, None for a file that cannot be read; how many
        files were hashed; ``{position: why}`` of the files that cannot be read).
    """
    index_path = cache_root() / "files" / f"{short_hash(str(root.resolve()), 24)}.json"
    try:
        known = json.loads(index_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    rels = [p.relative_to(root).as_posix() for p in paths]
    out: List[Optional[str]] = [None] * len(paths)
    todo, bad = [], []
    for i, p in enumerate(paths):
        try:
            st = p.stat()
        except OSError as exc:
            bad.append((i, _os_reason(p, exc)))
            continue
        rec = known.get(rels[i])
        if isinstance(rec, list) and len(rec) == 3 and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
            out[i] = rec[2]
        else:
            todo.append((i, st.st_size, st.st_mtime_ns))
    if todo:
        log(f"[data] hashing {len(todo):,} new or changed file(s)")
        with ThreadPoolExecutor(max_workers=4) as pool:
            for (i, size, mtime), digest in zip(todo, pool.map(lambda t: _hash_file(paths[t[0]]), todo)):
                if isinstance(digest, OSError):
                    bad.append((i, _os_reason(paths[i], digest)))
                else:
                    out[i] = digest
                    known[rels[i]] = [size, mtime, digest]
    if todo:
        present = set(rels)
        kept = {k: v for k, v in known.items() if k in present}
        try:
            atomic_write_text(index_path, json.dumps({"root": str(root.resolve()), "files": kept}))
        except OSError as exc:  # the index only saves time: a build goes on without it
            log(f"[data] warning: could not save the file index ({exc}); the next build hashes again")
    return out, len(todo), dict(bad)


def _hash_file(path: Path):
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError as exc:
        return exc


def _os_reason(path: Path, exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "cannot read (permission denied)"
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (to {os.readlink(path)})"
    return f"cannot read ({exc.strerror or exc})"


# Step 3: the store of decoded chunks -------------------------------------------------------

@dataclass
class Store:
    """The decoded images of one settings key: where each content hash lives."""

    directory: Path
    shape: Tuple[int, int, int]
    chunks: List[ChunkFile] = field(default_factory=list)
    where: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    meta: Dict[str, Tuple[str, List[str]]] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, shape: Tuple[int, int, int], fit: str) -> "Store":
        store = cls(cache_root() / settings_key(shape, fit), tuple(shape))
        store.reload()
        return store

    def reload(self) -> None:
        """Reads every complete chunk record (a chunk whose data file is missing or short is ignored)."""
        self.chunks, self.where, self.meta, self.errors = [], {}, {}, {}
        if not self.directory.is_dir():
            return
        row_bytes = int(np.prod(self.shape))
        for rec_path in sorted(self.directory.glob("chunk-*.json")):
            try:
                rec = json.loads(rec_path.read_text())
                keys, offset = rec["keys"], int(rec["offset"])
                data = rec_path.with_suffix(".npy")
                if data.stat().st_size != offset + len(keys) * row_bytes:
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if keys:
                n = len(self.chunks)
                self.chunks.append(ChunkFile(str(data), offset, len(keys), self.shape))
                for row, key in enumerate(keys):
                    self.where.setdefault(key, (n, row))
            for key, m in rec.get("meta", {}).items():
                self.meta.setdefault(key, (m[0], list(m[1])))
            for key, why in rec.get("errors", {}).items():
                if key not in self.where:
                    self.errors.setdefault(key, why)

    def known(self, key: str) -> bool:
        return key in self.where or key in self.errors

    def images(self, keys: Sequence[str]) -> ImageSet:
        """The decoded images of ``keys`` (every key must be in the store)."""
        refs = np.array([self.where[k] for k in keys], np.int64).reshape(-1, 2)
        return ImageSet.from_chunks(self.shape, self.chunks, refs, keys)


# Step 2: decoding --------------------------------------------------------------------------

def decode_missing(store: Store, items: Sequence[Tuple[Path, str]], fit: str, log: Log = lambda m: None,
                   workers: Optional[int] = None) -> Dict[str, float]:
    """Decodes the files of ``items`` (path, content hash) whose hash the store lacks.

    Returns:
        ``{"decoded": files, "seconds": wall time, "images_per_s": rate, "workers": n}``.

    Raises:
        DataError: the cache cannot be written (disk full, permissions): nothing partial is kept.
    """
    seen, todo = set(), []
    for path, key in items:
        if not store.known(key) and key not in seen:
            seen.add(key)
            todo.append((str(path), key))
    if not todo:
        return {"decoded": 0, "seconds": 0.0, "images_per_s": 0.0, "workers": 0}
    store.directory.mkdir(parents=True, exist_ok=True)
    cores = 1 if len(todo) < POOL_MIN_FILES else (workers or _cores())
    # At most CHUNK files a task, and at least two tasks a process when there are few files.
    size = CHUNK if cores == 1 else min(CHUNK, max(16, -(-len(todo) // (2 * cores))))
    tasks = [todo[s:s + size] for s in range(0, len(todo), size)]
    n_workers = min(len(tasks), cores)
    log(f"[data] decoding {len(todo):,} image(s) to {store.shape[0]}x{store.shape[1]}x{store.shape[2]} "
        f"({fit}) on {n_workers} process(es) into {store.directory}")
    t0 = time.perf_counter()
    try:
        if n_workers == 1:
            for task in tasks:
                decode_chunk(task, store.shape, fit, str(store.directory))
        else:
            _decode_in_workers(tasks, n_workers, store, fit, len(todo), t0, log)
    except OSError as exc:
        raise DataError(f"could not write the image cache in {store.directory} ({exc.strerror or exc}); "
                        "nothing partial was kept: free space (or set MOBILE_MODEL_IMAGE_CACHE) and rerun") from None
    seconds = time.perf_counter() - t0
    store.reload()
    return {"decoded": len(todo), "seconds": round(seconds, 3),
            "images_per_s": round(len(todo) / seconds, 1) if seconds else 0.0, "workers": n_workers}


def _decode_in_workers(tasks, n_workers: int, store: Store, fit: str, total: int, t0: float, log: Log) -> None:
    """Runs the tasks in ``n_workers`` decoding processes (:mod:`pipeline.data.decode_worker`),
    task i in process i mod n; logs progress about every 5 s.

    Raises:
        OSError: a process could not write its chunk (the reason it gave).
    """
    procs = []
    for i in range(n_workers):
        job = {"tasks": tasks[i::n_workers], "shape": list(store.shape), "fit": fit,
               "directory": str(store.directory)}
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.data.decode_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_worker_env())
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        procs.append(proc)
    done, last, failures = [0], [0.0], []
    lock = threading.Lock()

    def follow(proc) -> None:
        for line in proc.stdout:
            if line.startswith("done "):
                with lock:
                    done[0] += int(line.split()[1])
                    now = time.perf_counter()
                    if now - last[0] > 5 or done[0] == total:
                        last[0] = now
                        log(f"[data] decoded {done[0]:,}/{total:,} images ({done[0] / (now - t0):.0f}/s)")
            elif line.startswith("error "):
                failures.append(line[6:].strip())

    readers = [threading.Thread(target=follow, args=(p,), daemon=True) for p in procs]
    try:
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if failures:
        raise OSError(failures[0])
    broken = [p for p in procs if p.returncode != 0]
    if broken:
        err = broken[0].stderr.read().strip().splitlines()
        raise RuntimeError(f"an image decoding process failed (exit {broken[0].returncode}): "
                           f"{err[-1] if err else 'no message'}")


def _worker_env() -> Dict[str, str]:
    """This environment, with this package importable in the child whatever its working directory."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def decode_chunk(task: Sequence[Tuple[str, str]], shape, fit: str, directory: str) -> int:
    """Decodes one task's files and writes its chunk (data first, record last). Returns the file count."""
    Image.MAX_IMAGE_PIXELS = None  # our own check (MAX_PIXELS) runs first, naming the file
    keys, meta, errors, images = [], {}, {}, []
    for path, key in task:
        try:
            arr, mode, conv = decode_file(Path(path), shape, fit)
        except DataError as exc:
            errors[key] = str(exc)
            continue
        keys.append(key)
        meta[key] = [mode, conv]
        images.append(arr)
    chunk_id = short_hash("\n".join(k for _, k in task), 20)
    base = Path(directory) / f"chunk-{chunk_id}"
    data = np.stack(images) if images else np.zeros((0, *shape), np.uint8)
    with atomic_path(base.with_suffix(".npy"), suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array(f, data, allow_pickle=False)
    with open(base.with_suffix(".npy"), "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        offset = f.tell()
    atomic_write_text(base.with_suffix(".json"),
                      json.dumps({"keys": keys, "offset": offset, "meta": meta, "errors": errors}))
    return len(task)


_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_file(path: Path, shape: Tuple[int, int, int], fit: str) -> Tuple[np.ndarray, str, List[str]]:
    """One image file -> (uint8 array of ``shape``, source mode, conversions made).

    Grey, RGB, palette and 16-bit grey are read; transparency is composited over
    black (ALPHA_BACKGROUND); JPEG EXIF rotation is applied. Large JPEGs are
    decoded at a reduced scale (never below the input size) before the resize.

    Raises:
        DataError: saying only what is wrong with the file; the caller names it.
    """
    h, w, c = shape
    try:
        if path.stat().st_size == 0:
            raise DataError("zero-byte file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise DataError(f"{width}x{height} pixels, more than the {MAX_PIXELS:,} decoded at most "
                                    "(decompression-bomb guard): downscale it or remove it")
                mode = im.mode
                if im.format == "JPEG" and mode in ("L", "RGB"):
                    im.draft(mode, (max(h, w), max(h, w)))
                im.load()
                conv: List[str] = []
                if im.getexif().get(0x0112, 1) not in (1, None):  # EXIF Orientation
                    im = ImageOps.exif_transpose(im)
                    conv.append("EXIF orientation applied")
                if mode in _SIXTEEN_BIT:
                    return _sixteen_bit(im, shape, fit, conv), mode, conv
                return _eight_bit(im, shape, fit, conv), mode, conv
    except PermissionError:
        raise DataError("cannot read (permission denied)") from None
    except UnidentifiedImageError:
        raise DataError("not a readable image (unknown format)") from None
    except _PIL_ERRORS as exc:
        raise DataError(f"corrupt image ({exc})") from None


def _sixteen_bit(im: Image.Image, shape, fit: str, conv: List[str]) -> np.ndarray:
    # Keep the full 0..65535 range instead of Pillow's 8-bit clip; fit in float, then round.
    conv.append("16-bit grey scaled from 0..65535")
    arr = np.clip(np.asarray(im).astype(np.float32) / np.float32(65535), 0, 1)[None, ..., None]
    conv.extend(channel_note(1, shape[2]))
    out = fit_images(arr, shape, fit)[0]
    return np.round(out * 255).astype(np.uint8)


def _eight_bit(im: Image.Image, shape, fit: str, conv: List[str]) -> np.ndarray:
    h, w, c = shape
    mode = im.mode
    if mode in ("P", "PA"):
        conv.append("palette expanded")
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        conv.append(f"{mode} converted to RGB")
        im = im.convert("RGB")
    if im.mode in ("LA", "RGBA"):
        conv.append(f"alpha composited over {ALPHA_BACKGROUND}")
        arr = np.asarray(im).astype(np.uint16)
        colour = (arr[..., :-1] * arr[..., -1:] + 127) // 255  # over black: colour x alpha
        im = Image.fromarray(colour.astype(np.uint8).squeeze(-1) if colour.shape[-1] == 1
                             else colour.astype(np.uint8), "L" if im.mode == "LA" else "RGB")
    src = 1 if im.mode == "L" else 3
    conv.extend(channel_note(src, c))
    if src == 3 and c == 1:
        im = im.convert("L")  # ITU-R 601 luma, before the resize (a third of the work)
    im = _fit(im, h, w, fit)
    arr = np.asarray(im, np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1 and c == 3:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _fit(im: Image.Image, h: int, w: int, fit: str) -> Image.Image:
    """``resize`` stretches to h x w; ``pad`` keeps the aspect ratio (whole-factor pixel
    replication when enlarging, else a triangle-filter shrink) on a black canvas.
    The same rules as :func:`pipeline.data.resize.fit_images`, in Pillow."""
    return PIL_FITS[fit](im, h, w)


def _pil_resize(im: Image.Image, h: int, w: int) -> Image.Image:
    return im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)


def _pil_pad(im: Image.Image, h: int, w: int) -> Image.Image:
    w0, h0 = im.size
    k = min(h // h0, w // w0)
    if k >= 1:
        y = im.resize((w0 * k, h0 * k), Image.NEAREST) if k > 1 else im
    else:
        s = min(h / h0, w / w0)
        y = im.resize((max(1, round(w0 * s)), max(1, round(h0 * s))), Image.BILINEAR)
    canvas = Image.new(im.mode, (w, h), 0)
    canvas.paste(y, ((w - y.width) // 2, (h - y.height) // 2))
    return canvas


#: Fit mode -> how a Pillow image is fitted (the same rules as pipeline.data.resize.FITS).
PIL_FITS = {"resize": _pil_resize, "pad": _pil_pad}
check_implements(FIT_MODES, PIL_FITS, "pipeline.data.cache")


# Messages ----------------------------------------------------------------------------------

#: How many offending files an error message lists before "... and N more".
MAX_LISTED = 10


def listing(head: str, items: List[str]) -> str:
    lines = [f"  {s}" for s in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return head + ":\n" + "\n".join(lines)


def shown(name: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 appear as ``\\xff``,
    control characters as ``\\t``, ``\\n``, ..."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)

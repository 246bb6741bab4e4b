"""The ``folder`` data set: the user's images, one sub-folder per class.

Scanning (what is a class, what is skipped) and decoding (any size and mode to
float32 in [0, 1]) are here; each class is cut 70/15/15 into train/val/test.
"""

import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data.resize import channel_note, fit_images
from pipeline.data.splits import (SPLITS, TEST_FRACTION, VAL_FRACTION, Splits, assemble, check_input_shape, partition,
                                  requested_counts, stream_rng, take_stratified)
from pipeline.errors import ConfigError, DataError
from pipeline.recipe.schema import DataConfig

#: File types the ``folder`` data set reads; anything else is skipped and reported.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
#: Colour behind transparent pixels: black, the same as ``fit: pad`` borders.
ALPHA_BACKGROUND = "black"
#: How many offending files an error message lists before "... and N more".
MAX_LISTED = 10


def load_folder(cfg: DataConfig, input_shape: Tuple[int, int, int], seed: int) -> Splits:
    """Your images: one sub-folder per class of .jpg/.jpeg/.png files under data.path.

    Class names are the sorted sub-folder names. Each class is cut 70/15/15 into
    train/val/test (so a class needs at least 3 images). Images of any size and
    mode are converted to the input shape: grey, RGB, palette, 16-bit grey;
    transparency is composited over black (ALPHA_BACKGROUND); JPEG EXIF rotation
    is applied. Hidden files and files of other types are skipped and listed in
    the report. Empty class folders, zero-byte and corrupt images are errors
    that list the offending files.
    """
    input_shape = check_input_shape(input_shape)
    if not cfg.path:
        raise ConfigError("data.path: the 'folder' data set needs a path to a directory "
                          "with one sub-folder per class")
    root = Path(cfg.path)
    files, skipped = _scan_folder(root)
    labels = tuple(files)
    y_all = np.concatenate([np.full(len(v), i, np.int64) for i, v in enumerate(files.values())])
    paths = [p for v in files.values() for p in v]
    pools = dict(zip(SPLITS, partition(y_all, stream_rng(seed, "partition"), VAL_FRACTION, TEST_FRACTION)))
    taken = {name: take_stratified(pools[name], y_all, getattr(cfg, f"{name}_samples"), stream_rng(seed, name), name)
             for name in SPLITS}
    wanted = {int(i) for idx in taken.values() for i in idx}

    # Decode every image (a corrupt file is reported whether or not it was drawn)
    # but keep only the drawn ones.
    h, w, c = input_shape
    images: Dict[int, np.ndarray] = {}
    bad: List[str] = []
    modes: Counter = Counter()
    notes: Counter = Counter()
    for i, path in enumerate(paths):
        rel = _shown(path.relative_to(root).as_posix())
        try:
            arr, mode, conv = _decode_image(path)
        except DataError as exc:  # one bad file: listed with the others below
            bad.append(f"{rel}: {exc}")
            continue
        if i in wanted:
            modes[mode] += 1
            notes.update(conv)
            notes.update(channel_note(arr.shape[2], c))
            images[i] = fit_images(arr[None], input_shape, cfg.fit)[0]
    if bad:
        raise DataError(_listing(f"{len(bad)} unreadable image file{'s' if len(bad) > 1 else ''} "
                                 f"in {root}", bad))
    parts = {}
    for name in SPLITS:
        idx = taken[name]
        x = np.stack([images[int(i)] for i in idx]) if len(idx) else np.zeros((0, h, w, c), np.float32)
        parts[name] = (x, y_all[idx])
    report = {
        "source": str(root),
        "requested": requested_counts(cfg),
        "available": {k: len(v) for k, v in pools.items()},
        "available_per_class": {lab: len(v) for lab, v in files.items()},
        "fit": cfg.fit,
        "source_modes": dict(sorted(modes.items())),
        "converted": dict(sorted(notes.items())),
        "alpha_background": ALPHA_BACKGROUND,
        "skipped": skipped,
    }
    return assemble("folder", parts, labels, input_shape, report)


def _scan_folder(root: Path) -> Tuple[Dict[str, List[Path]], List[str]]:
    """Class name -> sorted image paths, and the skipped entries ("rel: reason")."""
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a directory: {root}")
    skipped: List[str] = []
    class_dirs: List[Path] = []
    loose_images = 0
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skipped.append(f"{_shown(entry.name)}: hidden")
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            loose_images += entry.suffix.lower() in IMAGE_SUFFIXES
            skipped.append(f"{_shown(entry.name)}: not in a class folder")
    if not class_dirs:
        extra = (f"; found {loose_images} image(s) directly in it: move them into "
                 "one sub-folder per class" if loose_images else "")
        raise DataError(f"no class folders in {root}: expected one sub-folder per class, "
                        f"each holding {_suffix_text()} images{extra}")
    odd = [_shown(d.name) for d in class_dirs if _shown(d.name) != d.name]
    if odd:
        # Class names become labels.txt lines and JSON strings: they must be printable UTF-8.
        raise DataError(_listing(f"class folder names in {root} that are not printable UTF-8 text "
                                 "(rename them; they become the model's labels)", odd))
    if len(class_dirs) == 1:
        raise DataError(f"data directory {root} has only one class folder "
                        f"({class_dirs[0].name!r}); needs at least 2 classes")
    files: Dict[str, List[Path]] = {}
    for d in class_dirs:
        found = []
        for entry in sorted(d.iterdir(), key=lambda p: p.name):
            rel = _shown(entry.relative_to(root).as_posix())
            if entry.name.startswith("."):
                skipped.append(f"{rel}: hidden")  # .DS_Store, macOS ._name.jpg forks
            elif entry.is_dir():
                skipped.append(f"{rel}: nested folder (not read)")
            elif entry.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(f"{rel}: not {_suffix_text()}")
            else:
                found.append(entry)
        files[d.name] = found
    empty = [name for name, v in files.items() if not v]
    if empty:
        names = ", ".join(repr(n) for n in empty)
        raise DataError(f"empty class folder{'s' if len(empty) > 1 else ''} in {root}: {names} "
                        f"(no {_suffix_text()} images)")
    few = [f"{name!r} ({len(v)})" for name, v in files.items() if len(v) < 3]
    if few:
        raise DataError(f"too few images in class folder(s) of {root}: {', '.join(few)}; each "
                        "class needs at least 3 (one each for train, val and test)")
    return files, skipped


def _shown(name: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 appear as ``\\xff``,
    control characters as ``\\t``, ``\\n``, ..."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _suffix_text() -> str:
    return ", ".join(IMAGE_SUFFIXES[:-1]) + " or " + IMAGE_SUFFIXES[-1]


_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _decode_image(path: Path) -> Tuple[np.ndarray, str, List[str]]:
    """One image file -> (float32 HxWx{1,3} in [0, 1], source mode, conversions).

    Raises:
        DataError: saying only what is wrong with the file; the caller names it.
    """
    try:
        if path.is_symlink() and not path.exists():
            raise DataError(f"broken symbolic link (to {os.readlink(path)})")
        if path.stat().st_size == 0:
            raise DataError("zero-byte file")
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            conv: List[str] = []
            if im.getexif().get(0x0112, 1) not in (1, None):  # EXIF Orientation
                im = ImageOps.exif_transpose(im)
                conv.append("EXIF orientation applied")
            return _image_to_array(im, conv), mode, conv
    except PermissionError:
        raise DataError("cannot read (permission denied)") from None
    except UnidentifiedImageError:
        raise DataError("not a readable image (unknown format)") from None
    except _PIL_ERRORS as exc:
        raise DataError(f"corrupt image ({exc})") from None


def _image_to_array(im: Image.Image, conv: List[str]) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey PNGs: keep the full 0..65535 range instead of Pillow's 8-bit clip.
        conv.append("16-bit grey scaled from 0..65535")
        arr = np.asarray(im).astype(np.float32) / np.float32(65535)
        return np.clip(arr, 0, 1)[..., None]
    if mode == "P" or mode == "PA":
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
    arr = np.asarray(im, dtype=np.float32) / np.float32(255)
    if arr.ndim == 2:
        arr = arr[..., None]
    if im.mode in ("LA", "RGBA"):
        conv.append(f"alpha composited over {ALPHA_BACKGROUND}")
        arr = arr[..., :-1] * arr[..., -1:]  # over black: colour x alpha
    return arr

def _listing(head: str, items: List[str]) -> str:
    lines = [f"  {s}" for s in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return head + ":\n" + "\n".join(lines)

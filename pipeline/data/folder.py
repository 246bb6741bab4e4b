"""The ``folder`` data set: the user's images, one sub-folder per class.

Scanning (what is a class, what is skipped) is here; decoding (any size and mode to
uint8 at the input size, once per file) is :mod:`pipeline.data.cache`. Each class is
cut 70/15/15 into train/val/test.
"""

from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from pipeline.data.cache import ALPHA_BACKGROUND, Store, decode_missing, index_files, listing, shown
from pipeline.data.splits import (SPLITS, TEST_FRACTION, VAL_FRACTION, Splits, assemble, check_input_shape, partition,
                                  requested_counts, stream_rng, take_stratified)
from pipeline.errors import ConfigError, DataError, Log
from pipeline.recipe.schema import DataConfig

#: File types the ``folder`` data set reads; anything else is skipped and reported.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def load_folder(cfg: DataConfig, input_shape: Tuple[int, int, int], seed: int,
                log: Log = lambda m: None) -> Splits:
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

    # Hash new or changed files, decode those the cache lacks (every core), then list
    # every file that could not be decoded, drawn or not, in one error.
    keys, hashed, unreadable = index_files(root, paths, log)
    store = Store.open(input_shape, cfg.fit)
    decoding = decode_missing(store, [(p, k) for p, k in zip(paths, keys) if k is not None], cfg.fit, log)
    why = {i: unreadable.get(i) or store.errors.get(k) for i, k in enumerate(keys)}
    bad = [f"{shown(paths[i].relative_to(root).as_posix())}: {w}" for i, w in why.items() if w]
    if bad:
        raise DataError(listing(f"{len(bad)} unreadable image file{'s' if len(bad) > 1 else ''} "
                                f"in {root}", bad))
    modes: Counter = Counter()
    notes: Counter = Counter()
    for i in sorted(wanted):
        mode, conv = store.meta.get(keys[i], ("?", []))
        modes[mode] += 1
        notes.update(conv)
    parts = {name: (store.images([keys[int(i)] for i in taken[name]]), y_all[taken[name]]) for name in SPLITS}
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
    loading = {"cache": str(store.directory), "files": len(paths), "hashed": hashed, **decoding}
    return assemble("folder", parts, labels, input_shape, report, loading)


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
            skipped.append(f"{shown(entry.name)}: hidden")
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            loose_images += entry.suffix.lower() in IMAGE_SUFFIXES
            skipped.append(f"{shown(entry.name)}: not in a class folder")
    if not class_dirs:
        extra = (f"; found {loose_images} image(s) directly in it: move them into "
                 "one sub-folder per class" if loose_images else "")
        raise DataError(f"no class folders in {root}: expected one sub-folder per class, "
                        f"each holding {_suffix_text()} images{extra}")
    odd = [shown(d.name) for d in class_dirs if shown(d.name) != d.name]
    if odd:
        # Class names become labels.txt lines and JSON strings: they must be printable UTF-8.
        raise DataError(listing(f"class folder names in {root} that are not printable UTF-8 text "
                                 "(rename them; they become the model's labels)", odd))
    if len(class_dirs) == 1:
        raise DataError(f"data directory {root} has only one class folder "
                        f"({class_dirs[0].name!r}); needs at least 2 classes")
    files: Dict[str, List[Path]] = {}
    for d in class_dirs:
        found = []
        for entry in sorted(d.iterdir(), key=lambda p: p.name):
            rel = shown(entry.relative_to(root).as_posix())
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


def _suffix_text() -> str:
    return ", ".join(IMAGE_SUFFIXES[:-1]) + " or " + IMAGE_SUFFIXES[-1]

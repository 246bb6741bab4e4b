"""Tests of the ``folder`` data set: layouts it refuses, images it reads and converts.

Class folders and images are generated in tmp dirs (``tests/helpers/folders.py``, also
used by the loader table of ``tests/test_data.py``).
"""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import Splits, load_dataset
from pipeline.errors import ConfigError, DataError
from pipeline.recipe.schema import DataConfig
from tests.helpers.folders import folder_cfg, make_folder, save


def folder_error(root: Path) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(folder_cfg(root), (32, 32, 3), 0)
    return str(err.value)



# -- folder: errors ----------------------------------------------------------------


def test_folder_missing_directory(tmp_path):
    assert folder_error(tmp_path / "nope") == f"data directory not found: {tmp_path / 'nope'}"


def test_folder_path_is_a_file(tmp_path):
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    assert folder_error(f) == f"data path is not a directory: {f}"


def test_folder_without_class_folders(tmp_path):
    assert folder_error(tmp_path) == (
        f"no class folders in {tmp_path}: expected one sub-folder per class, "
        "each holding .jpeg, .jpg or .png images")
    save(tmp_path / "a.png", Image.new("L", (4, 4)))
    save(tmp_path / "b.jpg", Image.new("L", (4, 4)))
    assert folder_error(tmp_path) == (
        f"no class folders in {tmp_path}: expected one sub-folder per class, "
        "each holding .jpeg, .jpg or .png images; found 2 image(s) directly in it: "
        "move them into one sub-folder per class")


def test_folder_single_class(tmp_path):
    make_folder(tmp_path, {"cat": 5})
    assert folder_error(tmp_path) == (
        f"data directory {tmp_path} has only one class folder ('cat'); needs at least 2 classes")


def test_folder_empty_class(tmp_path):
    make_folder(tmp_path, {"cat": 5, "dog": 5})
    (tmp_path / "eel").mkdir()
    (tmp_path / "eel" / "notes.txt").write_text("no images here")  # only non-images: still empty
    assert folder_error(tmp_path) == (
        f"empty class folder in {tmp_path}: 'eel' (no .jpeg, .jpg or .png images)")
    (tmp_path / "ant").mkdir()
    assert folder_error(tmp_path) == (
        f"empty class folders in {tmp_path}: 'ant', 'eel' (no .jpeg, .jpg or .png images)")


def test_folder_class_with_too_few_images(tmp_path):
    make_folder(tmp_path, {"cat": 5, "dog": 2})
    assert folder_error(tmp_path) == (
        f"too few images in class folder(s) of {tmp_path}: 'dog' (2); each class needs at "
        "least 3 (one each for train, val and test)")


def test_folder_corrupt_image(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "dog" / "bad.png").write_bytes(b"this is not a png")
    assert folder_error(tmp_path) == (
        f"1 unreadable image file in {tmp_path}:\n  dog/bad.png: not a readable image (unknown format)")


def test_folder_zero_byte_image(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cat" / "empty.jpg").write_bytes(b"")
    assert folder_error(tmp_path) == (
        f"1 unreadable image file in {tmp_path}:\n  cat/empty.jpg: zero-byte file")


def test_folder_truncated_png(tmp_path):
    make_folder(tmp_path)
    p = save(tmp_path / "cat" / "cut.png", Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    p.write_bytes(p.read_bytes()[:400])
    message = folder_error(tmp_path)
    assert message.startswith(f"1 unreadable image file in {tmp_path}:\n  cat/cut.png: corrupt image (")


def test_folder_broken_link_and_undecodable_name_are_listed_readably(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with open(os.fsencode(tmp_path / "dog") + b"/\xff\xfe.png", "wb") as f:
        f.write(b"not an image")
    assert folder_error(tmp_path) == (
        f"2 unreadable image files in {tmp_path}:\n"
        f"  cat/gone.png: broken symbolic link (to {tmp_path / 'nowhere.png'})\n"
        "  dog/\\xff\\xfe.png: not a readable image (unknown format)")


def test_folder_class_names_must_be_printable_utf8(tmp_path):
    make_folder(tmp_path, {"cat": 3, "new\nline": 3})
    os.mkdir(os.fsencode(tmp_path) + b"/caf\xe9")  # Latin-1, not UTF-8
    assert folder_error(tmp_path) == (
        f"class folder names in {tmp_path} that are not printable UTF-8 text (rename them; they "
        "become the model's labels):\n  caf\\xe9\n  new\\nline")


def test_folder_unicode_and_spaced_class_names_are_fine(tmp_path):
    make_folder(tmp_path, {"chat noir": 3, "café": 3, "犬": 3})
    s = load_dataset(folder_cfg(tmp_path), (32, 32, 3), 0)
    assert s.labels == ("café", "chat noir", "犬")


def test_folder_lists_ten_bad_files_then_counts_the_rest(tmp_path):
    make_folder(tmp_path)
    for i in range(12):
        (tmp_path / "eel" / f"z{i:02d}.png").write_bytes(b"")
    (tmp_path / "cat" / "bad.jpg").write_bytes(b"junk")
    lines = folder_error(tmp_path).split("\n")
    assert lines[0] == f"13 unreadable image files in {tmp_path}:"
    assert lines[1] == "  cat/bad.jpg: not a readable image (unknown format)"
    assert lines[2:11] == [f"  eel/z{i:02d}.png: zero-byte file" for i in range(9)]
    assert lines[11:] == ["  ... and 3 more"]


def test_folder_without_path_is_a_config_error():
    with pytest.raises(ConfigError, match="^data.path: the 'folder' data set needs a path"):
        load_dataset(DataConfig(dataset="folder"), (32, 32, 3), 0)


# -- folder: what it reads ---------------------------------------------------------


def test_folder_skips_non_images_and_reports_them(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "README.txt").write_text("hi")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".git").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("hi")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "cat" / "._img000.png").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (tmp_path / "dog" / "sub").mkdir()
    s = load_dataset(folder_cfg(tmp_path), (32, 32, 3), 0)
    assert s.report["skipped"] == [
        ".DS_Store: hidden", ".git: hidden", "README.txt: not in a class folder",
        "cat/.DS_Store: hidden", "cat/._img000.png: hidden", "cat/notes.txt: not .jpeg, .jpg or .png",
        "dog/sub: nested folder (not read)",
    ]
    assert s.labels == ("cat", "dog", "eel")


def test_folder_stratified_per_class_split_disjoint_and_aligned(tmp_path):
    make_folder(tmp_path, {"cat": 10, "dog": 20, "eel": 40})
    cfg = folder_cfg(tmp_path, train_samples=None, val_samples=None, test_samples=None)
    s = load_dataset(cfg, (16, 16, 3), 0)
    assert s.report["available_per_class"] == {"cat": 10, "dog": 20, "eel": 40}
    assert s.report["counts"]["test"] == {"cat": 2, "dog": 3, "eel": 6}
    assert s.report["counts"]["val"] == {"cat": 2, "dog": 3, "eel": 6}
    assert s.report["counts"]["train"] == {"cat": 6, "dog": 14, "eel": 28}
    ids = []
    for split in ("train", "val", "test"):
        x, y = s.split(split)
        red, green = (np.round(x[:, 0, 0, i] * 255).astype(int) for i in (0, 1))
        assert np.array_equal((green - 10) // 60, y)  # labels travel with their images
        ids += list(zip(red, green))
    assert len(set(ids)) == len(ids) == 70  # no file in two splits
    assert len(set(s.y_train[:10].tolist())) > 1  # shuffled, not grouped by class


def test_folder_odd_file_names_and_mixed_sizes(tmp_path):
    for k, cls in enumerate(["crème brûlée", "日本 語", "a b"]):
        for j, name in enumerate(["x y.png", "ü-%20.PNG", "猫 #1.JpEg", "'quote'.jpg"]):
            fmt = "JPEG" if name.lower().endswith(("jpg", "jpeg")) else "PNG"
            img = Image.new("RGB", (8 + 13 * j, 40 - 7 * j), (60 * k + 10,) * 3)
            save(tmp_path / cls / name, img, format=fmt)
    s = load_dataset(folder_cfg(tmp_path), (32, 32, 1), 0)
    assert s.labels == ("a b", "crème brûlée", "日本 語")
    assert sum(len(y) for y in (s.y_train, s.y_val, s.y_test)) == 12
    assert s.report["source_modes"] == {"RGB": 12}
    assert s.report["converted"] == {"RGB to grey (ITU-R 601 luma)": 12}


def _one_image_folder(root: Path, img: Image.Image, name="x.png", **kwargs) -> Path:
    """Class 'a' of three copies of ``img``, class 'b' of three black RGB images."""
    for j in range(3):
        save(root / "a" / f"{j}{name}", img, **kwargs)
        save(root / "b" / f"{j}.png", Image.new("RGB", img.size))
    return root


#: Images are cached as uint8: a value is within half a level of the exact one.
HALF_LEVEL = 0.5 / 255 + 1e-6


def _class_a(s: Splits) -> np.ndarray:
    xs = np.concatenate([s.x_train, s.x_val, s.x_test])
    ys = np.concatenate([s.y_train, s.y_val, s.y_test])
    return xs[ys == 0]


def test_rgba_is_composited_over_black(tmp_path):
    _one_image_folder(tmp_path, Image.new("RGBA", (32, 32), (200, 100, 50, 128)))
    s = load_dataset(folder_cfg(tmp_path), (32, 32, 3), 0)
    expected = np.array([200, 100, 50], np.float32) / 255 * (128 / 255)
    assert np.allclose(_class_a(s), expected, atol=HALF_LEVEL)  # cached as uint8
    assert s.report["alpha_background"] == "black"
    assert s.report["converted"] == {"alpha composited over black": 3}
    assert s.report["source_modes"] == {"RGB": 3, "RGBA": 3}


def test_grey_alpha_and_palette_with_transparency(tmp_path):
    _one_image_folder(tmp_path, Image.new("LA", (32, 32), (255, 51)))
    s = load_dataset(folder_cfg(tmp_path), (32, 32, 1), 0)
    assert np.allclose(_class_a(s), 51 / 255, atol=1e-6)
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 1
    _one_image_folder(tmp_path / "p", pal, transparency=1)
    s = load_dataset(folder_cfg(tmp_path / "p"), (32, 32, 3), 0)
    assert np.allclose(_class_a(s), 0, atol=1e-6)  # fully transparent red over black
    assert s.report["converted"] == {"alpha composited over black": 3, "palette expanded": 3}


def test_sixteen_bit_grey_png_is_scaled_from_its_full_range(tmp_path):
    value = 257 * 100 + 37  # between two 8-bit levels; Pillow's own 8-bit clip would give 255
    img = Image.fromarray(np.full((32, 32), value, np.uint16))
    _one_image_folder(tmp_path, img)
    assert Image.open(tmp_path / "a" / "0x.png").mode.startswith("I")
    s = load_dataset(folder_cfg(tmp_path), (32, 32, 1), 0)
    assert np.allclose(_class_a(s), value / 65535, atol=HALF_LEVEL)  # rounded to the nearest uint8 level
    assert s.report["converted"]["16-bit grey scaled from 0..65535"] == 3


def test_grey_to_rgb_and_rgb_to_grey(tmp_path):
    _one_image_folder(tmp_path, Image.new("L", (20, 30), 90))
    s = load_dataset(folder_cfg(tmp_path), (32, 32, 3), 0)
    assert np.allclose(_class_a(s), 90 / 255, atol=1e-6)  # all three channels equal
    assert s.report["converted"] == {"grey to RGB (channel repeated)": 3}
    _one_image_folder(tmp_path / "c", Image.new("RGB", (20, 30), (255, 0, 0)))
    s = load_dataset(folder_cfg(tmp_path / "c"), (32, 32, 1), 0)
    assert np.allclose(_class_a(s), 0.299, atol=HALF_LEVEL)
    assert s.report["converted"] == {"RGB to grey (ITU-R 601 luma)": 6}


def test_bilevel_cmyk_and_exif_rotation(tmp_path):
    _one_image_folder(tmp_path, Image.new("1", (32, 32), 1))
    assert np.allclose(_class_a(load_dataset(folder_cfg(tmp_path), (32, 32, 1), 0)), 1.0)
    _one_image_folder(tmp_path / "c", Image.new("CMYK", (32, 32), (0, 0, 0, 0)), name="x.jpg")
    s = load_dataset(folder_cfg(tmp_path / "c"), (32, 32, 3), 0)
    assert np.allclose(_class_a(s), 1.0, atol=0.02)  # no ink = white
    assert s.report["converted"]["CMYK converted to RGB"] == 3
    # 40 wide x 20 high, left half white; EXIF 6 = display rotated 90 degrees clockwise
    arr = np.zeros((20, 40), np.uint8)
    arr[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    _one_image_folder(tmp_path / "e", Image.fromarray(arr), name="x.jpg", exif=exif, quality=95)
    s = load_dataset(folder_cfg(tmp_path / "e", fit="pad"), (40, 40, 1), 0)
    a = _class_a(s)[..., 0]
    assert s.report["converted"]["EXIF orientation applied"] == 3
    # upright now: 20 wide x 40 high, top half white, centred between 10-pixel borders
    assert a[:, 2:18, 12:28].min() > 0.9 and a[:, 22:38, 12:28].max() < 0.1
    assert a[:, :, :9].max() < 0.05


def test_pad_shrinks_large_images_keeping_aspect(tmp_path):
    _one_image_folder(tmp_path, Image.new("L", (128, 64), 255))
    s = load_dataset(folder_cfg(tmp_path, fit="pad"), (32, 32, 1), 0)
    a = _class_a(s)[..., 0]
    assert np.allclose(a[:, 8:24], 1.0, atol=1e-6)  # 128x64 -> 32x16, centred
    assert (a[:, :8] == 0).all() and (a[:, 24:] == 0).all()

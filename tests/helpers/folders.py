"""Image-folder data sets generated in a temporary directory (the ``folder`` loader's tests)."""

from pathlib import Path

from PIL import Image

from pipeline.recipe.schema import DataConfig


def save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def make_folder(root: Path, per_class=None, size=(12, 10)) -> Path:
    """One sub-folder per class of RGB PNGs of flat colour (j + 1, 60 * k + 10, 200)
    for image j of class k: a test can tell which file, and which class, a sample is."""
    per_class = per_class or {"cat": 10, "dog": 10, "eel": 10}
    for k, (name, n) in enumerate(per_class.items()):
        for j in range(n):
            colour = (j + 1, 60 * k + 10, 200)
            save(root / name / f"img{j:03d}.png", Image.new("RGB", size, colour))
    return root


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="folder", path=str(root), **kw)

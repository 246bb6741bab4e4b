"""Detection data sets: images at the model's input size with their boxes and classes.

A :class:`DetectionSet` holds uint8 images already fitted to the input shape, one
float32 ``[k, 4]`` box array (normalized ``[ymin, xmin, ymax, xmax]``) and one int64
``[k]`` class array per image. Readers of annotation files decode each image with
:func:`decode_image` and fit it with :func:`fit_image`, which moves the boxes with the
pixels (:mod:`pipeline.detection.boxes`).

Boxes refer to the pixel array as stored in the file: EXIF orientation is *not*
applied (COCO and VOC annotate the stored pixels, and their tools read them so), and
readers check the decoded size against the size the annotation file states.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.data.cache import MAX_PIXELS, PIL_FITS
from pipeline.data.resize import check_fit
from pipeline.data.splits import SPLITS, check_input_shape
from pipeline.detection.boxes import fit_boxes
from pipeline.errors import DataError


@dataclass(frozen=True, eq=False)
class DetectionSet:
    """Images with boxes, at the model's input size.

    Attributes:
        images: uint8 ``[N, H, W, C]``.
        boxes: per image, float32 ``[k, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
        classes: per image, int64 ``[k]``, indexes into ``labels``.
        labels: the class names.
        names: per image, its file name (or a generated id).
        source: where the set came from, in a line (shown in reports).
    """

    images: np.ndarray
    boxes: Tuple[np.ndarray, ...]
    classes: Tuple[np.ndarray, ...]
    labels: Tuple[str, ...]
    names: Tuple[str, ...]
    source: str

    def __post_init__(self):
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"DetectionSet.images: expected uint8 [N, H, W, C], got "
                             f"{self.images.dtype} {list(self.images.shape)}")
        lengths = {"boxes": len(self.boxes), "classes": len(self.classes), "names": len(self.names)}
        if any(v != n for v in lengths.values()):
            raise ValueError(f"DetectionSet: {n} images but {lengths}")
        for i, (b, c) in enumerate(zip(self.boxes, self.classes)):
            if b.dtype != np.float32 or b.shape != (len(c), 4) or c.dtype != np.int64 or c.ndim != 1:
                raise ValueError(f"DetectionSet: image {i} ({self.names[i]}): expected float32 boxes "
                                 f"[k, 4] and int64 classes [k], got {b.dtype} {list(b.shape)} and "
                                 f"{c.dtype} {list(c.shape)}")
            if len(c) and (c.min() < 0 or c.max() >= len(self.labels)):
                raise ValueError(f"DetectionSet: image {i} ({self.names[i]}): class outside "
                                 f"0..{len(self.labels) - 1}")
        object.__setattr__(self, "boxes", tuple(self.boxes))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "names", tuple(self.names))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return tuple(int(v) for v in self.images.shape[1:])  # type: ignore[return-value]

    def num_objects(self) -> int:
        return int(sum(len(c) for c in self.classes))

    def counts(self) -> dict:
        """``{label: number of boxes}`` over the whole set."""
        all_c = np.concatenate(self.classes) if self.classes else np.zeros(0, np.int64)
        return {lab: int(np.sum(all_c == k)) for k, lab in enumerate(self.labels)}

    def subset(self, idx: Sequence[int]) -> "DetectionSet":
        """The images at ``idx`` (in that order), with their boxes and names."""
        idx = [int(i) for i in idx]
        return DetectionSet(np.ascontiguousarray(self.images[idx]), tuple(self.boxes[i] for i in idx),
                            tuple(self.classes[i] for i in idx), self.labels,
                            tuple(self.names[i] for i in idx), self.source)


@dataclass(frozen=True, eq=False)
class DetectionSplits:
    """Train, validation and test :class:`DetectionSet` with the same labels and input shape."""

    train: DetectionSet
    val: DetectionSet
    test: DetectionSet

    def __post_init__(self):
        sets = [self.train, self.val, self.test]
        if len({s.labels for s in sets}) != 1 or len({s.input_shape for s in sets}) != 1:
            raise ValueError("DetectionSplits: the splits differ in labels or input shape")

    @property
    def labels(self) -> Tuple[str, ...]:
        return self.train.labels

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def split(self, name: str) -> DetectionSet:
        """The set of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, name)


# Decoding and fitting ----------------------------------------------------------------------

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(path: Path) -> np.ndarray:
    """An image file as stored -> uint8 ``[H, W, 1 or 3]`` (grey stays grey).

    Palette images are expanded, transparency composited over black, 16-bit grey
    scaled to 8 bits; EXIF orientation is not applied (see the module docstring).

    Raises:
        DataError: the file is missing, unreadable, too large or not a readable image
            (the message names the file).
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise DataError(f"{path}: image file not found")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"{path}: {im.width}x{im.height} pixels, more than the "
                                    f"{MAX_PIXELS:,} decoded at most")
                im.load()
                return _to_array(im)
    except PermissionError:
        raise DataError(f"{path}: cannot read (permission denied)") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: corrupt image ({exc})") from None


def _to_array(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.float64)
        return np.round(np.clip(a / 65535, 0, 1) * 255).astype(np.uint8)[..., None]
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("La", "RGBa"):
        im = im.convert(im.mode.upper())
    elif im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")
    a = np.asarray(im)
    if im.mode in ("LA", "RGBA"):  # over black: colour x alpha
        wide = a.astype(np.uint16)
        a = ((wide[..., :-1] * wide[..., -1:] + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(a if a.ndim == 3 else a[..., None])


def fit_image(image: np.ndarray, boxes: np.ndarray, input_shape, fit: str) -> Tuple[np.ndarray, np.ndarray]:
    """Fits one decoded image to the input shape and moves its boxes with the pixels.

    Args:
        image: uint8 ``[H, W, 1 or 3]`` of any size.
        boxes: its normalized boxes ``[k, 4]``.
        input_shape: ``(height, width, channels)``, channels 1 (grey, ITU-R 601 luma) or 3.
        fit: ``resize`` (stretch) or ``pad`` (keep the aspect ratio, centred on black),
            the rules of :func:`pipeline.data.resize.fit_images`.

    Returns:
        (uint8 ``[height, width, channels]``, float32 boxes ``[k, 4]``).
    """
    h, w, c = check_input_shape(input_shape)
    check_fit(fit)
    src = image.shape[2]
    im = Image.fromarray(image[..., 0] if src == 1 else image, "L" if src == 1 else "RGB")
    if src == 3 and c == 1:
        im = im.convert("L")  # before the resize, as the classification decoder does
    out = np.asarray(PIL_FITS[fit](im, h, w), np.uint8)
    out = out[..., None] if out.ndim == 2 else out
    if out.shape[2] == 1 and c == 3:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out), fit_boxes(boxes, image.shape[:2], (h, w), fit)

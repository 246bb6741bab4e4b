"""COCO detection annotations: read a set (:func:`read_coco`) and write one (:func:`write_coco`).

The reader takes an images folder and an ``instances``-style JSON (``images``,
``annotations``, ``categories``). Categories become 0-based classes in the order of
their ids (COCO's ids 1..90 with gaps become 0..79), with their names as labels.
Images keep the JSON's order; an image without annotations is kept with no boxes;
``iscrowd`` annotations are skipped (COCO evaluation ignores them too).
"""

import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from pipeline.data.resize import check_fit
from pipeline.data.splits import check_input_shape
from pipeline.detection.boxes import boxes_to_coco, check_box, empty_boxes, xyxy_to_boxes
from pipeline.detection.sets import DetectionSet, decode_image, fit_image
from pipeline.errors import DataError

#: The annotation file :func:`write_coco` writes, next to its ``images`` folder.
ANNOTATIONS_FILE = "annotations.json"
IMAGES_FOLDER = "images"


def read_coco(images_dir, annotations_json, input_shape, fit: str = "resize") -> DetectionSet:
    """A COCO-format detection set, fitted to ``input_shape``.

    Args:
        images_dir: the folder the JSON's ``file_name`` entries are relative to.
        annotations_json: the annotation file.
        input_shape: ``(height, width, channels)`` of the model input.
        fit: ``resize`` or ``pad`` (:func:`pipeline.detection.sets.fit_image`).

    Raises:
        DataError: the JSON cannot be read or parsed, lacks a key, an annotation names an
            unknown image or category, a box has a non-positive size or lies outside its
            image, or an image file is missing, corrupt or not the size the JSON states.
            The message names the file (and the annotation and box).
    """
    input_shape = check_input_shape(input_shape)
    check_fit(fit)
    ann_path, root = Path(annotations_json), Path(images_dir)
    doc = _load_json(ann_path)
    categories = _categories(doc, ann_path)
    images = _images(doc, ann_path)
    per_image = _annotations(doc, ann_path, images, categories)
    out_images, out_boxes, out_classes, names = [], [], [], []
    for image_id, (file_name, width, height) in images.items():
        path = root / file_name
        pixels = decode_image(path)
        if pixels.shape[:2] != (height, width):
            raise DataError(f"{path}: the image is {pixels.shape[1]}x{pixels.shape[0]} pixels but "
                            f"{ann_path} gives image {image_id} as {width}x{height}")
        found = per_image.get(image_id)
        boxes, classes = empty_boxes() if not found else (
            xyxy_to_boxes([b for b, _ in found], width, height), np.array([c for _, c in found], np.int64))
        fitted, boxes = fit_image(pixels, boxes, input_shape, fit)
        out_images.append(fitted)
        out_boxes.append(boxes)
        out_classes.append(classes)
        names.append(file_name)
    labels = tuple(name for _, name in sorted(categories.values()))
    stack = np.stack(out_images) if out_images else np.zeros((0, *input_shape), np.uint8)
    return DetectionSet(stack, tuple(out_boxes), tuple(out_classes), labels, tuple(names),
                        f"COCO annotations {ann_path} ({len(names)} images, fit {fit})")


def _load_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the annotation file ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: expected a list under {key!r}, "
                            f"{'missing' if key not in doc else 'got ' + type(doc[key]).__name__}")
    return doc


def _fields(entry, keys, path: Path, what: str) -> list:
    """The values of ``keys`` in one JSON object, or a DataError naming the missing one."""
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {what}: expected a JSON object, got {entry!r}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DataError(f"{path}: {what} lacks the key {missing[0]!r} (has {', '.join(sorted(entry)) or 'none'})")
    return [entry[k] for k in keys]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _categories(doc: dict, path: Path) -> Dict[int, Tuple[int, str]]:
    """{category id: (class index, name)}, classes in the order of category ids."""
    seen: Dict[int, str] = {}
    for i, entry in enumerate(doc["categories"]):
        cid, name = _fields(entry, ("id", "name"), path, f"category #{i}")
        if not _is_int(cid) or not isinstance(name, str) or not name:
            raise DataError(f"{path}: category #{i}: expected an integer id and a name, got id {cid!r}, "
                            f"name {name!r}")
        if cid in seen:
            raise DataError(f"{path}: category id {cid} appears twice ({seen[cid]!r} and {name!r})")
        seen[cid] = name
    if not seen:
        raise DataError(f"{path}: no categories")
    return {cid: (k, seen[cid]) for k, cid in enumerate(sorted(seen))}


def _images(doc: dict, path: Path) -> Dict[int, Tuple[str, int, int]]:
    """{image id: (file name, width, height)}, in the JSON's order."""
    out: Dict[int, Tuple[str, int, int]] = {}
    for i, entry in enumerate(doc["images"]):
        iid, name, width, height = _fields(entry, ("id", "file_name", "width", "height"), path, f"image #{i}")
        if not _is_int(iid) or not isinstance(name, str) or not name:
            raise DataError(f"{path}: image #{i}: expected an integer id and a file name, got id {iid!r}, "
                            f"file_name {name!r}")
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            raise DataError(f"{path}: image {iid} ({name}): width and height must be positive integers, "
                            f"got {width!r} x {height!r}")
        if iid in out:
            raise DataError(f"{path}: image id {iid} appears twice ({out[iid][0]} and {name})")
        out[iid] = (name, width, height)
    return out


def _annotations(doc: dict, path: Path, images, categories) -> Dict[int, List[Tuple[np.ndarray, int]]]:
    """{image id: [(clipped pixel corners, class)]}, crowd annotations left out."""
    out: Dict[int, List[Tuple[np.ndarray, int]]] = {}
    for i, entry in enumerate(doc["annotations"]):
        iid, cid, bbox = _fields(entry, ("image_id", "category_id", "bbox"), path, f"annotation #{i}")
        what = f"annotation {entry.get('id', '#' + str(i))}"
        if iid not in images:
            raise DataError(f"{path}: {what}: image_id {iid!r} is not among the images")
        if cid not in categories:
            raise DataError(f"{path}: {what} (image {iid}): category_id {cid!r} is not among the "
                            f"categories (ids {', '.join(str(c) for c in sorted(categories))})")
        if entry.get("iscrowd", 0):
            continue
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise DataError(f"{path}: {what} (image {iid}): bbox must be 4 numbers [x, y, width, height], "
                            f"got {bbox!r}")
        name, width, height = images[iid]
        x, y, w, h = (float(v) for v in bbox)
        corners = check_box(bbox, (x, y, x + w, y + h), width, height, f"{path}: {what} (image {iid}, {name})")
        out.setdefault(iid, []).append((corners, categories[cid][0]))
    return out


def write_coco(detection_set: DetectionSet, folder, annotations_file: str = ANNOTATIONS_FILE) -> Path:
    """Writes a set as COCO: ``folder/images/*.png`` (lossless) and ``folder/<annotations_file>``.

    Boxes are written in pixels as floats and categories get ids 1..K in label order,
    so :func:`read_coco` at the same input size gives back the same images, classes and
    boxes (within float32 precision). Several sets (the splits of one data set) may share
    a folder under different ``annotations_file`` names when their image names differ.

    Raises:
        DataError: an image of that name is already in ``folder/images``.

    Returns:
        The annotation file's path (its images folder is next to it).
    """
    folder = Path(folder)
    (folder / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    h, w, c = detection_set.input_shape
    images, annotations, used = [], [], set()
    for i, name in enumerate(detection_set.names):
        file_name = _png_name(name, i, used)
        if (folder / IMAGES_FOLDER / file_name).exists():
            raise DataError(f"{folder / IMAGES_FOLDER / file_name}: already there; write each set's images "
                            f"to its own folder or give them distinct names")
        pixels = detection_set.images[i]
        Image.fromarray(pixels[..., 0] if c == 1 else pixels, "L" if c == 1 else "RGB").save(
            folder / IMAGES_FOLDER / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
        for box, cls in zip(boxes_to_coco(detection_set.boxes[i], w, h), detection_set.classes[i]):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                                "iscrowd": 0})
    categories = [{"id": k + 1, "name": lab} for k, lab in enumerate(detection_set.labels)]
    out = folder / annotations_file
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out


def _png_name(name: str, i: int, used: set) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or f"image-{i:06d}"
    file_name = f"{stem}.png"
    if file_name in used:
        file_name = f"{stem}-{i:06d}.png"
    used.add(file_name)
    return file_name

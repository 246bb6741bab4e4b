"""Pascal VOC detection sets: ``Annotations/*.xml`` with ``JPEGImages/*.jpg``.

Layout under the root (the VOC2007/VOC2012 folders as distributed)::

    Annotations/<id>.xml         <size>, and per object <name>, <difficult>, <bndbox>
    JPEGImages/<id>.jpg          (or the <filename> the XML gives)
    ImageSets/Main/<split>.txt   optional: the ids of a split, one a line

Boxes are VOC's 1-based inclusive pixel corners. Objects marked ``difficult`` are
skipped unless ``include_difficult`` is set: VOC's own evaluation counts them neither
as found nor as missed, and a set with no flag field can only keep or drop them.
"""

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from pipeline.data.resize import check_fit
from pipeline.data.splits import check_input_shape
from pipeline.detection.boxes import check_box, empty_boxes, xyxy_to_boxes
from pipeline.detection.sets import DetectionSet, decode_image, fit_image
from pipeline.errors import DataError


def read_voc(root, input_shape, fit: str = "resize", split: Optional[str] = None,
             labels: Optional[Sequence[str]] = None, include_difficult: bool = False) -> DetectionSet:
    """A Pascal VOC detection set, fitted to ``input_shape``.

    Args:
        root: the folder holding ``Annotations`` and ``JPEGImages``.
        input_shape: ``(height, width, channels)`` of the model input.
        fit: ``resize`` or ``pad`` (:func:`pipeline.detection.sets.fit_image`).
        split: read the ids in ``ImageSets/Main/<split>.txt``; None reads every XML file.
        labels: the class names in class order; None takes the sorted unique object names.
        include_difficult: keep objects marked difficult (skipped by default).

    Raises:
        DataError: a folder or split file is missing, an XML file does not parse or lacks
            its size, an object's name or box, a box lies outside its image, an object's
            name is not among ``labels``, or an image is missing, corrupt or not the size
            its XML states. The message names the file (and the object and box).
    """
    input_shape = check_input_shape(input_shape)
    check_fit(fit)
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise DataError(f"{root}: not a Pascal VOC folder (no Annotations folder)")
    ids = _split_ids(root, split) if split is not None else sorted(p.stem for p in ann_dir.glob("*.xml"))
    if not ids:
        raise DataError(f"{ann_dir}: no annotation files (*.xml)")
    records = [_parse(ann_dir / f"{i}.xml", i, include_difficult) for i in ids]
    if labels is None:
        labels = sorted({name for rec in records for name, _ in rec[3]})
    labels = tuple(labels)
    index = {name: k for k, name in enumerate(labels)}
    images, all_boxes, all_classes, names = [], [], [], []
    skipped = sum(rec[4] for rec in records)
    for xml_path, file_name, (width, height), objects, _ in records:
        for name, _ in objects:
            if name not in index:
                raise DataError(f"{xml_path}: object {name!r} is not among the labels ({', '.join(labels)})")
        path = root / "JPEGImages" / file_name
        pixels = decode_image(path)
        if pixels.shape[:2] != (height, width):
            raise DataError(f"{path}: the image is {pixels.shape[1]}x{pixels.shape[0]} pixels but "
                            f"{xml_path} gives its size as {width}x{height}")
        if objects:
            boxes = xyxy_to_boxes([c for _, c in objects], width, height)
            classes = np.array([index[n] for n, _ in objects], np.int64)
        else:
            boxes, classes = empty_boxes()
        fitted, boxes = fit_image(pixels, boxes, input_shape, fit)
        images.append(fitted)
        all_boxes.append(boxes)
        all_classes.append(classes)
        names.append(file_name)
    note = f", {skipped} difficult objects skipped" if skipped else ""
    return DetectionSet(np.stack(images), tuple(all_boxes), tuple(all_classes), labels, tuple(names),
                        f"Pascal VOC {root} (split {split or 'all'}, {len(names)} images{note}, fit {fit})")


def _split_ids(root: Path, split: str) -> List[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    try:
        lines = path.read_text().split("\n")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the split file ({exc.strerror or exc})") from None
    # A line may carry a second column (the per-class files' 1/-1/0 flag): the id comes first.
    return [line.split()[0] for line in lines if line.strip()]


def _parse(xml_path: Path, image_id: str, include_difficult: bool):
    """(xml path, image file name, (width, height), [(name, clipped pixel corners)], skipped)."""
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        raise DataError(f"{xml_path}: annotation file not found") from None
    except OSError as exc:
        raise DataError(f"{xml_path}: cannot read ({exc.strerror or exc})") from None
    except ET.ParseError as exc:
        raise DataError(f"{xml_path}: not valid XML ({exc})") from None
    top = tree.getroot()
    file_name = (top.findtext("filename") or "").strip() or f"{image_id}.jpg"
    size = top.find("size")
    if size is None:
        raise DataError(f"{xml_path}: no <size> element")
    width, height = (_number(size, tag, xml_path, "<size>") for tag in ("width", "height"))
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise DataError(f"{xml_path}: <size> must give positive whole width and height, "
                        f"got {width:g} x {height:g}")
    width, height = int(width), int(height)
    objects: List[Tuple[str, np.ndarray]] = []
    skipped = 0
    for k, obj in enumerate(top.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{xml_path}: object #{k + 1} has no <name>")
        what = f"object #{k + 1} ({name})"
        if (obj.findtext("difficult") or "0").strip() == "1" and not include_difficult:
            skipped += 1
            continue
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{xml_path}: {what} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, t, xml_path, what) for t in ("xmin", "ymin", "xmax", "ymax"))
        given = f"[xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g}]"
        # 1-based inclusive pixel indexes -> continuous 0-based corners.
        corners = check_box(given, (xmin - 1, ymin - 1, xmax, ymax), width, height, f"{xml_path}: {what}")
        objects.append((name, corners))
    return xml_path, file_name, (width, height), objects, skipped


def _number(parent, tag: str, xml_path: Path, what: str) -> float:
    text = parent.findtext(tag)
    if text is None:
        raise DataError(f"{xml_path}: {what} has no <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{xml_path}: {what}: <{tag}> is {text.strip()!r}, not a number") from None

"""Runs inside the isolated MediaPipe environment (see :mod:`pipeline.publish.mediapipe_env`).

It is started as a script by that environment's own Python, never imported by the
pipeline: MediaPipe needs absl-py ~= 2.x, the pipeline's tfmot pins absl-py 1.4.0.
Only the standard library, numpy and mediapipe are imported here, by
``importlib.import_module``: mediapipe is a requirement of that environment, not of the
package (whose declared-imports check reads ``import`` statements).

Commands (one JSON document on stdout each)::

    write IN.tflite OUT.tflite SPEC.json    embed metadata with MediaPipe's metadata writer
    write-detector IN.tflite OUT.tflite SPEC.json
                                            embed object-detector metadata (a model ending in
                                            TFLite's detection postprocess op) the same way
    read MODEL.tflite                       the embedded metadata as MediaPipe's displayer reads it
    classify MODEL.tflite IMAGES.npy OUT.npy
                                            MediaPipe Tasks' ImageClassifier on uint8 RGB
                                            images [N, H, W, 3]; OUT gets the score of every
                                            category, [N, classes] float32, by category index
    detect MODEL.tflite IMAGES.npy OUT.json
                                            MediaPipe Tasks' ObjectDetector on uint8 RGB images
                                            [N, H, W, 3]; OUT gets per image the detections as
                                            MediaPipe returns them: pixel box [x, y, width,
                                            height], category index and name, score; stdout
                                            also gets the category tensor's labels
    versions                                the versions of mediapipe and numpy
"""

import json
import sys
from importlib import import_module


def _write(src: str, dst: str, spec_path: str) -> dict:
    mw = import_module("mediapipe.tasks.python.metadata.metadata_writers.metadata_writer")

    with open(spec_path) as f:
        spec = json.load(f)
    with open(src, "rb") as f:
        model = f.read()
    color = getattr(mw.MetadataWriter.color_space_types, spec["color_space"])
    writer = (mw.MetadataWriter.create(bytearray(model))
              .add_general_info(spec["name"], spec["description"])
              .add_image_input(spec["mean"], spec["std"], color_space_type=color,
                               description=spec["input_description"])
              .add_classification_output(mw.Labels().add(spec["labels"]),
                                         description=spec["output_description"]))
    buf, text = writer.populate()
    with open(dst, "wb") as f:
        f.write(_fixed_zip_times(bytes(buf)))
    return json.loads(text)


def _write_detector(src: str, dst: str, spec_path: str) -> dict:
    od = import_module("mediapipe.tasks.python.metadata.metadata_writers.object_detector")
    mw = import_module("mediapipe.tasks.python.metadata.metadata_writers.metadata_writer")

    with open(spec_path) as f:
        spec = json.load(f)
    with open(src, "rb") as f:
        model = f.read()
    # The factory for models whose graph ends in the postprocess op: image input with
    # its normalization, the four outputs (location, category, score, number of
    # detections) and the labels on the category tensor. It names every model
    # "ObjectDetector"; the general info is ours.
    writer = od.MetadataWriter.create_for_models_with_nms(
        bytearray(model), spec["mean"], spec["std"], mw.Labels().add(spec["labels"]))
    writer.writer.add_general_info(spec["name"], spec["description"])
    buf, text = writer.populate()
    with open(dst, "wb") as f:
        f.write(_fixed_zip_times(bytes(buf)))
    return json.loads(text)


# 1980-01-01 00:00, the earliest zip date: (year - 1980) << 9 | month << 5 | day.
_ZIP_DATE, _ZIP_TIME = (1 << 5) | 1, 0


def _fixed_zip_times(model: bytes) -> bytes:
    """The model with the modification time of every packed associated file set to 1980-01-01.

    The writer appends the associated files (labels.txt) as a zip stamped with the time
    of writing, so the same model and labels would give a new file, and a new sha256, on
    every build. Only the date fields of the local and central headers change.
    """
    import io
    import struct
    import zipfile

    out = bytearray(model)
    with zipfile.ZipFile(io.BytesIO(model)) as zf:
        for info in zf.infolist():  # local file headers: signature PK\3\4, time at +10
            if out[info.header_offset:info.header_offset + 4] != b"PK\x03\x04":
                raise ValueError(f"no local zip header for {info.filename} at {info.header_offset}")
            struct.pack_into("<HH", out, info.header_offset + 10, _ZIP_TIME, _ZIP_DATE)
        pos = zf.start_dir
        for _ in zf.infolist():  # central directory entries: signature PK\1\2, time at +12
            if out[pos:pos + 4] != b"PK\x01\x02":
                raise ValueError(f"no central zip header at {pos}")
            struct.pack_into("<HH", out, pos + 12, _ZIP_TIME, _ZIP_DATE)
            name_len, extra_len, comment_len = struct.unpack_from("<HHH", out, pos + 28)
            pos += 46 + name_len + extra_len + comment_len
    return bytes(out)


def _read(path: str) -> dict:
    metadata = import_module("mediapipe.tasks.python.metadata.metadata")

    with open(path, "rb") as f:
        model = f.read()
    shown = metadata.MetadataDisplayer.with_model_buffer(model)
    files = {name: shown.get_associated_file_buffer(name).decode()
             for name in shown.get_packed_associated_file_list()}
    return {"metadata": json.loads(shown.get_metadata_json()), "associated_files": files}


def _task_inputs(images_path: str):
    """MediaPipe's modules a vision task needs, and the uint8 RGB images [N, H, W, 3] it runs on."""
    np = import_module("numpy")
    images = np.load(images_path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    return (import_module("mediapipe"), np, import_module("mediapipe.tasks.python"),
            import_module("mediapipe.tasks.python.vision"), images)


def _classify(path: str, images_path: str, out_path: str) -> dict:
    mp, np, tasks, vision, images = _task_inputs(images_path)
    options = vision.ImageClassifierOptions(base_options=tasks.BaseOptions(model_asset_path=path),
                                            max_results=-1)
    scores = None
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for i, img in enumerate(images):
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                  data=np.ascontiguousarray(img)))
            cats = result.classifications[0].categories
            if scores is None:
                scores = np.full((len(images), len(cats)), np.nan, np.float32)
            for c in cats:
                scores[i, c.index] = c.score
    np.save(out_path, scores)
    return {"images": int(len(images)), "classes": int(scores.shape[1]) if scores is not None else 0,
            "category_names": [c.category_name for c in sorted(cats, key=lambda c: c.index)] if len(images) else []}


def _detect(path: str, images_path: str, out_path: str) -> dict:
    mp, np, tasks, vision, images = _task_inputs(images_path)
    # max_results -1: every detection; no score_threshold: with none set (and no
    # thresholding in the metadata) the task keeps every detection the model returns.
    options = vision.ObjectDetectorOptions(base_options=tasks.BaseOptions(model_asset_path=path), max_results=-1)
    found = []
    with vision.ObjectDetector.create_from_options(options) as detector:
        for img in images:
            result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            found.append([{"box": [d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width,
                                   d.bounding_box.height],
                           "categories": [{"index": c.index, "name": c.category_name, "score": c.score}
                                          for c in d.categories]}
                          for d in result.detections])
    with open(out_path, "w") as f:
        json.dump(found, f)
    return {"images": int(len(images)), "detections": sum(len(f) for f in found), "labels": _labels(path)}


def _labels(path: str):
    """The lines of the category tensor's labels file (TENSOR_VALUE_LABELS), or None.

    With labels, the ObjectDetector reports a category's name and leaves its index
    empty: the caller maps names back to indexes with these lines.
    """
    metadata = import_module("mediapipe.tasks.python.metadata.metadata")

    with open(path, "rb") as f:
        shown = metadata.MetadataDisplayer.with_model_buffer(f.read())
    outputs = json.loads(shown.get_metadata_json())["subgraph_metadata"][0]["output_tensor_metadata"]
    files = [a["name"] for t in outputs if t.get("name") == "category"
             for a in t.get("associated_files", []) if a.get("type") == "TENSOR_VALUE_LABELS"]
    return shown.get_associated_file_buffer(files[0]).decode().splitlines() if files else None


def _versions() -> dict:
    import_module("mediapipe.tasks.python.metadata.metadata_writers.metadata_writer")
    import_module("mediapipe.tasks.python.vision.image_classifier")
    return {"mediapipe": import_module("mediapipe").__version__, "numpy": import_module("numpy").__version__}


def main(argv) -> int:
    commands = {"write": (_write, 3), "write-detector": (_write_detector, 3), "read": (_read, 1),
                "classify": (_classify, 3), "detect": (_detect, 3), "versions": (_versions, 0)}
    if not argv or argv[0] not in commands or len(argv) - 1 != commands[argv[0]][1]:
        print(f"usage: mediapipe_worker.py {{{','.join(commands)}}} ARGS...", file=sys.stderr)
        return 2
    fn, _ = commands[argv[0]]
    json.dump(fn(*argv[1:]), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

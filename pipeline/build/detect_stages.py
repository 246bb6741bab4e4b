"""The stages of the detection build (:func:`pipeline.build.detect.build_detector`), as a table.

Each stage is a function of the build's :class:`Work`: it reads what earlier stages
left there, adds its own products and writes its files atomically under ``out``:

    data.json                      split counts, labels, source
    keras/float.h5, pruned.h5, qat.h5 and their training histories
    variants/<variant>.tflite      every variant, validated against its Keras model
    evaluation/<variant>.json      host mAP and the host's detections on the test split
    devices/<device>/<variant>.json  the device run, its agreement and device mAP
    bundle/model.tflite, labels.txt  the deploy variant with object-detector metadata
    pictures/*.png, summary.json, report.md
"""

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from pipeline.build.detect import (AGREEMENT_IOU, DetectResult, DeviceFigures, VariantFigures, budget_failures,
                                   report_markdown)
from pipeline.build.detect_config import DetectConfig
from pipeline.errors import Log
from pipeline.store.atomic import atomic_path, atomic_write_json, atomic_write_text

#: Float images the full-integer variants are calibrated on (the first of the training split).
CALIBRATION_IMAGES = 100
#: Test images each export is validated on against its Keras model.
VALIDATION_IMAGES = 16
#: Test images drawn in the report.
PICTURES = 4
#: Test images MediaPipe Tasks' ObjectDetector runs the bundle on.
MEDIAPIPE_IMAGES = 8


@dataclass
class Work:
    """The build in progress: its config, output folder, log and what stages produced."""

    cfg: DetectConfig
    out: Path
    log: Log
    seconds: Dict[str, float] = field(default_factory=dict)
    items: Dict[str, Any] = field(default_factory=dict)

    def timed(self, name: str, run: Callable[["Work"], None]) -> None:
        started = time.perf_counter()
        self.log(f"[detect] stage {name}")
        run(self)
        self.seconds[name] = round(time.perf_counter() - started, 2)
        self.log(f"[detect] stage {name} done in {self.seconds[name]:.1f} s")

    @property
    def result(self) -> DetectResult:
        return self.items["result"]


def _as_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def _held_out(data, cfg: DetectConfig):
    """Train, val and test sets of one read set, by a seeded permutation."""
    from pipeline.data.splits import stream_rng
    from pipeline.detection.sets import DetectionSplits
    from pipeline.errors import DataError

    n = len(data.images)
    n_val, n_test = int(round(n * cfg.data.val_fraction)), int(round(n * cfg.data.test_fraction))
    if min(n_val, n_test, n - n_val - n_test) < 1:
        raise DataError(f"{data.source}: {n} images are too few to hold out validation and test images")
    order = stream_rng(cfg.seed, "detect", "split").permutation(n)
    return DetectionSplits(data.subset(order[n_val + n_test:]), data.subset(order[:n_val]),
                           data.subset(order[n_val:n_val + n_test]))


def _split_files(train, val, test):
    """The splits of a coco set given as three annotation files (same categories in each)."""
    from pipeline.detection.sets import DetectionSplits
    from pipeline.errors import DataError

    for other in (val, test):
        if other.labels != train.labels:
            raise DataError(f"{other.source}: its categories {list(other.labels)} differ from the training "
                            f"split's {list(train.labels)} ({train.source})")
    return DetectionSplits(train, val, test)


def data_stage(w: Work) -> None:
    """Reads (or renders) the data set and splits it."""
    cfg, d = w.cfg, w.cfg.data
    if d.dataset == "synthetic":
        from pipeline.detection.synthetic import load_synthetic

        splits = load_synthetic(cfg.input_shape, cfg.seed, {"train": d.train, "val": d.val, "test": d.test})
    elif d.dataset == "coco":
        from pipeline.detection.coco import read_coco

        def read(annotations):
            return read_coco(d.path, annotations, cfg.input_shape, d.fit)

        splits = _split_files(*map(read, (d.annotations, d.val_annotations, d.test_annotations))) \
            if d.split_files else _held_out(read(d.annotations), cfg)
    else:
        from pipeline.detection.voc import read_voc

        splits = _held_out(read_voc(d.path, cfg.input_shape, d.fit), cfg)
    w.items["splits"] = splits
    counts = {s: len(splits.split(s).images) for s in ("train", "val", "test")}
    w.items["counts"] = counts
    atomic_write_json(w.out / "data.json", {"source": splits.train.source, "labels": list(splits.labels),
                                            "counts": counts})
    w.log(f"[detect] data: {splits.train.source}, {counts}")


def _save_model(model, path: Path, qat: bool = False) -> None:
    from contextlib import nullcontext

    from models.quantize import quantize_scope

    with (quantize_scope() if qat else nullcontext()), atomic_path(path, suffix=".h5") as tmp:
        model.save(tmp, include_optimizer=False)


def _train(w: Work, model, name: str, epochs: int, learning_rate: float, callbacks=()):
    from pipeline.detection.augment import augment_detection
    from pipeline.detection.train import train_detector

    splits, cfg = w.items["splits"], w.cfg
    model, history = train_detector(model, w.items["anchors"], splits.train, splits.val, epochs=epochs,
                                    batch_size=cfg.train.batch_size, learning_rate=learning_rate, seed=cfg.seed,
                                    augment=augment_detection if cfg.train.augment else None, callbacks=callbacks,
                                    log=w.log)
    atomic_write_json(w.out / "keras" / f"{name}_history.json", history.to_dict())
    return model


def train_stage(w: Work) -> None:
    """Trains the float detector; records the dense model's mAP on the test split."""
    from pipeline.detection.export import keras_detections
    from pipeline.detection.train import build_detector

    from pipeline.train.fit import setup_tensorflow

    cfg, splits = w.cfg, w.items["splits"]
    setup_tensorflow(cfg.seed)  # before the model is built: its initial weights are the seed's
    model, anchors = build_detector(cfg.model.family, cfg.model.alpha, cfg.input_shape, splits.num_classes)
    w.items["anchors"] = anchors
    model = _train(w, model, "float", cfg.train.epochs, cfg.train.learning_rate)
    _save_model(model, w.out / "keras" / "float.h5")
    dets = keras_detections(model, anchors, _as_float(splits.test.images), cfg.convert.postprocess)
    w.items["dense_map_50"] = float(_map(splits.test, dets).map_50)
    w.items["float"] = model
    w.log(f"[detect] dense float: mAP@0.5 {w.items['dense_map_50']:.3f} (Keras, test split)")


def _map(data, detections):
    from pipeline.detection.evaluate import coco_map

    ground_truth = [{"boxes": b, "classes": c} for b, c in zip(data.boxes, data.classes)]
    return coco_map(ground_truth, detections, data.images.shape[1:3], source=data.source)


def _sparsity(model) -> float:
    from pipeline.compress.kernels import kernel_table, prunable_sparsity

    return prunable_sparsity(kernel_table(model, pruned=True))


def prune_stage(w: Work) -> None:
    """Magnitude pruning of Conv2D kernels to the target sparsity (prune -> fit -> strip)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from pipeline.compress.kernels import PRUNABLE_KINDS, layer_kind
    from pipeline.compress.prune import pruning_steps

    cfg, sparsity = w.cfg, tfmot.sparsity.keras
    steps = cfg.prune.epochs * -(-len(w.items["splits"].train.images) // cfg.train.batch_size)
    end_step, frequency = pruning_steps(steps)
    schedule = sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=cfg.prune.sparsity,
                                        begin_step=0, end_step=end_step, frequency=frequency)

    def wrap(layer):  # Conv2D only: depthwise kernels are a sliver of the weights
        if layer_kind(layer) in PRUNABLE_KINDS:
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    # The unwrapped layers are the float model's own (tfmot's clone idiom): pruning goes on
    # from the trained weights, and the float model is not used after this stage.
    wrapped = keras.models.clone_model(w.items["float"], clone_function=wrap)
    wrapped = _train(w, wrapped, "pruned", cfg.prune.epochs, cfg.prune.learning_rate,
                     callbacks=[sparsity.UpdatePruningStep()])
    pruned = sparsity.strip_pruning(wrapped)
    _save_model(pruned, w.out / "keras" / "pruned.h5")
    w.items["pruned"] = pruned
    w.log(f"[detect] pruned: {_sparsity(pruned):.1%} of the Conv2D kernels are zero")


def qat_stage(w: Work) -> None:
    """Prune-preserving QAT of the pruned detector (its zeros stay zero)."""
    from models.quantize import quantize_model

    qat = quantize_model(w.items["pruned"], "pqat")
    qat = _train(w, qat, "qat", w.cfg.qat.epochs, w.cfg.qat.learning_rate)
    _save_model(qat, w.out / "keras" / "qat.h5", qat=True)
    w.items["qat"] = qat
    w.log(f"[detect] PQAT: {_sparsity(qat):.1%} of the Conv2D kernels are zero")


def export_stage(w: Work) -> None:
    """Every variant converted with the postprocess op and validated against its Keras model."""
    from pipeline.detection.export import export_detector
    from pipeline.variants import VARIANTS

    cfg, splits = w.cfg, w.items["splits"]
    calibration = _as_float(splits.train.images[:CALIBRATION_IMAGES])
    validation = _as_float(splits.test.images[:VALIDATION_IMAGES])
    sparsity = {key: float(_sparsity(w.items[key])) for key in ("pruned", "qat")}  # the two sources
    exports = {}
    for name in cfg.convert.variants:
        key = "qat" if VARIANTS.get(name).source == "qat" else "pruned"
        path = w.out / "variants" / f"{name}.tflite"
        metrics = export_detector(w.items[key], w.items["anchors"], name, path, validation, calibration,
                                  cfg.convert.postprocess, log=w.log)
        exports[name] = {"path": path, "size_bytes": int(metrics["size_bytes"]), "sparsity": sparsity[key]}
    w.items["exports"] = exports


def _detections_json(dets) -> List[Dict[str, Any]]:
    return [{"boxes": d.boxes.tolist(), "classes": d.classes.tolist(), "scores": d.scores.tolist()} for d in dets]


def evaluate_stage(w: Work) -> None:
    """Host mAP of every variant on the test split (the host's detections are kept)."""
    from pipeline.detection.evaluate import run_tflite_detector

    test = w.items["splits"].test
    x = _as_float(test.images)
    host = {}
    for name, e in w.items["exports"].items():
        dets = run_tflite_detector(e["path"], x)
        m = _map(test, dets)
        host[name] = dets
        e.update(map=float(m.map), map_50=float(m.map_50))
        atomic_write_json(w.out / "evaluation" / f"{name}.json",
                          {"map": m.map, "map_50": m.map_50, "map_75": m.map_75, "images": m.images,
                           "detections": _detections_json(dets)})
        w.log(f"[detect] {name}: host mAP {m.map:.3f}, mAP@0.5 {m.map_50:.3f}")
    w.items["host"] = host


def _device_detections(result, n: int):
    """The detections in a device run's four raw outputs (boxes, classes, scores, count)."""
    from pipeline.detection.evaluate import detections_from_outputs
    from pipeline.errors import DeviceOutputError

    if result.raw_outputs is None or len(result.raw_outputs) != 4:
        raise DeviceOutputError(f"{result.device}: {Path(result.model).name} returned no detections")
    boxes, classes, scores, count = (np.asarray(o) for o in result.raw_outputs)
    return detections_from_outputs(boxes.reshape(n, -1, 4), classes.reshape(n, -1), scores.reshape(n, -1),
                                   count.reshape(n))


def device_run(path: Path, device: str, test, host_dets, samples: int) -> Tuple[DeviceFigures, Dict]:
    """One variant on one device: loads, instructions, estimated latency, agreement, mAP."""
    from pipeline.detection.evaluate import detection_agreement
    from pipeline.devices.check import run_device_check
    from pipeline.latency.estimate import attach_latency

    subset = test.subset(range(min(samples, len(test.images))))
    x = _as_float(subset.images)
    result = run_device_check(path, device, x, threads=1)
    record = result.to_dict()
    if not result.loaded:
        return DeviceFigures(False, result.verdict, len(x)), record
    attach_latency(record, device, 1)
    dets = _device_detections(result, len(x))
    agree = detection_agreement(host_dets[:len(x)], dets, iou=AGREEMENT_IOU)
    m = _map(subset, dets)
    record["detection_agreement"] = asdict(agree)
    record["device_map"] = {"map": m.map, "map_50": m.map_50}
    latency = record.get("latency_ms")
    return DeviceFigures(True, result.verdict, len(x), int(result.instructions_median),
                         None if latency is None else float(latency), float(agree.fraction),
                         float(agree.reverse_fraction), float(m.map), float(m.map_50), int(agree.host_count)), record


def devices_stage(w: Work) -> None:
    """Every variant on every target device; the deploy variant on the deploy targets too."""
    cfg, test = w.cfg, w.items["splits"].test
    figures: Dict[str, Dict[str, DeviceFigures]] = {}
    for name, e in w.items["exports"].items():
        figures[name] = {}
        for device in cfg.deploy_devices() if name == cfg.deploy_variant else cfg.target_devices():
            fig, record = device_run(e["path"], device, test, w.items["host"][name], cfg.devices.samples)
            atomic_write_json(w.out / "devices" / device / f"{name}.json", record)
            figures[name][device] = fig
            w.log(f"[detect] {name} on {device}: " + (
                f"{fig.instructions / 1e6:.2f} M instr, agreement {fig.agreement:.1%} of {fig.host_detections} "
                f"host detections, mAP@0.5 {fig.map_50:.3f}"
                if fig.loaded else f"does not load: {fig.verdict}"))
    w.items["devices"] = figures


def bundle_stage(w: Work) -> None:
    """``bundle/model.tflite``: the deploy variant with MediaPipe object-detector metadata,
    then run by MediaPipe Tasks' ObjectDetector on test images and compared with ours."""
    from pipeline.build.detect import BundleFigures
    from pipeline.detection.evaluate import run_tflite_detector
    from pipeline.publish.detector_metadata import detect_with_mediapipe, embed_detector_metadata, matches_mediapipe
    from pipeline.store.atomic import atomic_write_bytes, sha256_bytes

    cfg, splits = w.cfg, w.items["splits"]
    if cfg.model.channels != 3:
        w.log("[detect] bundle: none (MediaPipe's ObjectDetector takes RGB images only)")
        return
    deploy = w.items["exports"][cfg.deploy_variant]["path"]
    h, wd, c = cfg.input_shape
    data = embed_detector_metadata(
        deploy.read_bytes(), splits.labels, f"{cfg.name} object detector",
        f"SSDLite {cfg.model.family} {cfg.model.alpha} at {h}x{wd}x{c}, {cfg.deploy_variant}; "
        f"classes: {', '.join(splits.labels)}", source=deploy.name)
    path = w.out / "bundle" / "model.tflite"
    atomic_write_bytes(path, data)
    atomic_write_text(w.out / "bundle" / "labels.txt", "".join(f"{label}\n" for label in splits.labels))
    pixels = splits.test.images[:MEDIAPIPE_IMAGES]
    theirs = detect_with_mediapipe(path, pixels)
    ours = run_tflite_detector(path, _as_float(pixels))
    same = matches_mediapipe(ours, theirs, h, wd)
    n_ours, n_theirs = sum(len(d.scores) for d in ours), sum(len(d.scores) for d in theirs)
    w.items["bundle"] = BundleFigures("bundle/model.tflite", cfg.deploy_variant, len(data), sha256_bytes(data),
                                      len(pixels), n_ours, same / n_ours if n_ours else 1.0,
                                      same / n_theirs if n_theirs else 1.0)
    w.log(f"[detect] bundle: {path} ({len(data) / 1024:.1f} KiB); MediaPipe's ObjectDetector reports "
          f"{same} of our {n_ours} detections on {len(pixels)} test images (and {n_theirs} in all)")


def _picture(w: Work, index: int, deploy: str) -> str:
    from PIL import Image

    from pipeline.detection.evaluate import draw_detections

    test = w.items["splits"].test
    truth = {"boxes": test.boxes[index], "classes": test.classes[index]}
    sides = [draw_detections(test.images[index], w.items["host"][v][index], test.labels, score_threshold=0.5,
                             ground_truth=truth) for v in ("float32", deploy)]
    canvas = Image.new("RGB", (sides[0].width + sides[1].width + 8, max(s.height for s in sides)), "white")
    canvas.paste(sides[0], (0, 0))
    canvas.paste(sides[1], (sides[0].width + 8, 0))
    name = f"pictures/{index:02d}_float32_vs_{deploy}.png"
    with atomic_path(w.out / name, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return name


def report_stage(w: Work) -> None:
    """Budgets, ``summary.json``, ``report.md`` and the pictures."""
    cfg, splits = w.cfg, w.items["splits"]
    variants = tuple(VariantFigures(name, e["size_bytes"], e["sparsity"], e["map"], e["map_50"],
                                    w.items.get("devices", {}).get(name, {}))
                     for name, e in w.items["exports"].items())
    deploy = cfg.deploy_variant
    pictures = tuple(_picture(w, i, deploy) for i in range(min(PICTURES, len(splits.test.images))))
    result = DetectResult(cfg, tuple(splits.labels), splits.train.source, w.items["counts"],
                          w.items["dense_map_50"], variants, dict(w.seconds), budget_failures(cfg, variants),
                          bundle=w.items.get("bundle"))
    # The report stage's own time is not in the files it writes; build_detector adds it to the result.
    atomic_write_json(w.out / "summary.json", result.to_dict())
    atomic_write_text(w.out / "report.md", report_markdown(result, pictures))
    w.items["result"] = result
    w.items["pictures"] = pictures


#: The stages in order: (name, function of the :class:`Work`).
STAGES: Tuple[Tuple[str, Callable[[Work], None]], ...] = (
    ("data", data_stage),
    ("train", train_stage),
    ("prune", prune_stage),
    ("qat", qat_stage),
    ("export", export_stage),
    ("evaluate", evaluate_stage),
    ("devices", devices_stage),
    ("bundle", bundle_stage),
    ("report", report_stage),
)

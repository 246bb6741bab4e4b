"""TFLite metadata inside the model file: what Android Studio's ML binding and MediaPipe Tasks read.

The metadata (name, description, input normalization, labels as an associated file,
the output as a classification tensor) is written by MediaPipe's maintained writer
(``mediapipe.tasks.python.metadata.metadata_writers``), run in its own environment
(:mod:`pipeline.publish.mediapipe_env`).

MediaPipe Tasks' image classifier accepts only RGB(A) image inputs ("Only RGB color
space is supported", "depth = 3 or 4"). A one-channel (grey) model therefore gets an
RGB front before its metadata is written: one 1x1 CONV_2D from the new RGB input to the
old grey input with the ITU-R BT.601 luma weights, the conversion a grey training set
was made with (``pipeline.data.resize``); everything after it is the deploy model
unchanged. On a grey image repeated over R, G and B the front returns the grey value
up to float rounding (the weights sum to 1).
"""

import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from pipeline.errors import ModelFileError
from pipeline.publish.mediapipe_env import MediaPipeEnv, ensure_env

# ITU-R BT.601 luma weights (what PIL's convert("L") uses).
LUMA = (0.299, 0.587, 0.114)
RGB_INPUT_NAME = "image_rgb"
LABELS_FILE = "labels.txt"

__all__ = ["LUMA", "embed_metadata", "read_metadata", "rgb_front"]


def _schema():
    from ai_edge_litert import schema_py_generated as s
    return s


def rgb_front(model_bytes: bytes) -> bytes:
    """The model with an RGB input in front of its one-channel float input.

    Args:
        model_bytes: a .tflite whose single input is float32 [1, H, W, 1].

    Returns:
        A .tflite whose input is float32 [1, H, W, 3] (named ``image_rgb``), converted to
        grey by a 1x1 CONV_2D with :data:`LUMA` and fed to the original graph.

    Raises:
        ModelFileError: the model has not exactly one float32 [1, H, W, 1] input.
    """
    import flatbuffers

    s = _schema()
    model = s.ModelT.InitFromObj(s.Model.GetRootAs(model_bytes, 0))
    sg = model.subgraphs[0]
    if len(model.subgraphs) != 1 or len(sg.inputs) != 1:
        raise ModelFileError("an RGB front needs a model with one subgraph and one input")
    grey_index = int(sg.inputs[0])
    grey = sg.tensors[grey_index]
    shape = [int(d) for d in grey.shape]
    if grey.type != s.TensorType.FLOAT32 or len(shape) != 4 or shape[-1] != 1:
        raise ModelFileError(f"an RGB front needs a float32 [1, H, W, 1] input; the model's input is "
                             f"{_type_name(s, grey.type)} {shape}")

    def buffer(data: Optional[np.ndarray]) -> int:
        b = s.BufferT()
        b.data = np.frombuffer(data.tobytes(), np.uint8) if data is not None else None
        model.buffers.append(b)
        return len(model.buffers) - 1

    def tensor(name: str, dims, buf: int, signature=None) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), np.array(dims, np.int32), s.TensorType.FLOAT32, buf
        if signature is not None:
            t.shapeSignature = np.array(signature, np.int32)
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    sig = None if grey.shapeSignature is None else [*[int(d) for d in grey.shapeSignature[:-1]], 3]
    rgb = tensor(RGB_INPUT_NAME, [*shape[:-1], 3], buffer(None), sig)
    weights = tensor("rgb_to_grey/luma", [1, 1, 1, 3], buffer(np.array(LUMA, np.float32)))
    bias = tensor("rgb_to_grey/bias", [1], buffer(np.zeros(1, np.float32)))

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CONV_2D
    code.version = 1
    model.operatorCodes.append(code)
    conv = s.OperatorT()
    conv.opcodeIndex = len(model.operatorCodes) - 1
    conv.inputs, conv.outputs = np.array([rgb, weights, bias], np.int32), np.array([grey_index], np.int32)
    opts = s.Conv2DOptionsT()
    opts.padding, opts.strideW, opts.strideH = s.Padding.VALID, 1, 1
    opts.dilationWFactor = opts.dilationHFactor = 1
    opts.fusedActivationFunction = s.ActivationFunctionType.NONE
    conv.builtinOptionsType, conv.builtinOptions = s.BuiltinOptions.Conv2DOptions, opts
    sg.operators.insert(0, conv)
    sg.inputs = np.array([rgb], np.int32)
    for sdef in model.signatureDefs or []:
        for t in sdef.inputs or []:
            if t.tensorIndex == grey_index:
                t.tensorIndex, t.name = rgb, RGB_INPUT_NAME.encode()
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _type_name(s, code: int) -> str:
    return next((k for k, v in vars(s.TensorType).items() if v == code), str(code)).lower()


def embed_metadata(model_bytes: bytes, *, name: str, description: str, labels: Sequence[str],
                   channels: int, input_description: str, output_description: str,
                   env: Optional[MediaPipeEnv] = None) -> Dict[str, Any]:
    """The model with TFLite metadata embedded by MediaPipe's metadata writer.

    Inputs are normalized as ``x = (pixel - 0) / 255`` per channel (what the pipeline
    trains and evaluates with). A one-channel float-input model first gets :func:`rgb_front`.

    Args:
        model_bytes: the metadata-free .tflite (a float32 or integer image input).
        name, description: the model's name and description in the metadata.
        labels: class names in output-index order (packed as ``labels.txt``).
        channels: the model's input channels (1 or 3).
        input_description, output_description: what the tensors hold, for people.
        env: the MediaPipe environment (built if None and missing).

    Returns:
        ``{"model": bytes with metadata, "metadata": the writer's JSON, "rgb_front": bool,
        "color_space": "RGB" or "GRAYSCALE"}``. A one-channel model with an integer input
        gets no front and GRAYSCALE metadata: MediaPipe Tasks cannot load it.

    Raises:
        DeviceUnavailableError: the MediaPipe environment cannot be built or its writer failed.
    """
    env = env or ensure_env()
    front = channels == 1 and _input_is_float(model_bytes)
    src = rgb_front(model_bytes) if front else model_bytes
    color = "GRAYSCALE" if channels == 1 and not front else "RGB"
    n = 1 if color == "GRAYSCALE" else 3
    spec = {"name": name, "description": description, "labels": list(labels),
            "mean": [0.0] * n, "std": [255.0] * n, "color_space": color,
            "input_description": input_description, "output_description": output_description}
    with tempfile.TemporaryDirectory(prefix="mm-metadata-") as tmp:
        import json

        (Path(tmp) / "in.tflite").write_bytes(src)
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        meta = env.run(["write", Path(tmp) / "in.tflite", Path(tmp) / "out.tflite", Path(tmp) / "spec.json"],
                       "writing TFLite metadata")
        out = (Path(tmp) / "out.tflite").read_bytes()
    return {"model": out, "metadata": meta, "rgb_front": front, "color_space": color}


def _input_is_float(model_bytes: bytes) -> bool:
    s = _schema()
    sg = s.Model.GetRootAs(model_bytes, 0).Subgraphs(0)
    return sg.Tensors(sg.Inputs(0)).Type() == s.TensorType.FLOAT32


def read_metadata(model_bytes: bytes, env: Optional[MediaPipeEnv] = None) -> Dict[str, Any]:
    """The metadata embedded in a model as MediaPipe's MetadataDisplayer reads it back.

    Returns:
        ``{"metadata": the metadata JSON, "associated_files": {name: text}}``.

    Raises:
        DeviceUnavailableError: no metadata, or the displayer failed (its message is kept).
    """
    env = env or ensure_env()
    with tempfile.TemporaryDirectory(prefix="mm-metadata-") as tmp:
        (Path(tmp) / "model.tflite").write_bytes(model_bytes)
        return env.run(["read", Path(tmp) / "model.tflite"], "reading TFLite metadata")


def classify_with_mediapipe(model_path: Path, images: np.ndarray, env: Optional[MediaPipeEnv] = None) -> np.ndarray:
    """Scores of MediaPipe Tasks' ImageClassifier on ``images`` (uint8 RGB [N, H, W, 3]).

    Returns:
        float32 [N, classes], the score of every category by its index.
    """
    env = env or ensure_env()
    with tempfile.TemporaryDirectory(prefix="mm-mediapipe-") as tmp:
        np.save(Path(tmp) / "images.npy", np.ascontiguousarray(images, np.uint8))
        env.run(["classify", Path(model_path).resolve(), Path(tmp) / "images.npy", Path(tmp) / "scores.npy"],
                "MediaPipe Tasks' image classifier")
        return np.load(Path(tmp) / "scores.npy")

"""A one-node SSD post-processing model: TFLite's own custom op ``TFLite_Detection_PostProcess``.

Two inputs (box encodings [1, N, 4], class scores [1, N, classes + 1]), constant anchors,
and the op's four outputs (boxes, classes, scores, number of detections): a custom op
that TFLite registers in its builtin resolver, so every runtime must load it.
"""

from pathlib import Path

import numpy as np

OP = "TFLite_Detection_PostProcess"


def detection_model(path: Path, anchors: int = 8, classes: int = 2, max_detections: int = 3) -> Path:
    """Writes the model to ``path`` (anchors spread over the unit square) and returns it."""
    import flatbuffers
    from flatbuffers import flexbuffers

    from pipeline.tflite.verify import schema

    s = schema()
    grid = np.linspace(0.1, 0.9, anchors, dtype=np.float32)
    anchor_data = np.stack([grid, grid[::-1], np.full(anchors, 0.2, np.float32),
                            np.full(anchors, 0.3, np.float32)], axis=1)  # y, x, h, w

    def tensor(name, shape, buffer=0):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), s.TensorType.FLOAT32, buffer
        return t

    m = max_detections
    tensors = [tensor("box_encodings", (1, anchors, 4)), tensor("class_predictions", (1, anchors, classes + 1)),
               tensor("anchors", (anchors, 4), buffer=1), tensor("detection_boxes", (1, m, 4)),
               tensor("detection_classes", (1, m)), tensor("detection_scores", (1, m)),
               tensor("num_detections", (1,))]
    code = s.OperatorCodeT()
    code.deprecatedBuiltinCode = code.builtinCode = s.BuiltinOperator.CUSTOM
    code.customCode, code.version = OP, 1
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3, 4, 5, 6]
    op.customOptionsFormat = s.CustomOptionsFormat.FLEXBUFFERS
    op.customOptions = list(flexbuffers.Dumps({
        "max_detections": m, "max_classes_per_detection": 1, "detections_per_class": m,
        "use_regular_nms": False, "nms_score_threshold": 0.0, "nms_iou_threshold": 0.5,
        "num_classes": classes, "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0}))
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0, 1], [3, 4, 5, 6], [op]
    empty, weights = s.BufferT(), s.BufferT()
    weights.data = list(anchor_data.tobytes())
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sg]
    model.buffers, model.description = [empty, weights], "detection post-processing test model"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path

"""Object detection: boxes, data sets with boxes, anchors, SSDLite training, export
with TFLite's detection postprocess op, and COCO evaluation.

Boxes are normalized ``[ymin, xmin, ymax, xmax]`` float32 in [0, 1] everywhere (the
order TFLite's detection outputs use). Anchors are ``[yc, xc, h, w]``, normalized.
Classes are 0-based indexes into the set's labels; the detector's class output has a
background column in front (index 0), as TFLite's postprocess op expects.
"""

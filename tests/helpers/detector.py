"""A tiny SSD-style detector with crafted weights, and images it detects known objects in.

Its box head gives the same encodings at every anchor (so each box is its anchor moved
by a known amount) and its class head scores class c at a cell by the mean of image
channel c there, so a painted square gives a known detection.
"""

import numpy as np

SIZE, CLASSES = 64, 3
GRIDS = (4, 2)  # feature maps: 16 and 32 pixels per cell
BOX_BIAS = (1.0, -1.0, 0.5, -0.5)  # every box encoding [ty, tx, th, tw] of the crafted detector


def grid_anchors():
    """One anchor per cell of each grid, exactly the cell: ``[yc, xc, h, w]``."""
    rows = [[(i + 0.5) / g, (j + 0.5) / g, 1.0 / g, 1.0 / g] for g in GRIDS for i in range(g) for j in range(g)]
    return np.asarray(rows, np.float32)


ANCHORS = grid_anchors()


def build_detector(box_bias=(0.0, 0.0, 0.0, 0.0), seed=None):
    """Two 1x1-conv heads over a 4x4 and a 2x2 map of average-pooled channels.

    Class c's logit at a cell is 8 * (mean of channel c there) - 4, background 0; the box
    encodings are ``box_bias`` everywhere. With ``seed``, every head weight is random.
    """
    import tf_keras as keras

    layers = keras.layers
    x = layers.Input((SIZE, SIZE, 3), name="image")
    features = layers.Conv2D(3, 1, name="features")(x)
    maps = [layers.AveragePooling2D(SIZE // GRIDS[0], name="grid4")(features)]
    maps.append(layers.AveragePooling2D(2, name="grid2")(maps[0]))
    boxes, logits = [], []
    for g, m in zip(GRIDS, maps):
        boxes.append(layers.Reshape((g * g, 4))(layers.Conv2D(4, 1, name=f"box{g}")(m)))
        logits.append(layers.Reshape((g * g, CLASSES + 1))(layers.Conv2D(CLASSES + 1, 1, name=f"cls{g}")(m)))
    model = keras.Model(x, [layers.Concatenate(1, name="box_encodings")(boxes),
                            layers.Concatenate(1, name="class_logits")(logits)], name="tiny_detector")
    model.get_layer("features").set_weights([np.eye(3, dtype=np.float32)[None, None], np.zeros(3, np.float32)])
    rng = np.random.default_rng(seed)
    for g in GRIDS:
        kernel = np.zeros((1, 1, 3, CLASSES + 1), np.float32)
        kernel[0, 0, np.arange(3), np.arange(1, 4)] = 8.0
        bias = np.asarray([0.0] + [-4.0] * CLASSES, np.float32)
        box = [np.zeros((1, 1, 3, 4), np.float32), np.asarray(box_bias, np.float32)]
        if seed is not None:
            kernel, bias = rng.normal(0, 3, kernel.shape).astype(np.float32), rng.normal(0, 1, 4).astype(np.float32)
            box = [rng.normal(0, 1, (1, 1, 3, 4)).astype(np.float32), rng.normal(0, 1, 4).astype(np.float32)]
        model.get_layer(f"cls{g}").set_weights([kernel, bias])
        model.get_layer(f"box{g}").set_weights(box)
    return model


def painted(squares):
    """A dark image with bright 16x16 squares: (row, column, channel) on the 4x4 grid,
    or (row, column, channel, level) for a level other than 0.95."""
    image = np.full((SIZE, SIZE, 3), 0.02, np.float32)
    for i, j, c, *level in squares:
        image[16 * i:16 * i + 16, 16 * j:16 * j + 16, c] = level[0] if level else 0.95
    return image


#: Two images: class 0 at cell (0, 0) and class 2 at (2, 3); class 1 at (3, 1).
IMAGES = np.stack([painted([(0, 0, 0), (2, 3, 2)]), painted([(3, 1, 1)])])

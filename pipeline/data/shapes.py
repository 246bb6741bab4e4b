"""The ``shapes`` data set: procedurally rendered shapes, 10 classes (no files needed).

Each split is rendered from its own random stream (seed, split), directly at the
model's input shape, or, below :data:`RENDER_MIN` pixels, at that size and then fitted
down like any other data set's images.
"""

from typing import Tuple

import numpy as np

from models import MIN_INPUT_SIZE
from pipeline.data.resize import fit_images, resize_matrix
from pipeline.data.splits import SPLITS, Splits, assemble, check_count, check_input_shape, check_seed, stream_rng
from pipeline.errors import ConfigError
from pipeline.recipe.schema import DataConfig

SHAPES_LABELS = ("disc", "ring", "square", "frame", "triangle",
                 "plus", "cross", "h-stripes", "v-stripes", "dot-grid")


#: Images rendered per split when the recipe leaves a count unset (``null``).
SHAPES_COUNTS = {"train": 3000, "val": 500, "test": 1000}
#: The smallest height and width the renderer draws at: the style below was tuned
#: at 32x32, and thin strokes and stripes alias when drawn at fewer pixels, so a
#: smaller input is rendered at this size and fitted down (``data.fit``).
RENDER_MIN = 32


def load_shapes(cfg: DataConfig, input_shape: Tuple[int, int, int], seed: int,
               log=None) -> Splits:
    """Generated shapes, 10 classes, with noise, clutter and occlusion (no files needed).

    Rendered directly at ``input_shape`` (height and width >= ``models.MIN_INPUT_SIZE``;
    1 or 3 channels, colour carries no label information); a side under
    :data:`RENDER_MIN` is rendered at :data:`RENDER_MIN` and the images fitted to the
    input by ``cfg.fit``. ``None`` sample counts mean :data:`SHAPES_COUNTS`, since the
    supply is unlimited. Balanced classes.
    """
    h, w, c = check_input_shape(input_shape)
    if min(h, w) < MIN_INPUT_SIZE:
        raise ConfigError(f"shapes: input height and width must be >= {MIN_INPUT_SIZE}, got {h}x{w}")
    rh, rw = max(h, RENDER_MIN), max(w, RENDER_MIN)
    check_seed(seed)
    parts = {}
    for i, name in enumerate(SPLITS):
        n = getattr(cfg, f"{name}_samples")
        n = SHAPES_COUNTS[name] if n is None else n
        check_count(name, n)
        # One stream per split: the test set does not change when train_samples does.
        rng = stream_rng(seed, "shapes", name)
        y = rng.permutation(np.arange(n) % len(SHAPES_LABELS)).astype(np.int64)
        x = render_shapes(y, (rh, rw, c), rng)
        parts[name] = (x if (rh, rw) == (h, w) else fit_images(x, input_shape, cfg.fit), y)
    report = {
        "source": "generated",
        "requested": {k: len(v[1]) for k, v in parts.items()},
        "available": {k: len(v[1]) for k, v in parts.items()},
        "fit": ("rendered at the input size" if (rh, rw) == (h, w)
                else f"rendered at {rh}x{rw}, then {cfg.fit}"),
    }
    return assemble("shapes", parts, SHAPES_LABELS, input_shape, report)


# Shape kinds: oriented classes are only rotated a little around a base angle
# (plus vs cross differ by 45 degrees, h- vs v-stripes by 90); the rest spin freely.
_FREE_ROTATION = {"disc", "ring", "square", "frame", "triangle", "dot-grid"}
_BASE_ANGLE = {"plus": 0.0, "cross": np.pi / 4, "h-stripes": 0.0, "v-stripes": np.pi / 2}
_MAX_JITTER = np.deg2rad(20.0)  # leaves a 5 degree gap between plus and cross
_CHUNK = 512  # images rendered at once: bounds memory at large input sizes
# Style of an ordinary image and of a deliberately hard one (small, faint, noisy,
# off-centre, often occluded, either polarity). Measured with MobileNetV2-0.35
# (first stride 1, BN momentum 0.9, Adam 3e-3 cosine, batch 64), 3000 32x32 train
# images, 3 epochs, seeds 0 and 1: test accuracy 88.1/85.5% grey, 85.8/86.7% RGB
# (2-core CPU). Every extra difficulty in the ordinary style costs 5-10 points at
# that budget (off-centre placement alone cost 12); the hard 6% stay ambiguous
# however long one trains (12 epochs: 93.6% grey).
_NORMAL = dict(r=(0.32, 0.45), contrast=(0.6, 0.9), noise=(0.0, 0.05), grad=(0.0, 0.08),
               blotch=(0.0, 0.03), bg=(0.0, 0.25), bright=0.97, pos=0.15, occlude=0.03,
               distract=0.1)
_HARD = dict(r=(0.12, 0.2), contrast=(0.12, 0.3), noise=(0.15, 0.3), grad=(0.0, 0.35),
             blotch=(0.0, 0.2), bg=(0.0, 1.0), bright=0.5, pos=1.0, occlude=0.5, distract=0.6)
_HARD_FRACTION = 0.06


def render_shapes(y: np.ndarray, input_shape: Tuple[int, int, int],
                  rng: np.random.Generator) -> np.ndarray:
    """Renders one image of class ``y[i]`` (index into SHAPES_LABELS) per label.

    Each image: a background (level, gradient, smooth blotches), the shape at a
    random position, size, aspect, rotation, stroke thickness and contrast
    (either polarity), sometimes partly erased by an occluder, up to three small
    distractors (dots, thin lines) and per-pixel Gaussian noise. Returns float32
    NHWC in [0, 1].
    """
    h, w, c = input_shape
    n = len(y)
    s = float(min(h, w))
    u = rng.uniform
    # All per-image parameters are drawn up front, so chunking changes nothing.
    hard = rng.random(n) < _HARD_FRACTION

    def style(key, size=None):  # uniform in the image's style range, or a probability
        lo_n, hi_n = _NORMAL[key] if isinstance(_NORMAL[key], tuple) else (_NORMAL[key],) * 2
        lo_h, hi_h = _HARD[key] if isinstance(_HARD[key], tuple) else (_HARD[key],) * 2
        shape = (n,) if size is None else (n, size)
        lo = np.where(hard, lo_h, lo_n).reshape((n,) + (1,) * (len(shape) - 1))
        hi = np.where(hard, hi_h, hi_n).reshape(lo.shape)
        return lo + (hi - lo) * rng.random(shape)

    p = {
        "r": style("r") * s,                          # shape radius, pixels
        "aspect": np.exp(u(-0.12, 0.12, n)),
        "t": u(0.12, 0.28, n),                        # stroke half-thickness, shape units
        "k": rng.integers(2, 4, n),                   # bars / dots per row
        "jitter": u(-_MAX_JITTER, _MAX_JITTER, n),
        "spin": u(0, 2 * np.pi, n),
        "bg": style("bg"),
        "contrast": style("contrast"),
        "polarity": rng.random(n) < style("bright"),
        "grad_amp": style("grad"),
        "grad_dir": u(0, 2 * np.pi, n),
        "blotch_amp": style("blotch"),
        "noise": style("noise"),
        "occlude": rng.random(n) < style("occlude"),
        "occ_off": u(-0.9, 0.9, (n, 2)),
        "occ_half": u(0.25, 0.55, (n, 2)),
        "tint_bg": _hue_tint(u(-0.2, 0.2, (n, c))) if c == 3 else np.zeros((n, 1)),
        "tint_fg": _hue_tint(u(-0.2, 0.2, (n, c))) if c == 3 else np.zeros((n, 1)),
        "d_on": rng.random((n, 3)) < style("distract", 3),
        "d_line": rng.random((n, 3)) < 0.5,
        "d_pos": u(0, 1, (n, 3, 2)) * [w, h],
        "d_size": u(0.03, 0.08, (n, 3)) * s,          # dot radius, or line half-length / 3
        "d_angle": u(0, np.pi, (n, 3)),
        "d_level": u(0.0, 1.0, (n, 3)),
    }
    margin = 0.6 * p["r"]
    pos = style("pos")
    p["cx"] = w / 2 + u(-0.5, 0.5, n) * pos * (w - 2 * margin)
    p["cy"] = h / 2 + u(-0.5, 0.5, n) * pos * (h - 2 * margin)
    names = np.array(SHAPES_LABELS)[y]
    free = np.isin(names, list(_FREE_ROTATION))
    base = np.array([_BASE_ANGLE.get(k, 0.0) for k in names])
    p["angle"] = np.where(free, p["spin"], base + p["jitter"])
    # Foreground level: bg +- contrast. Where the drawn polarity has no room for the
    # contrast, take the side with more room, and at most that room.
    room_up, room_down = 1 - p["bg"], p["bg"]
    fits = np.where(p["polarity"], room_up, room_down) >= p["contrast"]
    up = np.where(fits, p["polarity"], room_up > room_down)
    p["fg"] = p["bg"] + np.where(up, np.minimum(p["contrast"], room_up),
                                 -np.minimum(p["contrast"], room_down))
    blotch_grid = rng.standard_normal((n, 4, 4))
    out = np.empty((n, h, w, c), np.float32)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(n, lo + _CHUNK))
        noise = rng.standard_normal((sl.stop - lo, h, w, c), dtype=np.float32)
        out[sl] = _render_chunk(y[sl], {k: v[sl] for k, v in p.items()}, blotch_grid[sl], noise, h, w, c)
    return out


def _hue_tint(t: np.ndarray) -> np.ndarray:
    """Random RGB offsets with zero luma: colour that leaves the grey image unchanged."""
    return t - (t @ np.array([0.299, 0.587, 0.114]))[:, None]


def _render_chunk(y, p, blotch_grid, noise, h, w, c) -> np.ndarray:
    f32 = np.float32
    n = len(y)
    ys = (np.arange(h, dtype=f32) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=f32) + 0.5)[None, None, :]

    def col(a):  # per-image scalar -> broadcastable (n, 1, 1)
        return np.asarray(a, f32)[:, None, None]

    dx, dy = xs - col(p["cx"]), ys - col(p["cy"])
    cos, sin = col(np.cos(p["angle"])), col(np.sin(p["angle"]))
    r = col(p["r"])
    rx, ry = r * col(p["aspect"]), r / col(p["aspect"])
    uu = (cos * dx + sin * dy) / rx
    vv = (-sin * dx + cos * dy) / ry
    sd = np.empty((n, h, w), f32)
    for k, name in enumerate(SHAPES_LABELS):
        idx = np.flatnonzero(y == k)
        if idx.size:
            sd[idx] = _SDF[name](uu[idx], vv[idx], col(p["t"])[idx], p["k"][idx])
    alpha = np.clip(0.5 - sd * r, 0, 1)  # signed distance in pixels, 1 px anti-aliasing
    # Occluder: a box near the shape that erases it (the background shows through).
    # Distractors and occluders are drawn only on the images that have them.
    occ = np.flatnonzero(p["occlude"])
    if occ.size:
        ro = r[occ]
        ox = dx[occ] - col(p["occ_off"][occ, 0]) * ro
        oy = dy[occ] - col(p["occ_off"][occ, 1]) * ro
        occ_sd = np.maximum(np.abs(ox) - col(p["occ_half"][occ, 0]) * ro,
                            np.abs(oy) - col(p["occ_half"][occ, 1]) * ro)
        alpha[occ] *= np.clip(occ_sd + 0.5, 0, 1)

    # Background: level + linear gradient + smooth blotches (a 4x4 grid upsampled).
    gx, gy = xs / w - 0.5, ys / h - 0.5
    grad = col(p["grad_amp"]) * (col(np.cos(p["grad_dir"])) * gx + col(np.sin(p["grad_dir"])) * gy)
    blotch = resize_matrix(4, h) @ blotch_grid.astype(f32) @ resize_matrix(4, w).T
    field = (grad + blotch * col(p["blotch_amp"]))[..., None]
    bg = np.asarray(p["bg"][:, None] + p["tint_bg"], f32)[:, None, None, :]
    fg = np.asarray(p["fg"][:, None] + p["tint_fg"], f32)[:, None, None, :]
    a = alpha[..., None]
    img = (bg + field) * (1 - a) + (fg + 0.3 * field) * a

    # Distractors: small dots or thin short lines of a random level, over everything.
    for j in range(3):
        for is_line in (False, True):
            on = np.flatnonzero(p["d_on"][:, j] & (p["d_line"][:, j] == is_line))
            if not on.size:
                continue
            ddx, ddy = xs - col(p["d_pos"][on, j, 0]), ys - col(p["d_pos"][on, j, 1])
            size = col(p["d_size"][on, j])
            if is_line:  # a 1-pixel-wide segment, 6 x size long
                ca, sa = col(np.cos(p["d_angle"][on, j])), col(np.sin(p["d_angle"][on, j]))
                along = np.clip(ca * ddx + sa * ddy, -3 * size, 3 * size)
                d_sd = np.hypot(ddx - along * ca, ddy - along * sa) - 0.5
            else:
                d_sd = np.hypot(ddx, ddy) - size
            da = np.clip(0.5 - d_sd, 0, 1)[..., None]
            img[on] = img[on] * (1 - da) + col(p["d_level"][on, j])[..., None] * da

    img += noise * col(p["noise"])[..., None]
    return np.clip(img, 0, 1, out=img)


def _sdf_disc(u, v, t, k):
    return np.hypot(u, v) - 1


def _sdf_ring(u, v, t, k):
    return np.abs(np.hypot(u, v) - (1 - t)) - t


def _sdf_square(u, v, t, k):
    return np.maximum(np.abs(u), np.abs(v)) - 0.8


def _sdf_frame(u, v, t, k):
    return np.abs(np.maximum(np.abs(u), np.abs(v)) - (0.8 - t)) - t


def _sdf_triangle(u, v, t, k):
    # Equilateral, circumradius 1: the largest of the three edge half-plane distances.
    d = None
    for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        e = np.float32(np.cos(a)) * u + np.float32(np.sin(a)) * v - 0.5
        d = e if d is None else np.maximum(d, e)
    return d


def _sdf_plus(u, v, t, k):
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 1, av - t), np.maximum(au - t, av - 1))


def _sdf_stripes(u, v, t, k):
    # k (2 or 3) horizontal bars spread over [-0.75, 0.75]; thin enough not to merge.
    k = k[:, None, None].astype(np.float32)
    spacing = 1.5 / (k - 1)
    t = np.minimum(t, 0.3 * spacing)
    centre = np.clip(np.round((v + 0.75) / spacing), 0, k - 1) * spacing - 0.75
    return np.maximum(np.abs(u) - 0.9, np.abs(v - centre) - t)


def _sdf_dot_grid(u, v, t, k):
    k = k[:, None, None].astype(np.float32)
    spacing = 1.4 / (k - 1)
    gu = np.clip(np.round((u + 0.7) / spacing), 0, k - 1) * spacing - 0.7
    gv = np.clip(np.round((v + 0.7) / spacing), 0, k - 1) * spacing - 0.7
    return np.hypot(u - gu, v - gv) - np.minimum(t + 0.08, 0.3 * spacing)


# Signed distance (shape units, < 0 inside) of each class in its own rotated frame:
# cross and v-stripes are plus and h-stripes turned by their _BASE_ANGLE.
_SDF = {
    "disc": _sdf_disc, "ring": _sdf_ring, "square": _sdf_square, "frame": _sdf_frame,
    "triangle": _sdf_triangle, "plus": _sdf_plus, "cross": _sdf_plus,
    "h-stripes": _sdf_stripes, "v-stripes": _sdf_stripes, "dot-grid": _sdf_dot_grid,
}

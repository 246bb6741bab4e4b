"""On-the-fly training augmentation: random shift, zoom, rotation, brightness, contrast.

:func:`augment_images` draws a new random transform per image from a generator the
caller seeds (training seeds it with the recipe seed, the stage and the epoch), so
every epoch sees new images and a rerun sees the same ones, byte for byte.

Geometry is one affine map per image (rotation about the centre, isotropic zoom,
translation), sampled bilinearly with the edge pixels repeated outside the image:
the background of white-on-black digits and of black-on-white scans alike. Then
brightness (an added offset) and contrast (scaled about the image's mean), clipped
to [0, 1]. A horizontal flip is off unless asked for: it turns digits and letters
into other symbols.

numpy only (no TensorFlow): the data package stays light and the transforms are
testable without a model. Training draws an epoch's transforms up front
(:func:`draw_augment`) and applies them batch by batch as the images stream in
(:func:`apply_augment`): the same images as one call on the whole split.
"""

from dataclasses import dataclass

import numpy as np

from pipeline.recipe.schema import AugmentConfig

# Images per vectorised chunk: bounds the coordinate arrays (chunk x H x W float32)
# at a few tens of MiB for a 64x64 input.
_CHUNK = 2048


@dataclass(frozen=True)
class AugmentDraw:
    """The random transform of each of n images, drawn up front (see :func:`draw_augment`)."""

    angle: np.ndarray
    zoom: np.ndarray
    shift: np.ndarray
    flip: np.ndarray
    delta: np.ndarray
    factor: np.ndarray

    def __len__(self) -> int:
        return len(self.angle)


def draw_augment(n: int, cfg: AugmentConfig, rng: np.random.Generator) -> AugmentDraw:
    """Draws the transforms of ``n`` images, every parameter for all images in a fixed
    order, so that applying them batch by batch gives what one call on all images gives."""
    angle = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation, n))
    zoom = rng.uniform(1.0 - cfg.zoom, 1.0 + cfg.zoom, n)
    shift = rng.uniform(-cfg.shift, cfg.shift, (n, 2))
    flip = rng.random(n) < 0.5 if cfg.hflip else np.zeros(n, bool)
    delta = rng.uniform(-cfg.brightness, cfg.brightness, n)
    factor = rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast, n)
    return AugmentDraw(angle, zoom, shift, flip, delta, factor)


def apply_augment(x: np.ndarray, draw: AugmentDraw, start: int = 0) -> np.ndarray:
    """``x`` (images ``start .. start + len(x)`` of the draw) transformed; ``x`` is not changed."""
    n = len(x)
    sl = slice(start, start + n)
    angle, zoom, shift, flip = draw.angle[sl], draw.zoom[sl], draw.shift[sl], draw.flip[sl]
    out = np.empty_like(x, dtype=np.float32)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        out[s:e] = _affine(x[s:e], angle[s:e], zoom[s:e], shift[s:e], flip[s:e])
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    out = (out - mean) * draw.factor[sl][:, None, None, None].astype(np.float32) + mean
    out += draw.delta[sl][:, None, None, None].astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def augment_images(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """A randomly transformed copy of ``x`` (float32 NHWC in [0, 1]); ``x`` is not changed.

    Args:
        x: images, float32 NHWC, values in [0, 1].
        cfg: the ranges of each transform (``enabled: false`` returns ``x`` unchanged).
        rng: the generator every random draw comes from.

    Returns:
        float32 array of ``x``'s shape, values in [0, 1].
    """
    if not cfg.enabled or len(x) == 0:
        return x
    return apply_augment(x, draw_augment(len(x), cfg, rng))


def _affine(x: np.ndarray, angle, zoom, shift, flip) -> np.ndarray:
    """Bilinear resampling of each image through its inverse affine map (edges repeated)."""
    n, h, w, _ = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32) - cy, np.arange(w, dtype=np.float32) - cx,
                         indexing="ij")
    cos = (np.cos(angle) / zoom).astype(np.float32)[:, None, None]
    sin = (np.sin(angle) / zoom).astype(np.float32)[:, None, None]
    # Output pixel p comes from source R(-angle) (p - t) / zoom: t shifts, in pixels.
    dy = yy[None] - (shift[:, 0] * h).astype(np.float32)[:, None, None]
    dx = xx[None] - (shift[:, 1] * w).astype(np.float32)[:, None, None]
    dx = np.where(flip[:, None, None], -dx, dx)
    src_y = cos * dy - sin * dx + cy
    src_x = sin * dy + cos * dx + cx
    src_y = np.clip(src_y, 0, h - 1)
    src_x = np.clip(src_x, 0, w - 1)
    y0 = np.minimum(np.floor(src_y).astype(np.int64), h - 2 if h > 1 else 0)
    x0 = np.minimum(np.floor(src_x).astype(np.int64), w - 2 if w > 1 else 0)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (src_y - y0)[..., None], (src_x - x0)[..., None]
    b = np.arange(n)[:, None, None]
    top = x[b, y0, x0] * (1 - fx) + x[b, y0, x1] * fx
    bottom = x[b, y1, x0] * (1 - fx) + x[b, y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def epoch_rng(seed: int, stage: str, epoch: int) -> np.random.Generator:
    """The generator of one training epoch of one stage: new images each epoch, the same on a rerun."""
    from pipeline.data.splits import stream_rng

    return stream_rng(seed, "augment", stage, str(epoch))


"""Fitting float NHWC images to a model's input: resize or pad, and channel conversion.

A separable triangle filter (Pillow's BILINEAR) in numpy: no TensorFlow, and the
same arrays byte for byte on every machine.
"""

from typing import Dict

import numpy as np

from pipeline.errors import ConfigError
from pipeline.vocabulary import FIT_MODES, check_implements


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a triangle filter, Pillow BILINEAR style.

    Interpolates when enlarging; when shrinking the filter widens to the scale
    factor, so it averages (anti-aliases) instead of skipping pixels.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    j = np.arange(n_in) + 0.5
    wts = np.maximum(0.0, 1.0 - np.abs(j[None, :] - centres[:, None]) / support)
    return (wts / wts.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_images(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resizes float NHWC images to h x w (separable triangle filter)."""
    n, h0, w0, c = x.shape
    if (h0, w0) == (h, w):
        return x
    a, b = resize_matrix(h0, h), resize_matrix(w0, w)
    out = a @ x.transpose(0, 3, 1, 2) @ b.T  # (n, c, h, w)
    return np.clip(out.transpose(0, 2, 3, 1), 0, 1)


def fit_images(x: np.ndarray, input_shape, fit: str) -> np.ndarray:
    """Float NHWC images -> input height and width, by ``resize`` or ``pad``.

    ``resize`` stretches to the input size (aspect ratio not kept). ``pad`` keeps
    the aspect ratio: it enlarges by the largest whole factor that fits (pixel
    replication, so 28x28 -> 32x32 is a pure 2-pixel zero border) or shrinks to
    fit, then centres the image on a zero (black) canvas. Channels pass through.
    """
    h, w = int(input_shape[0]), int(input_shape[1])
    c = x.shape[3]
    check_fit(fit)
    out = FITS[fit](x, h, w)
    c_out = int(input_shape[2]) if len(input_shape) > 2 else c
    if c == 1 and c_out == 3:
        out = np.repeat(out, 3, axis=3)
    elif c == 3 and c_out == 1:
        out = _to_grey(out)
    return out.astype(np.float32, copy=False)


def check_fit(fit: str) -> None:
    """Raises ConfigError unless ``fit`` is a fit mode (:data:`pipeline.vocabulary.FIT_MODES`)."""
    if fit not in FIT_MODES:
        raise ConfigError(f"data.fit: expected one of {', '.join(FIT_MODES.names())}; got {fit!r}")


def _pad(x: np.ndarray, h: int, w: int) -> np.ndarray:
    n, h0, w0, c = x.shape
    k = min(h // h0, w // w0)
    if k >= 1:
        y = np.repeat(np.repeat(x, k, axis=1), k, axis=2) if k > 1 else x
    else:
        s = min(h / h0, w / w0)
        y = resize_images(x, max(1, round(h0 * s)), max(1, round(w0 * s)))
    out = np.zeros((n, h, w, c), np.float32)
    top, left = (h - y.shape[1]) // 2, (w - y.shape[2]) // 2
    out[:, top:top + y.shape[1], left:left + y.shape[2]] = y
    return out


#: Fit mode -> how float images are fitted (the Pillow twin is pipeline.data.cache.PIL_FITS).
FITS = {"resize": resize_images, "pad": _pad}
check_implements(FIT_MODES, FITS, "pipeline.data.resize")


def _to_grey(x: np.ndarray) -> np.ndarray:
    """RGB (last axis) -> one channel, ITU-R 601 luma (what Pillow's "L" uses)."""
    return (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def channel_note(src: int, dst: int, n: int = 1) -> Dict[str, int]:
    """{conversion: number of images} for a channel-count change, else {}."""
    if src == 1 and dst == 3:
        return {"grey to RGB (channel repeated)": n}
    if src == 3 and dst == 1:
        return {"RGB to grey (ITU-R 601 luma)": n}
    return {}

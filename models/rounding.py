"""Channel rounding shared by the builders and the genotypes (no TensorFlow import)."""


def make_divisible(v, divisor=8, min_value=None):
    """Rounds a channel count to the nearest multiple of ``divisor``.

    The rule of the MobileNet reference code: never below ``min_value`` and never
    more than 10% below ``v``.

    Args:
        v: the unrounded channel count (e.g. ``alpha * 32``).
        divisor: the multiple to round to.
        min_value: the smallest result allowed; defaults to ``divisor``.

    Returns:
        The rounded channel count (an int).
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v

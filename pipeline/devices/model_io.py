"""Inputs and outputs of any TFLite model on a device: what to feed it, how to compare it.

A device run takes one array per model input (first axis: samples), in the order of the
model's inputs. They come from :func:`random_inputs` (seeded), or from an ``.npz`` keyed
by input tensor name (:func:`load_named_inputs`); :func:`validate_named_inputs` checks
them against the file before any runtime sees them. Every output is then compared like
for like with the host's (:func:`compare_output`), and a runtime that lacks an op is a
verdict (:func:`not_loadable`), not a failure.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pipeline.errors import ConfigError, DataError

#: The float range of random inputs by default (image inputs in [0, 1)).
DEFAULT_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the file declares it (scale 0: not quantized)."""

    name: str
    shape: Tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.integer) and self.scale > 0

    def describe(self) -> str:
        """``int8 [1, 10] scale 0.1 zero_point 3`` (quantization only where there is some)."""
        q = f" scale {self.scale:g} zero_point {self.zero_point}" if self.quantized else ""
        return f"{self.dtype} {list(self.shape)}{q}"


def _spec(model, index: int) -> TensorSpec:
    t = model.tensors[index]
    q = t.quantization
    return TensorSpec(name=t.name, shape=tuple(int(s) for s in t.shape), dtype=t.dtype,
                      scale=float(q.scale[0]) if len(q.scale) == 1 else 0.0,
                      zero_point=int(q.zero_point[0]) if len(q.zero_point) == 1 else 0)


def input_specs(model) -> List[TensorSpec]:
    """The inputs of a parsed model (``read_tflite``), in the model's order."""
    return [_spec(model, i) for i in model.inputs]


def output_specs(model) -> List[TensorSpec]:
    """The outputs of a parsed model, in the model's order."""
    return [_spec(model, i) for i in model.outputs]


def random_inputs(model, n: int, low: float = DEFAULT_RANGE[0], high: float = DEFAULT_RANGE[1],
                  seed: int = 0) -> List[np.ndarray]:
    """``n`` random samples for every input of ``model``, one array per input.

    Float inputs, and quantized integer inputs, get float32 values uniform in
    ``[low, high)`` (a quantized input is quantized with its scale and zero point in the
    runtime's process, so its values stay within its quantization range); integer
    inputs without quantization get integers uniform in ``[floor(low), ceil(high)]``
    clipped to their dtype. One generator (``seed``) draws the inputs in order: a
    one-input model gets exactly ``default_rng(seed).random((n, *shape))``.

    Raises:
        ConfigError: ``n`` < 1, ``low >= high``, or an input of a dtype with no random values
            here (strings).
    """
    if n < 1:
        raise ConfigError(f"random inputs: need at least one sample, got {n}")
    if not low < high:
        raise ConfigError(f"random inputs: the range [{low}, {high}) is empty")
    rng = np.random.default_rng(seed)
    out = []
    for spec in input_specs(model):
        dtype = np.dtype(spec.dtype)
        shape = (n, *spec.shape[1:])
        if np.issubdtype(dtype, np.floating) or spec.quantized:
            out.append((low + (high - low) * rng.random(shape, dtype=np.float32)).astype(np.float32))
        elif dtype == np.bool_:
            out.append(rng.integers(0, 2, shape).astype(np.bool_))
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            lo, hi = max(int(np.floor(low)), info.min), min(int(np.ceil(high)), info.max)
            out.append(rng.integers(lo, hi, shape, endpoint=True).astype(dtype))
        else:
            raise ConfigError(f"random inputs: input {spec.name!r} is {spec.dtype}; give its values "
                              f"in an .npz instead")
    return out


def validate_named_inputs(model, arrays: Sequence[np.ndarray], source: str) -> int:
    """Checks one array per model input (model order) against the file; returns the samples.

    An input takes arrays of its own dtype with shape ``(N, *shape[1:])``; a float or
    quantized integer input also takes floats (quantized by the runtime's process).
    Every input must have the same ``N`` >= 1.

    Raises:
        DataError: the wrong number of arrays, or an array of the wrong shape or dtype
            (the message names ``source`` and the tensor).
    """
    specs = input_specs(model)
    if len(arrays) != len(specs):
        raise DataError(f"{source}: {len(arrays)} input arrays for {len(specs)} model inputs")
    counts = set()
    for spec, a in zip(specs, arrays):
        want = tuple(spec.shape[1:])
        if a.ndim < 1 or tuple(a.shape[1:]) != want or len(a) == 0:
            raise DataError(f"{source}: input {spec.name!r} has shape {list(a.shape)}; the model "
                            f"expects [N, {', '.join(map(str, want))}] with N >= 1".replace("[N, ]", "[N]"))
        dtype = np.dtype(spec.dtype)
        floats_ok = np.issubdtype(dtype, np.floating) or spec.quantized
        if not (a.dtype == dtype or (floats_ok and np.issubdtype(a.dtype, np.floating))):
            also = " (or floats: it is quantized)" if spec.quantized else ""
            expected = "float" if np.issubdtype(dtype, np.floating) else spec.dtype + also
            raise DataError(f"{source}: input {spec.name!r} has dtype {a.dtype}; the model expects "
                            f"{expected}")
        counts.add(len(a))
    if len(counts) > 1:
        raise DataError(f"{source}: inputs have different numbers of samples "
                        f"({', '.join(f'{s.name} {len(a)}' for s, a in zip(specs, arrays))})")
    return counts.pop()


def load_named_inputs(path: Path, model, samples: Optional[int] = None) -> List[np.ndarray]:
    """The arrays of an ``.npz`` keyed by input tensor name, in the model's input order.

    Args:
        samples: keep at most this many samples of each.

    Raises:
        DataError: unreadable file, a missing or unknown name, or an array of the wrong
            shape or dtype (the message names the file and the tensor).
    """
    names = [s.name for s in input_specs(model)]
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise DataError(f"{path}: not an .npz archive (one array per input tensor name)")
            found = list(data.files)
            missing = [n for n in names if n not in found]
            if missing:
                raise DataError(f"{path}: no array for input tensor {missing[0]!r}; found "
                                f"{', '.join(map(repr, found)) or 'none'} (expected "
                                f"{', '.join(map(repr, names))})")
            unknown = [k for k in found if k not in names]
            if unknown:
                raise DataError(f"{path}: array {unknown[0]!r} names no input tensor of the model "
                                f"(its inputs: {', '.join(map(repr, names))})")
            arrays = [data[n] for n in names]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as .npz ({e})") from None
    if samples is not None:
        arrays = [a[:samples] for a in arrays]
    validate_named_inputs(model, arrays, str(path))
    return arrays


@dataclass(frozen=True)
class OutputAgreement:
    """One model output on the device vs the host, over every sample.

    Attributes:
        name, dtype, shape: the output tensor (shape of one sample, batch included).
        samples: inputs compared.
        exact_count, exact_fraction: samples whose whole output is bit-identical.
        max_abs_diff: largest element difference (quantized units for integer outputs).
        max_rel_diff: ``max_abs_diff`` over the largest host magnitude of that output
            (0 when both are all zero): an error relative to the output's range, which
            stays finite where single elements are near zero.
    """

    name: str
    dtype: str
    shape: Tuple[int, ...]
    samples: int
    exact_count: int
    exact_fraction: float
    max_abs_diff: float
    max_rel_diff: float


def compare_output(name: str, device: np.ndarray, host: np.ndarray) -> OutputAgreement:
    """Agreement of one output (arrays with samples first, same shape; host cast to the device dtype).

    Raises:
        ConfigError: the shapes differ.
    """
    if device.shape != host.shape:
        raise ConfigError(f"output {name!r}: host outputs have shape {list(host.shape)}, device "
                          f"outputs {list(device.shape)}")
    n = len(device)
    d = device.reshape(n, -1)
    h = np.asarray(host).astype(device.dtype, copy=False).reshape(n, -1)
    exact = int(np.sum(np.all(d == h, axis=1)))
    diff = np.abs(d.astype(np.float64) - h.astype(np.float64))
    largest = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(h.astype(np.float64)).max()) if h.size else 0.0
    rel = 0.0 if largest == 0.0 else (largest / scale if scale > 0 else float("inf"))
    return OutputAgreement(name=name, dtype=str(device.dtype), shape=(1, *device.shape[1:]), samples=n,
                           exact_count=exact, exact_fraction=exact / n if n else 0.0,
                           max_abs_diff=largest, max_rel_diff=rel)


def compare_all(names: Sequence[str], device: Sequence[np.ndarray],
                host: Sequence[np.ndarray]) -> Tuple[OutputAgreement, ...]:
    """:func:`compare_output` for every output, in the model's order.

    Raises:
        ConfigError: another number of host outputs than device outputs, or a shape mismatch.
    """
    if len(host) != len(device):
        raise ConfigError(f"{len(host)} host outputs for {len(device)} device outputs")
    return tuple(compare_output(n, d, h) for n, d, h in zip(names, device, host))


def not_loadable(runtime: str, version: str, what: str) -> str:
    """The verdict on a model a runtime cannot load: ``not loadable on litert 2.3.0: custom op X``."""
    return f"not loadable on {runtime} {version}: {what}"


def as_arrays(value) -> Tuple[np.ndarray, ...]:
    """One array per model input or output, from one array or a sequence of them."""
    if isinstance(value, np.ndarray):
        return (value,)
    if isinstance(value, Mapping):
        raise ConfigError("inputs by name must be ordered as the model's inputs first "
                          "(see load_named_inputs)")
    return tuple(np.asarray(v) for v in value)

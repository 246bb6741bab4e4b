"""Checking a TFLite model on an emulated device: the one entry point of this package.

:func:`run_device_check` runs the model on the device's real ARM runtime under
qemu-aarch64 and returns a :class:`DeviceResult`: whether the runtime loads the
model (and if not, which op and version it lacks), accuracy, agreement with the
host's outputs, deterministic instructions per inference split by class, the
executed blocks with their instruction words (for a pipeline model to price),
emulated wall time, and an estimate of peak memory against the device's RAM.
"""

import signal
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pipeline.devices.host_twin import needs_twin, twin_reference, twin_run
from pipeline.devices.blocks import BlockProfile, HotProfile, block_profile, rejoin
from pipeline.devices.guest_result import LoadError, parse_guest_result, parse_load_error
from pipeline.devices.insn_counts import InsnCounts, inference_counts, parse_insn_counts
from pipeline.devices.model_io import (OutputAgreement, as_arrays, compare_all, not_loadable,
                                       validate_named_inputs)
from pipeline.devices.profiles import DeviceProfile, get_device
from pipeline.devices.runner import DeviceRun, run_on_device
from pipeline.devices.runtime import ArmRuntime
from pipeline.devices.targets import RUNTIMES
from pipeline.errors import ConfigError, DeviceOutputError, Log, ModelFileError, RuntimeIncompatibleError
from pipeline.store.atomic import sha256_file
from pipeline.tflite.host import host_outputs_all


@dataclass(frozen=True)
class Agreement:
    """Device outputs vs the host runtime's on the same inputs.

    Attributes:
        host_reference: which host runtime produced the reference: "xnnpack"
            (the pipeline's own ai-edge-litert with its default delegate, when the
            device runs that same runtime and version), the device's runtime and
            version built for the host (``tflite-runtime 2.14.0 x86_64``, see
            :mod:`pipeline.devices.host_twin`), or "given" when the caller passed the
            host outputs.
        dtype: the model output dtype ("int8", "uint8", "float32", ...).
        samples: inputs compared.
        exact_count: samples whose whole output is bit-identical to the host's.
        exact_fraction: ``exact_count / samples``.
        max_abs_diff: largest element difference (quantized units for integer outputs).
        top1_agreement: fraction of samples with the same arg-max as the host.
    """

    host_reference: str
    dtype: str
    samples: int
    exact_count: int
    exact_fraction: float
    max_abs_diff: float
    top1_agreement: float


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of the model on the device, estimated (not measured).

    ``weights_bytes`` is the sum of the file's constant buffers (the runtime maps
    the file); ``activation_bytes`` the sum of the bytes of every non-constant
    tensor as the device runtime allocated them (inputs, outputs, intermediates).
    TFLite's arena reuses memory between tensors whose lifetimes do not overlap, so
    the activation term is an upper bound on the arena; not included are XNNPACK's
    packed copy of the weights (up to ~1x weights more), the runtime's code and the
    rest of the application.
    """

    weights_bytes: int
    activation_bytes: int
    total_bytes: int
    ram_bytes: int
    fraction_of_ram: float
    fits: bool


@dataclass(frozen=True)
class DeviceResult:
    """The outcome of one model on one emulated device (JSON via :meth:`to_dict`).

    ``top1`` is in percent (like the host evaluation); agreement fractions are in
    [0, 1]. Instruction counts are per inference with the markers' own cost subtracted;
    ``instructions_by_class`` belongs to the median inference. They repeat exactly
    run to run when ``counts_exact`` (one thread). Wall times are under emulation
    (~100-350x slower than the device, and noisy): not latency.

    ``verdict`` is "loads" or :func:`pipeline.devices.model_io.not_loadable`'s text;
    ``verdict_source`` says who decided it: "device" (the emulated run), or the host
    reference of the same runtime and version, asked before any emulation when the
    runtime's op resolver lacks a custom op of the model. ``inputs`` lists the model's
    inputs as the runtime saw them; ``outputs`` compares every output with the host's
    (:class:`~pipeline.devices.model_io.OutputAgreement`). ``agreement`` and ``top1``
    are kept for a model of one output (``top1`` given labels).

    ``raw_outputs`` are the device's own outputs, one array per model output (not in
    :meth:`to_dict`): callers that read more than the comparison (a detector's boxes)
    take them from here instead of emulating again.

    ``blocks`` is the block profile of the measured inferences, straight-line
    blocks re-joined (:func:`pipeline.devices.blocks.rejoin`); None unless the run
    loaded the model on one thread. :meth:`to_dict` stores only its hot part
    (``block_profile``, see :class:`pipeline.devices.blocks.HotProfile`).
    """

    device: str
    qemu_cpu: str
    runtime: str
    runtime_version: str
    model: str
    model_sha256: str
    threads: int
    samples: int
    loaded: bool
    load_error: Optional[str] = None
    load_error_op: Optional[str] = None
    load_error_op_version: Optional[int] = None
    top1: Optional[float] = None
    agreement: Optional[Agreement] = None
    instructions_median: Optional[int] = None
    instructions_per_inference: Tuple[int, ...] = ()
    instructions_by_class: Mapping[str, int] = field(default_factory=dict, hash=False)
    warmup_instructions: Optional[int] = None
    marker_overhead_instructions: Optional[int] = None
    counts_exact: bool = False
    wall_s_per_image: Optional[float] = None
    process_wall_s: float = 0.0
    memory: Optional[MemoryEstimate] = None
    command: str = ""
    blocks: Optional[BlockProfile] = field(default=None, repr=False)
    verdict: str = ""
    verdict_source: str = "device"
    inputs: Tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    outputs: Tuple[OutputAgreement, ...] = ()
    raw_outputs: Optional[Tuple[np.ndarray, ...]] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready; ``blocks`` (thousands of blocks) is stored as its hot part only."""
        d = asdict(replace(self, blocks=None, raw_outputs=None))
        del d["blocks"], d["raw_outputs"]
        d["inputs"] = [dict(i) for i in self.inputs]
        d["instructions_per_inference"] = list(self.instructions_per_inference)
        d["instructions_by_class"] = dict(self.instructions_by_class)
        d["block_profile"] = None if self.blocks is None else HotProfile.of(self.blocks).to_dict()
        return d

    def require_loaded(self) -> "DeviceResult":
        """Returns self if the runtime loaded the model.

        Raises:
            RuntimeIncompatibleError: it did not; the message names the op/version.
        """
        if self.loaded:
            return self
        what = ""
        if self.load_error_op:
            version = f" version {self.load_error_op_version}" if self.load_error_op_version else ""
            what = f": op {self.load_error_op}{version} is not supported"
        first = (self.load_error or "").splitlines()[0] if self.load_error else ""
        raise RuntimeIncompatibleError(
            f"{Path(self.model).name} does not load on {self.device} "
            f"({self.runtime} {self.runtime_version}){what} ({first})")


def validate_inputs(model, x: np.ndarray, y: Optional[np.ndarray], source: str) -> None:
    """Checks one array of float inputs (a model of one input) and labels against the model.

    Models of several inputs take one array per input
    (:func:`pipeline.devices.model_io.validate_named_inputs`).

    Raises:
        ModelFileError: the model has more than one input, or labels for several outputs.
        ConfigError: inputs of the wrong shape or dtype, none at all, or labels of another length.
    """
    if len(model.inputs) != 1 or (y is not None and len(model.outputs) != 1):
        raise ModelFileError(f"{source}: one array of inputs (and labels) needs a model of one input "
                             f"(and one output); the model has {len(model.inputs)} inputs and "
                             f"{len(model.outputs)} outputs: give one array per input by name")
    want = tuple(model.tensors[model.inputs[0]].shape[1:])
    if x.ndim < 1 or tuple(x.shape[1:]) != want:
        raise ConfigError(f"inputs have shape {list(x.shape[1:])} per sample; {source} "
                          f"expects {list(want)}")
    if len(x) == 0:
        raise ConfigError("device check needs at least one input sample")
    if not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"inputs must be float images in [0, 1], got dtype {x.dtype}")
    if y is not None and len(y) != len(x):
        raise ConfigError(f"labels y has {len(y)} entries for {len(x)} inputs")


def host_reference(profile: DeviceProfile) -> str:
    """The host runtime whose outputs the device's should equal (see :class:`Agreement`).

    The same runtime and version as the device's: the pipeline's own interpreter when it
    is that runtime, else the device runtime's x86_64 build in its own environment.
    """
    runtime = RUNTIMES[profile.runtime]
    return twin_reference(runtime) if needs_twin(runtime) else "xnnpack"


def reference_outputs(model_path: Union[str, Path], x: Union[np.ndarray, Sequence[np.ndarray]],
                      profile: DeviceProfile, untrusted: bool = False
                      ) -> Union[np.ndarray, Tuple[np.ndarray, ...]]:
    """The outputs of :func:`host_reference`'s runtime on ``x``, one input per invoke.

    Args:
        x: one array (returns the model's first output), or one array per model input
            (returns one array per output).
        untrusted: run the pipeline's own interpreter in an isolated child
            (:mod:`pipeline.tflite.sandbox`); the device runtime's host build always
            runs in a process of its own.

    Raises:
        DeviceOutputError / RuntimeIncompatibleError: the reference runtime does not load the model.
    """
    error, ys = reference_run(model_path, [x] if isinstance(x, np.ndarray) else list(x), profile, untrusted)
    if error is not None:
        raise DeviceOutputError(f"the host reference {host_reference(profile)} does not load "
                                f"{Path(model_path).name}: {error}")
    return ys[0] if isinstance(x, np.ndarray) else ys


def reference_run(model_path: Union[str, Path], xs: Sequence[np.ndarray], profile: DeviceProfile,
                  untrusted: bool = False) -> Tuple[Optional[str], Tuple[np.ndarray, ...]]:
    """``(None, outputs)`` of the host reference (one array per output), or ``(its load
    error, ())`` when it does not load the model: any load error of a device runtime's
    host build; for the pipeline's own interpreter a custom op that neither its kernels
    nor its delegate have, or its XNNPACK delegate failing to prepare a node (the
    device's own build of that runtime fails alike; other errors raise)."""
    runtime = RUNTIMES[profile.runtime]
    if needs_twin(runtime):
        return twin_run(Path(model_path), xs, runtime)
    try:
        if untrusted:
            from pipeline.tflite.sandbox import host_outputs_untrusted

            return None, tuple(host_outputs_untrusted(model_path, list(xs)))
        return None, tuple(host_outputs_all(model_path, xs))
    except RuntimeIncompatibleError as e:
        return str(e), ()
    except (RuntimeError, ValueError) as e:
        if not any(m in str(e) for m in ("unresolved custom op", "(TfLiteXNNPackDelegate) failed to prepare")):
            raise
        return str(e).strip(), ()


def compare_outputs(device: np.ndarray, host: np.ndarray,
                    reference: str = "xnnpack") -> Agreement:
    """Agreement of device and host outputs (same shape, same dtype)."""
    if device.shape != host.shape:
        raise ConfigError(f"host outputs have shape {list(host.shape)}, device outputs "
                          f"{list(device.shape)}")
    n = len(device)
    d = device.reshape(n, -1)
    h = host.astype(device.dtype, copy=False).reshape(n, -1)
    exact = int(np.sum(np.all(d == h, axis=1)))
    diff = np.abs(d.astype(np.float64) - h.astype(np.float64))
    return Agreement(host_reference=reference, dtype=str(device.dtype), samples=n,
                     exact_count=exact, exact_fraction=exact / n,
                     max_abs_diff=float(diff.max()) if diff.size else 0.0,
                     top1_agreement=float(np.mean(d.argmax(axis=1) == h.argmax(axis=1))))


def estimate_memory(model, tensors, ram_mb: int) -> MemoryEstimate:
    """See :class:`MemoryEstimate`; ``model`` from ``read_tflite``, ``tensors`` from the guest."""
    constant_buffers = {t.buffer for t in model.tensors if 0 < t.buffer < len(model.buffers)
                        and model.buffers[t.buffer]}
    constant_tensors = {t.index for t in model.tensors if t.buffer in constant_buffers}
    weights = sum(len(model.buffers[b]) for b in constant_buffers)
    activations = sum(t.nbytes for t in tensors if t.index not in constant_tensors)
    ram = ram_mb * 2**20
    total = weights + activations
    return MemoryEstimate(weights_bytes=weights, activation_bytes=activations, total_bytes=total,
                          ram_bytes=ram, fraction_of_ram=total / ram, fits=total <= ram)


def _failure(run: DeviceRun, profile: DeviceProfile, model: Path) -> str:
    tail = " | ".join(run.stderr.strip().splitlines()[-4:]) or "no output"
    return f"{profile.name}: the emulated run of {model.name} exited {run.returncode}: {tail}"


#: Signals of a runtime that crashed on the model: qemu-user re-raises the guest's fatal
#: signal on itself, so the emulated process ends with it.
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)


def guest_crash(run: DeviceRun) -> Optional[str]:
    """The name of the signal the guest runtime crashed with, or None."""
    if run.returncode < 0 and -run.returncode in {int(s) for s in CRASH_SIGNALS}:
        return signal.Signals(-run.returncode).name
    return None


def run_device_check(model_path: Union[str, Path], profile: Union[DeviceProfile, str],
                     x: Union[np.ndarray, Sequence[np.ndarray]], y: Optional[np.ndarray] = None,
                     threads: Optional[int] = None,
                     host_outputs: Union[np.ndarray, Sequence[np.ndarray], None] = None,
                     runtime: Optional[ArmRuntime] = None, timeout_s: Optional[float] = None,
                     untrusted: bool = False, progress: Optional[Log] = None) -> DeviceResult:
    """Runs a model on an emulated device and checks it against the host.

    Args:
        model_path: the .tflite file (any number of inputs and outputs).
        profile: a device profile or its registry name.
        x: one array of float inputs in [0, 1], shape (N, *input_shape[1:]), for a
            model of one input; or one array per model input in the model's order
            (:mod:`pipeline.devices.model_io`). Quantized integer inputs get floats
            quantized with their scale/zero point (in the guest).
        y: integer labels for top-1 accuracy (a model of one output), or None.
        threads: interpreter threads (default: the profile's default_threads).
        host_outputs: the host's raw outputs on ``x`` (reference "given"), one array
            or one per output; when None, computed on the host by the device's runtime
            and version (see :func:`host_reference`).
        runtime: a built ARM runtime (default: built/cached on first use, after the
            host reference ran, so a model the host rejects never waits for it).
        timeout_s: limit for the emulated process (default scales with N).
        untrusted: run the pipeline's own interpreter on the model in an isolated child.
        progress: told of the ARM runtime's build (when it is built here) and of the
            emulated run.

    Returns:
        A DeviceResult; a model the device runtime cannot load, or crashes on
        (SIGSEGV and the like, see :data:`CRASH_SIGNALS`), is a result with
        ``loaded=False`` (see :meth:`DeviceResult.require_loaded`), not an error. A
        custom op that the runtime's op resolver lacks (:mod:`pipeline.devices.op_support`)
        is first put to the host reference, the same runtime and version: if it cannot
        load the model either, that is the verdict, and nothing is emulated.

    Raises:
        ModelFileError: missing or unreadable model, or one array for a model of several inputs.
        ConfigError / DataError: inputs/labels/host outputs of the wrong shape or dtype.
        DeviceUnavailableError: no runtime, a timeout, a guest that failed
            without crashing, or malformed output (DeviceOutputError), which
            includes a block profile that does not add up or whose code the
            guest rewrote (JIT).
    """
    from pipeline.tflite.reader import read_tflite

    profile = get_device(profile) if isinstance(profile, str) else profile
    model_path = Path(model_path).resolve()
    model = read_tflite(model_path)
    y = None if y is None else np.asarray(y)
    xs = _checked_inputs(model, x, y, model_path.name)
    samples = len(xs[0])
    host = None if host_outputs is None else as_arrays(host_outputs)
    base = dict(device=profile.name, qemu_cpu=profile.qemu_cpu, model=str(model_path),
                model_sha256=sha256_file(model_path), samples=samples)
    if host is None and (host_reference(profile) == "xnnpack" or lacks_custom_op(model, profile)):
        error, host = reference_run(model_path, xs, profile, untrusted)
        if error is not None:
            return _refused_on_host(error, profile, threads, base)
    run = _emulated(model_path, profile, x if isinstance(x, np.ndarray) else xs, threads, runtime, timeout_s,
                    progress)
    crash = guest_crash(run)
    if crash:
        return _crashed(run, crash, profile, threads or profile.default_threads, base)
    if run.returncode != 0 or run.result_text is None:
        raise DeviceOutputError(_failure(run, profile, model_path))
    guest = parse_guest_result(run.result_text)
    base.update(runtime=guest.runtime, runtime_version=guest.runtime_version, threads=guest.threads,
                counts_exact=guest.threads == 1, process_wall_s=round(run.wall_s, 3),
                command=run.command_line())
    if not guest.loaded:
        err = guest.load_error
        return DeviceResult(loaded=False, load_error=err.message, load_error_op=err.op,
                            load_error_op_version=err.version,
                            verdict=not_loadable(guest.runtime, guest.runtime_version, what_it_lacks(err)), **base)
    if host is None:
        host = as_arrays(reference_outputs(model_path, xs, profile))
    return _measured(run, guest, model, profile, xs, y, host,
                     host_reference(profile) if host_outputs is None else "given", base)


def _emulated(model_path: Path, profile: DeviceProfile, x, threads: Optional[int], runtime: Optional[ArmRuntime],
              timeout_s: Optional[float], progress: Optional[Log]) -> DeviceRun:
    """The emulated run, the ARM runtime built first if need be (progress told of both)."""
    if runtime is None:
        from pipeline.devices import runtime as arm

        runtime = arm.ensure_runtime(progress=progress and (lambda m: progress(f"arm-runtime: {m}")))
    if progress:
        samples = len(x) if isinstance(x, np.ndarray) else len(x[0])
        progress(f"{profile.name}: running {samples} inputs through {model_path.name} on "
                 f"{profile.qemu_cpu} ({profile.runtime} {profile.runtime_version})...")
    return run_on_device(model_path, profile, x, threads=threads, runtime=runtime, timeout_s=timeout_s)


def _checked_inputs(model, x, y: Optional[np.ndarray], source: str) -> Sequence[np.ndarray]:
    """One array per model input, checked against the model (and the labels)."""
    if isinstance(x, np.ndarray):
        validate_inputs(model, x, y, source)
        return [x]
    xs = [np.asarray(a) for a in x]
    validate_named_inputs(model, xs, source)
    if y is not None:
        validate_inputs(model, xs[0], y, source)
    return xs


def lacks_custom_op(model, profile: DeviceProfile) -> bool:
    """Whether the op resolver of ``profile``'s runtime lacks a custom op of ``model``, as
    its host build answers (:mod:`pipeline.devices.op_support`); False where none is built."""
    from pipeline.devices import op_support

    runtime = RUNTIMES[profile.runtime]
    custom = sorted({c.custom_code or "" for c in model.op_codes if c.builtin == op_support.CUSTOM})
    if not custom or not op_support.available(runtime):
        return False
    ops = op_support.runtime_ops(runtime, custom)
    return not all(ops.custom.get(name) for name in custom)


def what_it_lacks(err: LoadError) -> str:
    """What a load error says the runtime lacks: "custom op X", "op X version N", or its first line."""
    if err.op and err.version:
        return f"op {err.op} version {err.version}"
    if err.op and not err.op.startswith("builtin_code"):
        return f"custom op {err.op}"
    return err.op or err.message.splitlines()[0]


def _refused_on_host(error: str, profile: DeviceProfile, threads: Optional[int],
                     base: Dict[str, Any]) -> DeviceResult:
    """The verdict of the host reference (same runtime and version) on a model it cannot load."""
    err = parse_load_error(error.split(": the host runtime cannot load this model: ")[-1])
    return DeviceResult(
        runtime=profile.runtime, runtime_version=profile.runtime_version,
        threads=threads or profile.default_threads, loaded=False, load_error=err.message,
        load_error_op=err.op, load_error_op_version=err.version,
        verdict=not_loadable(profile.runtime, profile.runtime_version, what_it_lacks(err)),
        verdict_source=f"host reference ({host_reference(profile)}), not emulated", **base)


def _crashed(run: DeviceRun, crash: str, profile: DeviceProfile, threads: int,
             base: Dict[str, Any]) -> DeviceResult:
    """The result of a runtime that crashed on the model: does not load."""
    tail = " | ".join(run.stderr.strip().splitlines()[-2:]) or "no output"
    return DeviceResult(
        runtime=profile.runtime, runtime_version=profile.runtime_version, threads=threads, loaded=False,
        load_error=f"the runtime crashed on this model ({crash}): {tail}",
        verdict=not_loadable(profile.runtime, profile.runtime_version, f"the runtime crashed ({crash})"),
        process_wall_s=round(run.wall_s, 3), command=run.command_line(), **base)


def _measured(run: DeviceRun, guest, model, profile: DeviceProfile, xs: Sequence[np.ndarray],
              y: Optional[np.ndarray], host: Tuple[np.ndarray, ...], reference: str,
              base: Dict[str, Any]) -> DeviceResult:
    """The result of a run that loaded: counts, every output against the host, top-1, memory."""
    if run.counts_text is None:
        raise DeviceOutputError(f"{profile.name}: the plugin wrote no instruction counts")
    counts_file = parse_insn_counts(run.counts_text)
    samples = len(xs[0])
    counts = inference_counts(counts_file, guest.samples)
    outputs = None if run.outputs is None else as_arrays(run.outputs)
    if (outputs is None or len(outputs) != len(guest.outputs) or guest.samples != samples
            or any(len(o) != samples for o in outputs)):
        got = 0 if outputs is None else min(len(o) for o in outputs)
        raise DeviceOutputError(f"{profile.name}: guest returned outputs for {got} of "
                                f"{samples} inputs")
    median = counts.median
    single = len(outputs) == 1
    return DeviceResult(
        loaded=True, verdict="loads",
        top1=None if y is None or not single else 100.0 * float(np.mean(
            outputs[0].reshape(samples, -1).argmax(axis=1) == y.reshape(-1))),
        agreement=compare_outputs(outputs[0], host[0], reference) if single else None,
        outputs=compare_all([o.name for o in guest.outputs], outputs, host),
        inputs=tuple(asdict(i) for i in guest.inputs),
        instructions_median=median.total,
        instructions_per_inference=counts.totals,
        instructions_by_class=median.to_dict(),
        warmup_instructions=counts.warmup.total,
        marker_overhead_instructions=counts.marker_overhead.total,
        wall_s_per_image=statistics.median(guest.wall_s),
        memory=estimate_memory(model, guest.tensors, profile.ram_mb),
        blocks=_block_profile(counts_file, guest.samples, guest.threads),
        raw_outputs=tuple(outputs),
        **base)


def _block_profile(counts_file: InsnCounts, samples: int, threads: int) -> Optional[BlockProfile]:
    """The run's block profile, re-joined; None for a multi-threaded run.

    With several threads, block counts and region totals are not taken in step (a
    worker runs blocks while the main thread opens a region), so the profile's
    self-check cannot hold; the latency model prices one-thread runs only.
    """
    if threads != 1:
        return None
    profile = block_profile(counts_file, samples)
    return replace(profile, blocks=rejoin(profile.blocks))

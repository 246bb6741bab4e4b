"""Loading ``.tflite`` files the pipeline did not produce itself, in a child process.

TFLite runtimes have had memory-safety bugs on malformed models (out-of-bounds
reads, crashes in ``allocate_tensors``). A file a user hands to ``inspect``,
``evaluate`` or ``device run`` is therefore

1. checked in this process by the bounds-checked reader
   (:func:`pipeline.tflite.reader.read_tflite`: file identifier, flatbuffer
   structure, buffer, tensor and opcode bounds), then
2. given to LiteRT only in a child process (``python -m pipeline.tflite.sandbox``)
   with a wall-clock timeout, no core dumps and a cap on its address space.

A child that dies on a signal, runs past its timeout or reports a runtime error
becomes a :class:`ModelFileError` naming the file; the pipeline itself never
crashes or hangs on a hostile model. The build's own, just-produced artifacts
keep the in-process fast path (:mod:`pipeline.tflite.host`).

Inputs and outputs travel as ``.npy`` files in a private temporary directory.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from pipeline.errors import ModelFileError, RuntimeIncompatibleError
from pipeline.tflite.reader import TFLiteModel, read_tflite

#: Seconds a child may take to load and allocate a model (a real one takes < 1 s).
LOAD_TIMEOUT_S = 60.0
#: Extra seconds per input when the child also runs inference.
PER_INPUT_TIMEOUT_S = 0.2
#: Address-space cap of the child: a hostile model that asks for absurd tensors
#: fails to allocate instead of exhausting the machine's memory.
CHILD_ADDRESS_SPACE = 16 << 30
#: What the child may be asked to do (see :func:`_child_main`).
TASKS = ("load", "run", "host_outputs")
#: Lines of the child's stderr quoted in an error message.
STDERR_LINES = 4


def _check(path: Union[str, Path], model: Optional[TFLiteModel]) -> None:
    """The structural check, unless the caller already parsed ``path`` into ``model``."""
    if model is None:
        read_tflite(path)


def load_check(path: Union[str, Path], timeout_s: float = LOAD_TIMEOUT_S,
               model: Optional[TFLiteModel] = None) -> Dict[str, Any]:
    """Checks ``path`` and has LiteRT load it and allocate its tensors in a child.

    Args:
        model: ``read_tflite(path)`` when the caller already has it (skips the
            structural check it stands for); every function here takes it.

    Returns:
        ``{"inputs": [...], "outputs": [...], "ops": [...]}``: the runtime's view of
        the input/output tensors (name, shape, dtype) and its op list without
        delegates.

    Raises:
        ModelFileError: malformed file, or the runtime rejected it, crashed on it
            or did not finish within ``timeout_s``.
    """
    _check(path, model)
    return _in_child("load", Path(path), None, {}, timeout_s)["info"]


def run_untrusted(path: Union[str, Path], x: np.ndarray, batch_size: int = 64,
                  timeout_s: Optional[float] = None, model: Optional[TFLiteModel] = None) -> np.ndarray:
    """:func:`pipeline.tflite.host.run_tflite` of an untrusted model, in a child.

    The child first does what :func:`load_check` does, then runs ``x``.

    Args:
        x: float NHWC inputs in [0, 1].
        timeout_s: default ``LOAD_TIMEOUT_S + PER_INPUT_TIMEOUT_S * len(x)``.

    Returns:
        Float outputs (dequantized), stacked over ``x``'s first axis.

    Raises:
        ModelFileError: as :func:`load_check`.
    """
    _check(path, model)
    t = LOAD_TIMEOUT_S + PER_INPUT_TIMEOUT_S * len(x) if timeout_s is None else timeout_s
    return _in_child("run", Path(path), x, {"batch_size": int(batch_size)}, t)["y"]


def host_outputs_untrusted(path: Union[str, Path], x: Union[np.ndarray, Sequence[np.ndarray]],
                           timeout_s: Optional[float] = None,
                           model: Optional[TFLiteModel] = None) -> Union[np.ndarray, List[np.ndarray]]:
    """:func:`pipeline.tflite.host.host_outputs_for` of an untrusted model, in a child.

    Args:
        x: one array (the model's first input; returns its first output), or one array
            per input in the model's order (returns one array per output,
            :func:`pipeline.tflite.host.host_outputs_all`).

    A custom op that the builtin kernels lack is left to the default delegate
    (XNNPACK takes some of MediaPipe's), as the device runtime does.

    Raises:
        RuntimeIncompatibleError: neither the op resolver nor the delegate has a custom op
            of the model; the message holds the runtime's ("unresolved custom op: NAME").
        ModelFileError: as :func:`load_check`.
    """
    _check(path, model)
    xs = [x] if isinstance(x, np.ndarray) else list(x)
    t = LOAD_TIMEOUT_S + PER_INPUT_TIMEOUT_S * len(xs[0]) if timeout_s is None else timeout_s
    ys = _in_child("host_outputs", Path(path), xs, {}, t)["y"]
    return ys[0] if isinstance(x, np.ndarray) else ys


def _child_command(task: str, model: Path, work: Path) -> List[str]:
    return [sys.executable, "-m", "pipeline.tflite.sandbox", task, str(model), str(work), str(os.getpid())]


def _limit_self(parent: int) -> None:
    """First thing in the child: no core files, bounded address space, and death with
    the parent (it runs in its own session, so a SIGKILL of the pipeline would not
    reach it otherwise)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = CHILD_ADDRESS_SPACE if hard == resource.RLIM_INFINITY else min(CHILD_ADDRESS_SPACE, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _in_child(task: str, model: Path, x: Union[np.ndarray, List[np.ndarray], None], options: Dict[str, Any],
              timeout_s: float) -> Dict[str, Any]:
    if not model.is_file():
        raise ModelFileError(f"model file not found: {model}")
    with tempfile.TemporaryDirectory(prefix="mobile-model-load-") as tmp:
        work = Path(tmp)
        (work / "options.json").write_text(json.dumps(options))
        if isinstance(x, list):
            np.savez(work / "x.npz", **{f"input_{i}": a for i, a in enumerate(x)})
        elif x is not None:
            np.save(work / "x.npy", np.ascontiguousarray(x, np.float32))
        env = {**os.environ, "PYTHONPATH": _package_root() + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.Popen(_child_command(task, model.resolve(), work), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)  # its own group: a timeout kills it all
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise ModelFileError(f"{model}: the TFLite runtime did not finish with this model within "
                                 f"{timeout_s:.0f} s (stopped); the file may be malformed or hostile") from None
        except BaseException:  # e.g. Ctrl-C: never leave the child running
            _kill_group(proc)
            raise
        return child_result(task, model, proc.returncode, err.decode(errors="replace"), work)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def child_result(task: str, model: Path, rc: int, stderr: str, work: Path) -> Dict[str, Any]:
    """The child's result, or the ModelFileError that explains its failure."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        raise ModelFileError(f"{model}: the TFLite runtime crashed on this model ({name}) in an "
                             f"isolated process; the file is malformed or hostile{_tail(stderr)}")
    err_file = work / "error.json"
    if rc != 0 or err_file.exists():
        if err_file.exists():
            err = json.loads(err_file.read_text())
            if err.get("kind") == "UnresolvedCustomOp":
                raise RuntimeIncompatibleError(f"{model}: the host runtime cannot load this model: {err['error']}")
            if err.get("kind") == "MemoryError":  # an allocation past the address-space cap
                raise ModelFileError(f"{model}: the TFLite runtime ran out of memory on this model "
                                     f"(cap {CHILD_ADDRESS_SPACE >> 30} GiB); the file may be malformed or hostile")
            raise ModelFileError(f"{model}: the TFLite runtime rejected this model: {err['error']}")
        raise ModelFileError(f"{model}: the TFLite runtime failed on this model (exit code {rc})"
                             f"{_tail(stderr)}")
    out: Dict[str, Any] = {}
    if task == "load":
        out["info"] = json.loads((work / "info.json").read_text())
    elif (work / "y.npz").exists():
        with np.load(work / "y.npz") as data:
            out["y"] = [data[f"output_{i}"] for i in range(len(data.files))]
    else:
        out["y"] = np.load(work / "y.npy")
    return out


def _tail(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()][-STDERR_LINES:]
    return (": " + " | ".join(lines)) if lines else ""


# -- the child -------------------------------------------------------------------


class _UnresolvedCustomOp(Exception):
    """Neither the builtin kernels nor the default delegate take a custom op of the model."""


def _describe(interp) -> Dict[str, Any]:
    def tensors(details):
        return [{"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
                for d in details]

    return {"inputs": tensors(interp.get_input_details()), "outputs": tensors(interp.get_output_details())}


def _child_task(task: str, model: Path, work: Path) -> None:
    from pipeline.tflite.host import host_outputs_for, make_interpreter, run_tflite

    options = json.loads((work / "options.json").read_text())
    # Every task first prepares the model with the builtin kernels (no delegate):
    # XNNPACK would take over ops whose builtin kernel rejects a malformed model.
    interp = make_interpreter(model, delegates=False, threads=1)
    try:
        interp.allocate_tensors()
    except RuntimeError as exc:
        # Host outputs, like the device, leave a custom op the builtin kernels lack to
        # the default delegate (XNNPACK has some of MediaPipe's); the delegate checks
        # the nodes it takes. Loading (inspect --load) stays with the builtin kernels.
        if task != "host_outputs" or "unresolved custom op" not in str(exc):
            raise
        interp = None
    if interp is not None:
        info = _describe(interp)
        info["ops"] = [d["op_name"] for d in interp._get_ops_details()]
        (work / "info.json").write_text(json.dumps(info))
        del interp
    if task == "load":
        return
    if (work / "x.npz").exists():
        from pipeline.tflite.host import host_outputs_all

        with np.load(work / "x.npz") as data:
            xs = [data[f"input_{i}"] for i in range(len(data.files))]
        try:
            ys = host_outputs_all(model, xs)
        except RuntimeError as exc:
            if "unresolved custom op" in str(exc):
                raise _UnresolvedCustomOp(str(exc).strip()) from None
            raise
        np.savez(work / "y.npz", **{f"output_{i}": y for i, y in enumerate(ys)})
        return
    x = np.load(work / "x.npy", mmap_mode="r")
    if task == "run":
        y = run_tflite(model, np.asarray(x), batch_size=options["batch_size"])
    else:
        y = host_outputs_for(model, np.asarray(x))
    np.save(work / "y.npy", y)


def _child_main(argv: Sequence[str]) -> int:
    """``python -m pipeline.tflite.sandbox TASK MODEL WORKDIR PARENT_PID``: one task on one model.

    A Python-level error (LiteRT raises ValueError/RuntimeError on models it
    rejects) is written to ``WORKDIR/error.json`` for the parent; a crash simply
    kills this process, which the parent reports.
    """
    task, model, work, parent = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3])
    _limit_self(parent)
    if task not in TASKS:
        print(f"unknown task {task!r}; valid: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    try:
        _child_task(task, model, work)
    except _UnresolvedCustomOp as exc:
        (work / "error.json").write_text(json.dumps({"error": str(exc).splitlines()[0],
                                                     "kind": "UnresolvedCustomOp"}))
        return 1
    except (ValueError, RuntimeError, MemoryError, IndexError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        (work / "error.json").write_text(json.dumps({"error": f"{type(exc).__name__}: {first}",
                                                     "kind": type(exc).__name__}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))

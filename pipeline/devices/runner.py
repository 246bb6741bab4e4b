"""Host side of a device run: drive qemu-aarch64 over guest_runner.py, collect files.

Running is kept apart from reading: :func:`run_on_device` returns the raw files of
one emulated process (:class:`DeviceRun`); the parsers (``insn_counts.py``,
``guest_result.py``) turn them into results.
"""

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from pipeline.devices.insn_counts import FIRST_INFERENCE_REGION
from pipeline.devices.profiles import DeviceProfile
from pipeline.devices.runtime import ArmRuntime, ensure_runtime
from pipeline.errors import ConfigError, DeviceUnavailableError, ModelFileError

GUEST_RUNNER = Path(__file__).resolve().parent / "guest_runner.py"
# A fixed base (not $TMPDIR) so that work dir paths have the same length everywhere.
WORK_BASE = "/tmp"


@dataclass(frozen=True)
class DeviceRun:
    """The raw outcome of one emulated process.

    Attributes:
        command: the qemu command line (runnable as is, given ``env``).
        env: the guest's complete environment.
        returncode, stdout, stderr: of the qemu process.
        result_text: the guest's result.json, None if it wrote none.
        counts_text: the plugin's count file, None if it wrote none; it profiles
            blocks from the first inference region on (``profile_from=2``).
        outputs: the raw model outputs, one row per input (None unless it ran): one
            array for a model of one input and one output, else a tuple with one
            array per output in the model's order.
        wall_s: wall time of the whole emulated process.
    """

    command: Tuple[str, ...]
    env: Tuple[Tuple[str, str], ...]
    returncode: int
    stdout: str
    stderr: str
    result_text: Optional[str]
    counts_text: Optional[str]
    outputs: Union[np.ndarray, Tuple[np.ndarray, ...], None]
    wall_s: float

    def command_line(self) -> str:
        """A shell line reproducing the run (environment included)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return f"env -i {env} " + " ".join(shlex.quote(c) for c in self.command)


def default_timeout(samples: int) -> float:
    """Seconds allowed for ``samples`` inferences: start-up plus a generous 20 s each.

    Emulation runs ~120-350x slower than the device, so a model taking 50 ms on a
    phone takes up to ~20 s per inference here.
    """
    return 120.0 + 20.0 * samples


def run_on_device(model_path: Union[str, Path], profile: DeviceProfile,
                  x: Union[np.ndarray, Sequence[np.ndarray]],
                  threads: Optional[int] = None, timeout_s: Optional[float] = None,
                  runtime: Optional[ArmRuntime] = None, count: bool = True,
                  profile_from: int = FIRST_INFERENCE_REGION) -> DeviceRun:
    """Runs ``x`` through a TFLite model on one emulated device, in one process.

    Args:
        model_path: the .tflite file.
        profile: the device (qemu CPU model, guest runtime).
        x: inputs, first axis = samples: one array, or one per model input in the
            model's order; float (quantized in the guest for quantized integer
            inputs) or already of the input's dtype.
        threads: interpreter threads (default: the profile's ``default_threads``).
        timeout_s: wall-clock limit (default: :func:`default_timeout`).
        runtime: a built ARM runtime (default: :func:`ensure_runtime`).
        count: load the instruction-count plugin.
        profile_from: the first region whose blocks the plugin profiles (the
            first measured inference; a larger index profiles none, which only
            a benchmark of the profile's own cost wants).

    Raises:
        ModelFileError: the model file does not exist.
        ConfigError: ``x`` is empty or ``threads`` < 1.
        DeviceUnavailableError: the runtime cannot be built, or qemu did not finish
            within the timeout.
    """
    model_path = Path(model_path).resolve()
    if not model_path.is_file():
        raise ModelFileError(f"model file {model_path} does not exist")
    xs = _input_list(x)
    single = single_io(model_path)  # one input and one output travel as .npy, others as .npz
    threads = profile.default_threads if threads is None else threads
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    timeout_s = default_timeout(len(xs[0])) if timeout_s is None else timeout_s
    runtime = runtime or ensure_runtime()

    # Everything the guest sees by path lives under a work dir of fixed length with
    # fixed names: the guest's argv (script, model, sysroot) shifts its memory layout,
    # and instruction counts repeat exactly only for identical path lengths. So the
    # model, this runner and the sysroot are linked/copied in rather than referred to
    # where they happen to be (a model's own path would change its count).
    with tempfile.TemporaryDirectory(prefix="mm-device-", dir=WORK_BASE) as tmp:
        work = Path(tmp)
        os.symlink(runtime.sysroot(profile.qemu_cpu), work / "root")
        os.symlink(model_path, work / "model.tflite")
        shutil.copyfile(GUEST_RUNNER, work / "guest_runner.py")
        ext = "npy" if single else "npz"
        inputs, outputs = work / f"inputs.{ext}", work / f"outputs.{ext}"
        save_arrays(inputs, "input", xs)
        paths = {name: work / name for name in ("result.json", "counts.txt")}
        argv = [str(work / "guest_runner.py"), "--runtime", profile.runtime,
                "--model", str(work / "model.tflite"), "--inputs", str(inputs),
                "--outputs", str(outputs), "--result", str(paths["result.json"]),
                "--threads", str(threads)]
        command = runtime.command(profile.qemu_cpu, argv,
                                  paths["counts.txt"] if count else None, sysroot=work / "root",
                                  plugin_args=(f"profile_from={profile_from}",))
        env = runtime.env(profile.runtime)
        t0 = time.monotonic()
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DeviceUnavailableError(
                f"{profile.name}: emulated run of {model_path.name} on {len(xs[0])} inputs "
                f"exceeded {timeout_s:.0f} s") from None
        wall = time.monotonic() - t0

        def read(path: Path) -> Optional[str]:
            return path.read_text() if path.exists() else None

        ys = load_arrays(outputs, "output") if outputs.exists() else None
        return DeviceRun(command=tuple(command), env=tuple(sorted(env.items())),
                         returncode=done.returncode, stdout=done.stdout, stderr=done.stderr,
                         result_text=read(paths["result.json"]),
                         counts_text=read(paths["counts.txt"]),
                         outputs=None if ys is None else (ys[0] if single else tuple(ys)), wall_s=wall)


def _input_list(x) -> list:
    xs = [np.asarray(x)] if isinstance(x, np.ndarray) else [np.asarray(a) for a in x]
    if not xs or any(a.ndim < 1 or len(a) == 0 for a in xs):
        raise ConfigError(f"device run needs at least one input, got shapes {[list(a.shape) for a in xs]}")
    return xs


def single_io(model_path: Path) -> bool:
    """Whether the model has one input and one output (its arrays travel as .npy)."""
    from pipeline.tflite.reader import read_tflite

    model = read_tflite(model_path)
    return len(model.inputs) == 1 and len(model.outputs) == 1


def save_arrays(path: Path, prefix: str, arrays: Sequence[np.ndarray]) -> None:
    """Arrays as the guest runner reads them: one .npy, or an .npz of ``<prefix>_<i>``."""
    if path.suffix == ".npz":
        np.savez(path, **{f"{prefix}_{i}": a for i, a in enumerate(arrays)})
    else:
        np.save(path, arrays[0])


def load_arrays(path: Path, prefix: str) -> Tuple[np.ndarray, ...]:
    """What :func:`save_arrays` (or the guest runner) wrote, in order."""
    if path.suffix != ".npz":
        return (np.load(path),)
    with np.load(path) as data:
        return tuple(data[f"{prefix}_{i}"] for i in range(len(data.files)))

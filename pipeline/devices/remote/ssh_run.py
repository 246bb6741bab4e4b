"""A timed run on a real board over SSH, with the emulator's own guest script.

:func:`measure_over_ssh` probes the board's python for a TFLite runtime
(ai-edge-litert, else tflite-runtime), copies :mod:`pipeline.devices.guest_runner`,
the model and the inputs into one run directory under :data:`~.target.REMOTE_CACHE`,
runs the script in timing mode (pinned with ``taskset -c`` when asked), copies the
result and outputs back, removes the run directory, and compares the outputs with the
host's on the same runtime and version, as an emulated run does.
"""

import json
import os
import shlex
import signal
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from pipeline.devices.guest_result import GuestResult, parse_guest_result
from pipeline.devices.guest_runner import MODULES
from pipeline.devices.model_io import compare_all, not_loadable
from pipeline.devices.remote.measurement import (Measurement, board_runtime, host_reference, now_utc,
                                                 reference_outputs)
from pipeline.devices.remote.ssh import Ssh
from pipeline.devices.remote.target import REMOTE_CACHE, Settings, SshTarget
from pipeline.devices.runner import GUEST_RUNNER, load_arrays, save_arrays
from pipeline.errors import DeviceOutputError, DeviceUnavailableError, Log
from pipeline.store.atomic import sha256_file
from pipeline.tflite.host import numeric_format

#: Runtimes in the order they are preferred when a board has several.
PREFERENCE = ("litert", "tflite-runtime")
#: Signals of a runtime that crashed on the model (the board's shell exits 128 + signal).
CRASHES = {128 + int(s): s.name for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                                          signal.SIGABRT)}

_PROBE = """
import importlib, importlib.metadata, json, os, sys
out = {{"python": sys.version.split()[0], "numpy": None, "runtimes": {{}}, "errors": {{}}}}
try:
    import numpy
    out["numpy"] = numpy.__version__
except ImportError as e:
    out["errors"]["numpy"] = str(e)
for name, (module, dist) in {modules!r}.items():
    try:
        importlib.import_module(module)
        out["runtimes"][name] = importlib.metadata.version(dist)
    except Exception as e:
        out["errors"][name] = type(e).__name__ + ": " + str(e)
out["run_dir"] = os.path.join(os.path.expanduser({cache!r}), {run!r})
if out["runtimes"] and out["numpy"]:
    os.makedirs(os.path.join(out["run_dir"], "out"), mode=0o700)
print(json.dumps(out))
"""


def probe(ssh: Ssh, python: str, run_name: str) -> Dict:
    """What the board's ``python`` has (python, numpy and runtime versions), and a new run
    directory when it has a runtime.

    Raises:
        DeviceUnavailableError: no such python, or no runtime or numpy (the message says
            what to install).
    """
    script = _PROBE.format(modules=MODULES, cache=REMOTE_CACHE, run=run_name)
    done = ssh.run(f"{shlex.quote(python)} -c {shlex.quote(script)}", "the probe of its python")
    host = ssh.target.host
    if done.returncode == 127:
        raise DeviceUnavailableError(f"{host} has no python at {python!r} (name the board's python "
                                     f"with --remote-python)")
    try:
        found = json.loads(done.stdout.decode(errors="replace").strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise DeviceUnavailableError(f"{host}: {python} could not be probed (exit {done.returncode}: "
                                     f"{tail[0]})") from None
    if not found["runtimes"]:
        raise DeviceUnavailableError(
            f"{host}: {python} has no TFLite runtime (neither ai_edge_litert nor tflite_runtime "
            f"imports): install one on the board with `{python} -m pip install ai-edge-litert` "
            f"(or `pip install tflite-runtime` where no ai-edge-litert wheel exists)")
    if found["numpy"] is None:
        raise DeviceUnavailableError(f"{host}: {python} has no numpy: install it on the board with "
                                     f"`{python} -m pip install numpy`")
    return found


def measure_over_ssh(model_path: Path, target: SshTarget, xs: Sequence[np.ndarray], settings: Settings,
                     identity: Optional[Path] = None, profile: Optional[str] = None,
                     progress: Optional[Log] = None, y: Optional[np.ndarray] = None) -> Measurement:
    """Measures ``model_path`` on the board at ``target``, on inputs ``xs`` (one array per model
    input, checked against the model by the caller) with labels ``y`` for top-1 (or None).

    Returns:
        A :class:`Measurement`; a model the board's runtime refuses, or crashes on, is a
        result (``loaded`` False), as in an emulated run.

    Raises:
        DeviceUnavailableError: the board cannot be reached (refused, authentication, a
            changed host key, a lost connection), has no runtime, or the run failed.
        DeviceOutputError: malformed results, or a host reference that does not load the model.
    """
    from pipeline.tflite.reader import read_tflite

    settings = settings.validate()
    model_path = Path(model_path).resolve()
    model = read_tflite(model_path)
    ssh = Ssh(target, identity)
    say = progress or (lambda m: None)
    found = probe(ssh, settings.remote_python, f"run-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    name = next(r for r in PREFERENCE if r in found["runtimes"])
    version = found["runtimes"][name]
    settings = replace(settings, runtime=f"{name} {version}")
    run_dir = found["run_dir"]
    say(f"{target.url()}: python {found['python']}, {name} {version}; files in {run_dir} (removed after the run)")
    base = dict(target=target.url(), model=str(model_path), model_sha256=sha256_file(model_path),
                number_format=numeric_format(model), runtime=name, runtime_version=version,
                settings=asdict(settings), samples=len(xs[0]), remote_dir=run_dir, profile=profile,
                measured_at=now_utc())
    single = len(model.inputs) == 1 and len(model.outputs) == 1
    with tempfile.TemporaryDirectory(prefix="mobile-model-ssh-") as tmp:
        try:
            guest, outputs = _run(ssh, Path(tmp), run_dir, model_path, xs, single, settings, name, say)
        finally:
            _remove(ssh, run_dir, say)
    if isinstance(guest, str):
        return Measurement(loaded=False, verdict=not_loadable(name, version, f"the runtime crashed ({guest})"),
                           load_error=f"the runtime crashed on this model ({guest})", **base)
    if not guest.loaded:
        from pipeline.devices.check import what_it_lacks

        err = guest.load_error
        return Measurement(loaded=False, verdict=not_loadable(name, version, what_it_lacks(err)),
                           load_error=err.message, device=guest.device, **base)
    if guest.timing is None:
        raise DeviceOutputError(f"{target.host}: the run returned no timing")
    if len(outputs) != len(guest.outputs) or any(len(o) != len(xs[0]) for o in outputs):
        raise DeviceOutputError(f"{target.host}: the run returned outputs for other than {len(xs[0])} inputs")
    runtime = board_runtime(name, version)
    say(f"{target.url()}: comparing {len(outputs)} output(s) with the host ({host_reference(runtime)})...")
    host = reference_outputs(model_path, xs, runtime)
    top1 = None
    if y is not None and len(outputs) == 1:
        top1 = 100.0 * float(np.mean(outputs[0].reshape(len(y), -1).argmax(axis=1) == np.asarray(y).reshape(-1)))
    return Measurement(loaded=True, verdict="loads", timing=guest.timing, device=guest.device, top1=top1,
                       outputs=compare_all([o.name for o in guest.outputs], outputs, host),
                       host_reference=host_reference(runtime), **base)


def _run(ssh: Ssh, work: Path, run_dir: str, model_path: Path, xs: Sequence[np.ndarray], single: bool,
         settings: Settings, runtime: str, say: Log):
    """Copies, runs and fetches: ``(GuestResult, outputs)``, or ``(signal name, ())`` on a crash."""
    ext = "npy" if single else "npz"
    (work / "model.tflite").symlink_to(model_path)
    (work / "guest_runner.py").symlink_to(GUEST_RUNNER)
    save_arrays(work / f"inputs.{ext}", "input",
                [a if a.dtype.kind in "iub" else np.ascontiguousarray(a, np.float32) for a in xs])
    ssh.put([work / "guest_runner.py", work / "model.tflite", work / f"inputs.{ext}"], run_dir,
            "the copy of the model and inputs")
    pin = f"taskset -c {settings.cores_text()} " if settings.cores is not None else ""
    command = (f"cd {shlex.quote(run_dir)} && {pin}{shlex.quote(settings.remote_python)} guest_runner.py "
               f"--runtime {runtime} --model model.tflite --inputs inputs.{ext} --outputs out/outputs.{ext} "
               f"--result out/result.json --threads {settings.threads} --timed-runs {settings.runs} "
               f"--warmup {settings.warmup}; exit $?")  # not exec'd: a crash is the shell's 128 + signal
    say(f"{ssh.target.url()}: {settings.warmup} warm-up and {settings.runs} timed runs after {len(xs[0])} "
        f"input(s), {settings.threads} thread(s){', cores ' + settings.cores_text() if pin else ''}...")
    done = ssh.run(command, "the run")
    if done.returncode in CRASHES:
        return CRASHES[done.returncode], ()
    if done.returncode:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        if done.returncode == 127 and pin and any("taskset" in line for line in err):
            raise DeviceUnavailableError(f"{ssh.target.host} has no taskset (needed to pin cores): "
                                         f"install util-linux there, or leave out the cores")
        tail = " | ".join(err[-3:]) or "no output"
        raise DeviceUnavailableError(f"the run on {ssh.target.host} exited {done.returncode}: {tail}")
    ssh.get(f"{run_dir}/out", work / "fetched", "the copy of the results")
    result = work / "fetched" / "result.json"
    if not result.is_file():
        raise DeviceOutputError(f"{ssh.target.host}: the run wrote no result")
    guest: GuestResult = parse_guest_result(result.read_text())
    outputs = work / "fetched" / f"outputs.{ext}"
    if not guest.loaded:
        return guest, ()
    if not outputs.is_file():
        raise DeviceOutputError(f"{ssh.target.host}: the run wrote no outputs")
    return guest, load_arrays(outputs, "output")


def _remove(ssh: Ssh, run_dir: str, say: Log) -> None:
    """Removes the run directory; a board that cannot be reached any more keeps it (said)."""
    try:
        ssh.run(f"rm -rf {shlex.quote(run_dir)}", "the removal of the run's files")
    except DeviceUnavailableError as e:
        say(f"{ssh.target.url()}: {run_dir} was not removed ({e})")

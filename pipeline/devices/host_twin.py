"""The host reference of a device: the same TFLite runtime, same version, built for x86_64.

A device's outputs are compared with the host's on the same inputs. When the device's
runtime is the one the pipeline itself runs (ai-edge-litert of the same version), the
reference is the pipeline's own interpreter. When it is another runtime or version
(``tflite-runtime 2.14`` on ``camera-a53``), the reference is that very runtime and
version from PyPI's x86_64 wheels, in an isolated environment of its own
(:mod:`pipeline.store.isolated_env`, ``~/.cache/mobile-model/host-runtime/<key>``), running
the guest's own script (:mod:`pipeline.devices.guest_runner`) with the same options.
So a difference left is one of the architecture's kernels, not of the version.

Command line (what ``make arm-runtime`` also calls)::

    python -m pipeline.devices.host_twin build [--force] [-q]
    python -m pipeline.devices.host_twin info
"""

import importlib.metadata
import json
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from pipeline.devices.runner import load_arrays, save_arrays, single_io
from pipeline.devices.targets import RUNTIMES, GuestRuntime
from pipeline.errors import DeviceOutputError, Log
from pipeline.store.isolated_env import EnvSpec, IsolatedEnv, ensure, env_main

GUEST_RUNNER = Path(__file__).resolve().parent / "guest_runner.py"
#: The interpreter of the host environments: the guest's (Debian bookworm's 3.11), so
#: the same wheels exist for both architectures.
TWIN_PYTHON = (3, 11)
#: Seconds allowed to load a model, and per input, in a host environment.
LOAD_TIMEOUT_S = 120.0
PER_INPUT_TIMEOUT_S = 2.0


def host_version(distribution: str) -> Optional[str]:
    """The version of ``distribution`` installed beside the pipeline, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def needs_twin(runtime: GuestRuntime) -> bool:
    """Whether the pipeline's own interpreter is another runtime or version than ``runtime``."""
    return host_version(runtime.distribution) != runtime.version


def twin_reference(runtime: GuestRuntime) -> str:
    """The name of the host reference for ``runtime`` (``tflite-runtime 2.14.0 x86_64``)."""
    import platform

    return f"{runtime.distribution} {runtime.version} {platform.machine()}"


def twin_spec(runtime: GuestRuntime) -> EnvSpec:
    """The isolated environment holding ``runtime``'s pins (the guest's own) for the host."""
    return EnvSpec(name="host-runtime", requirements=tuple(runtime.requirements), python=TWIN_PYTHON,
                   smoke=("-c", "import importlib, importlib.metadata, json; "
                                f"importlib.import_module({runtime.module!r}); "
                                f"print(json.dumps({{'{runtime.distribution}': "
                                f"importlib.metadata.version({runtime.distribution!r})}}))"),
                   make_target="arm-runtime")


def twin_specs() -> List[EnvSpec]:
    """One environment per device runtime the pipeline's own interpreter is not."""
    return [twin_spec(r) for r in RUNTIMES.values() if needs_twin(r)]


def ensure_twins(progress: Optional[Log] = None) -> List[IsolatedEnv]:
    """Builds (once, cached) every host environment the device runtimes need."""
    return [ensure(spec, progress=progress) for spec in twin_specs()]


def twin_run(model_path: Path, x: Union[np.ndarray, Sequence[np.ndarray]], runtime: GuestRuntime,
             threads: int = 1, progress: Optional[Log] = None
             ) -> Tuple[Optional[str], Tuple[np.ndarray, ...]]:
    """Raw outputs of ``runtime`` (x86_64 build) on ``x``, one input per invoke as on the
    device: ``(None, outputs)`` with one array per output, or ``(load error, ())`` when
    the host build does not load the model. ``x`` is one array (a model of one input) or
    one per input in the model's order.

    Raises:
        DeviceOutputError: outputs for the wrong number of inputs.
        DeviceUnavailableError: the environment could not be built, or the run failed.
    """
    env = ensure(twin_spec(runtime), progress=progress)
    model_path = Path(model_path).resolve()
    xs = [x] if isinstance(x, np.ndarray) else list(x)
    ext = "npy" if single_io(model_path) else "npz"
    with tempfile.TemporaryDirectory(prefix="mobile-model-twin-") as tmp:
        work = Path(tmp)
        save_arrays(work / f"x.{ext}", "input", [a if a.dtype.kind in "iub" else np.ascontiguousarray(a, np.float32)
                                                 for a in xs])
        env.run([str(GUEST_RUNNER), "--runtime", runtime.name, "--model", str(model_path),
                 "--inputs", str(work / f"x.{ext}"), "--outputs", str(work / f"y.{ext}"),
                 "--result", str(work / "result.json"), "--threads", str(threads)],
                f"the host reference ({twin_reference(runtime)}) on {model_path.name}",
                timeout=LOAD_TIMEOUT_S + PER_INPUT_TIMEOUT_S * len(xs[0]), json_output=False)
        result = json.loads((work / "result.json").read_text())
        if not result["loaded"]:
            return result["load_error"], ()
        ys = load_arrays(work / f"y.{ext}", "output")
    if any(len(y) != len(xs[0]) for y in ys):
        raise DeviceOutputError(f"the host reference {twin_reference(runtime)} returned outputs for "
                                f"{len(ys[0])} of {len(xs[0])} inputs")
    return None, ys


def main(argv: Optional[Sequence[str]] = None) -> int:
    return env_main("Build or inspect the host environments of the device runtimes the pipeline "
                    "does not run itself (same runtime and version, x86_64 wheels).", twin_specs,
                    "python -m pipeline.devices.host_twin", argv)


if __name__ == "__main__":
    sys.exit(main())

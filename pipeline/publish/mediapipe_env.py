"""An isolated Python environment with MediaPipe, for the TFLite metadata writer and a real client.

MediaPipe needs absl-py ~= 2.x while tensorflow-model-optimization 0.8.1 pins absl-py
1.4.0, so MediaPipe cannot live in the pipeline's venv. Like the ARM runtime
(:mod:`pipeline.devices.runtime`) it is built once into a cache keyed by everything it
depends on, and used by running :mod:`pipeline.publish.mediapipe_worker` with its own
Python as a subprocess::

    ~/.cache/mobile-model/mediapipe-env/<key>/   ($MOBILE_MODEL_CACHE replaces ~/.cache/mobile-model)
        venv/            python -m venv + the pinned wheels below, from PyPI
        manifest.json    key inputs, the installed versions

Why mediapipe 0.10.21: from 0.10.30 on (1.x included) the wheels drop the compiled
``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`` that
``metadata_writers`` still imports, so the writer fails with ModuleNotFoundError;
0.10.21 is the newest release whose writer imports and runs. Only what the writer and
the vision tasks import is installed (``--no-deps``): jax, jaxlib, scipy, sentencepiece
and sounddevice (Model Maker, GenAI and audio only) would add ~500 MB.

Command line (what ``make mediapipe-env`` calls)::

    python -m pipeline.publish.mediapipe_env build [--force] [-q]
    python -m pipeline.publish.mediapipe_env info
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from pipeline.errors import DeviceUnavailableError

# Bump when the build procedure changes in a way the other key inputs do not show.
BUILDER_VERSION = 1
PYTHON = (3, 11)
# mediapipe 0.10.21 and the versions pip resolved for what it imports (pip freeze of a
# full install, less jax, jaxlib, ml_dtypes, opt_einsum, scipy, sentencepiece, sounddevice, cffi).
REQUIREMENTS = (
    "mediapipe==0.10.21",
    "absl-py==2.5.1",
    "attrs==26.1.0",
    "flatbuffers==25.12.19",
    "numpy==1.26.4",
    "protobuf==4.25.9",
    "opencv-contrib-python==4.11.0.86",
    "matplotlib==3.11.2",
    "contourpy==1.3.3",
    "cycler==0.12.1",
    "fonttools==4.68.0",
    "kiwisolver==1.5.1",
    "packaging==26.4",
    "pillow==13.0.0",
    "pyparsing==3.3.3",
    "python-dateutil==4.0.0",
    "tzdata==2026.6",
)
WORKER = Path(__file__).resolve().parent / "mediapipe_worker.py"

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"mediapipe-env: {msg}", file=sys.stderr, flush=True)


def _quiet(msg: str) -> None:
    pass


@dataclass(frozen=True)
class MediaPipeEnv:
    """A built MediaPipe environment.

    Attributes:
        root: its cache directory (``.../mediapipe-env/<key>``).
        key: the hash naming it.
    """

    root: Path
    key: str

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    def run(self, args: Sequence[str], what: str, timeout: float = 600) -> dict:
        """Runs the worker with ``args`` in this environment; returns its JSON output.

        Raises:
            DeviceUnavailableError: the worker failed (its stderr's last lines are in the message).
        """
        if not self.python.exists():
            raise DeviceUnavailableError(f"{what}: no MediaPipe environment at {self.root} (no {self.python}); "
                                         f"build it with 'make mediapipe-env'")
        cmd = [str(self.python), "-I", str(WORKER), *map(str, args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env())
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise DeviceUnavailableError(f"{what} failed in the MediaPipe environment {self.root} "
                                         f"(exit {done.returncode}): {tail}")
        return json.loads(done.stdout)

    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())


def _clean_env() -> dict:
    """The host environment less what would steer the isolated Python elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "TF_"))}
    env["GLOG_minloglevel"] = "2"  # MediaPipe's C++ logs on every task creation
    return env


def cache_dir() -> Path:
    """``$MOBILE_MODEL_CACHE/mediapipe-env`` (default ``~/.cache/mobile-model/mediapipe-env``)."""
    base = os.environ.get("MOBILE_MODEL_CACHE")
    base_path = Path(base) if base else Path.home() / ".cache" / "mobile-model"
    return base_path.expanduser().resolve() / "mediapipe-env"


def key_inputs() -> dict:
    """Everything the environment depends on; its hash is the cache key."""
    return {"builder_version": BUILDER_VERSION, "python": list(PYTHON), "requirements": list(REQUIREMENTS),
            "platform": sys.platform}


def env_key() -> str:
    return hashlib.sha256(json.dumps(key_inputs(), sort_keys=True).encode()).hexdigest()[:16]


def _base_python() -> str:
    """A Python of version :data:`PYTHON` to create the venv from."""
    if sys.version_info[:2] == PYTHON:
        return sys.executable
    name = f"python{PYTHON[0]}.{PYTHON[1]}"
    found = shutil.which(name)
    if not found:
        raise DeviceUnavailableError(f"the MediaPipe environment needs Python {PYTHON[0]}.{PYTHON[1]} "
                                     f"({name} on PATH); this is Python {sys.version.split()[0]}")
    return found


def _run(cmd: List[str], what: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env())
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise DeviceUnavailableError(f"building the MediaPipe environment: {what} failed: {tail}")
    return done


def _build(final: Path, key: str, progress: Progress) -> None:
    t0 = time.monotonic()
    tmp = final.parent / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        progress(f"python -m venv ({_base_python()})")
        _run([_base_python(), "-m", "venv", str(tmp / "venv")], "python -m venv")
        py = str(tmp / "venv" / "bin" / "python")
        progress("pip install --no-deps " + " ".join(REQUIREMENTS))
        _run([py, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", *REQUIREMENTS],
             "pip install")
        env = MediaPipeEnv(tmp, key)
        progress("smoke test: importing the metadata writer and the image classifier")
        versions = env.run(["versions"], "the smoke test")
        manifest = {"key": key, "key_inputs": key_inputs(),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.monotonic() - t0, 1), "versions": versions}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"built {final} in {time.monotonic() - t0:.0f} s")


def ensure_env(progress: Optional[Progress] = _stderr, force: bool = False) -> MediaPipeEnv:
    """Returns the MediaPipe environment, building it first if this key is not cached yet.

    Cheap when it exists (a hash and a directory check). Builds are serialised with a
    lock file; a build goes into a temporary sibling renamed into place after a smoke
    test, so an interrupted build never counts as complete.

    Raises:
        DeviceUnavailableError: no Python of the right version, or pip (PyPI) failed.
    """
    progress = progress or _quiet
    key = env_key()
    base = cache_dir()
    final = base / key
    if final.is_dir() and not force:
        return MediaPipeEnv(final, key)
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in base.glob(".tmp-*"):  # leftovers of killed builds
            shutil.rmtree(stale, ignore_errors=True)
        if final.is_dir() and force:
            shutil.rmtree(final)
        if not final.is_dir():
            progress(f"building {final} (about a minute, once per key)")
            _build(final, key, progress)
    return MediaPipeEnv(final, key)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.publish.mediapipe_env",
                                     description="Build or inspect the isolated MediaPipe environment.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="build the environment unless already cached")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("-q", "--quiet", action="store_true")
    sub.add_parser("info", help="print the cache key, its path and whether it is built")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            print(ensure_env(progress=None if args.quiet else _stderr, force=args.force).root)
        else:
            final = cache_dir() / env_key()
            print(json.dumps({"key": env_key(), "path": str(final), "built": final.is_dir()}, indent=2))
    except DeviceUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

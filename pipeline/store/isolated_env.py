"""Isolated Python environments, built once into a cache keyed by what went into them.

Some tools cannot live in the pipeline's own venv: MediaPipe's metadata writer needs
an absl-py that tfmot's pin excludes, and a device's older TFLite runtime needs the
numpy 1.x it was built against. Each gets a venv of its own::

    $MOBILE_MODEL_CACHE/<name>/<key>/     (default ~/.cache/mobile-model/<name>/<key>/)
        venv/            python -m venv + the pinned wheels, from PyPI
        manifest.json    key inputs, build time, what the smoke test reported

``<key>`` hashes the spec (builder version, Python version, requirements, pip
options, platform), so a changed pin builds a new directory. A build goes into a
temporary sibling renamed into place after its smoke test passed, under a lock: an
interrupted build never counts as complete, two processes never build the same key.
The environment is used by running a script with its own Python as a subprocess.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from pipeline.errors import DeviceUnavailableError, Log
from pipeline.store.atomic import json_hash


def _quiet(msg: str) -> None:
    pass


def cache_root() -> Path:
    """``$MOBILE_MODEL_CACHE`` (default ``~/.cache/mobile-model``)."""
    base = os.environ.get("MOBILE_MODEL_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mobile-model").expanduser().resolve()


def clean_env(extra: Optional[dict] = None) -> dict:
    """The host environment less what would steer the isolated Python elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "TF_"))}
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class EnvSpec:
    """What an isolated environment holds.

    Attributes:
        name: its cache sub-directory and the name used in messages.
        requirements: exact pins installed with ``pip install --only-binary=:all:``.
        python: the (major, minor) version of its interpreter.
        builder_version: bumped when the build procedure changes in a way the rest does not show.
        pip_options: extra ``pip install`` options (e.g. ``--no-deps``).
        smoke: arguments for :meth:`IsolatedEnv.run` run once after the install; its JSON
            output goes into the manifest.
        make_target: the ``make`` target that builds it, named in errors.
        env: extra environment variables for every run.
    """

    name: str
    requirements: Tuple[str, ...]
    python: Tuple[int, int]
    smoke: Tuple[str, ...]
    make_target: str
    builder_version: int = 1
    pip_options: Tuple[str, ...] = ()
    env: Tuple[Tuple[str, str], ...] = field(default=())

    def key_inputs(self) -> dict:
        return {"builder_version": self.builder_version, "python": list(self.python),
                "requirements": list(self.requirements), "pip_options": list(self.pip_options),
                "platform": sys.platform}

    def key(self) -> str:
        return json_hash(self.key_inputs(), 16)

    def cache_dir(self) -> Path:
        return cache_root() / self.name


@dataclass(frozen=True)
class IsolatedEnv:
    """A built environment: ``root`` is ``<cache>/<name>/<key>``."""

    spec: EnvSpec
    root: Path

    @property
    def key(self) -> str:
        return self.root.name

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    def run(self, args: Sequence[str], what: str, timeout: float = 600, json_output: bool = True) -> Any:
        """Runs ``python -I ARGS`` in this environment; returns its JSON output (stdout),
        or None with ``json_output=False`` (a script that writes files instead).

        Raises:
            DeviceUnavailableError: no interpreter, a timeout, or a failed run (the last
                lines of its stderr are in the message).
        """
        if not self.python.exists():
            raise DeviceUnavailableError(f"{what}: no {self.spec.name} environment at {self.root} "
                                         f"(no {self.python}); build it with 'make {self.spec.make_target}'")
        cmd = [str(self.python), "-I", *map(str, args)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=clean_env(dict(self.spec.env)))
        except subprocess.TimeoutExpired:
            raise DeviceUnavailableError(f"{what} did not finish within {timeout:.0f} s in the "
                                         f"{self.spec.name} environment {self.root}") from None
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise DeviceUnavailableError(f"{what} failed in the {self.spec.name} environment {self.root} "
                                         f"(exit {done.returncode}): {tail}")
        return json.loads(done.stdout) if json_output else None

    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())


def base_python(spec: EnvSpec) -> str:
    """An interpreter of ``spec.python`` to create the venv from: this one, or ``pythonX.Y`` on PATH."""
    if sys.version_info[:2] == spec.python:
        return sys.executable
    name = f"python{spec.python[0]}.{spec.python[1]}"
    found = shutil.which(name)
    if not found:
        raise DeviceUnavailableError(f"the {spec.name} environment needs Python {spec.python[0]}.{spec.python[1]} "
                                     f"({name} on PATH); this is Python {sys.version.split()[0]}")
    return found


def _run(cmd: List[str], spec: EnvSpec, what: str, timeout: float = 1200) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env())
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise DeviceUnavailableError(f"building the {spec.name} environment: {what} failed: {tail}")


def _build(spec: EnvSpec, final: Path, progress: Log) -> None:
    t0 = time.monotonic()
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        python = base_python(spec)
        progress(f"python -m venv ({python})")
        _run([python, "-m", "venv", str(tmp / "venv")], spec, "python -m venv")
        progress("pip install " + " ".join((*spec.pip_options, *spec.requirements)))
        _run([str(tmp / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary=:all:",
              *spec.pip_options, *spec.requirements], spec, "pip install")
        progress("smoke test")
        report = IsolatedEnv(spec, tmp).run(spec.smoke, "the smoke test")
        manifest = {"key": final.name, "key_inputs": spec.key_inputs(),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.monotonic() - t0, 1), "smoke": report}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"built {final} in {time.monotonic() - t0:.0f} s")


def ensure(spec: EnvSpec, progress: Optional[Log] = None, force: bool = False) -> IsolatedEnv:
    """The environment of ``spec``, built first if its key is not cached yet.

    Cheap when it exists (a hash and a directory check).

    Raises:
        DeviceUnavailableError: no Python of the right version, pip (PyPI) failed, or
            the smoke test failed.
    """
    progress = progress or _quiet
    base = spec.cache_dir()
    final = base / spec.key()
    if final.is_dir() and not force:
        return IsolatedEnv(spec, final)
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in base.glob(".tmp-*"):  # leftovers of killed builds
            shutil.rmtree(stale, ignore_errors=True)
        if final.is_dir() and force:
            shutil.rmtree(final)
        if not final.is_dir():
            progress(f"building {final} (once per key)")
            _build(spec, final, progress)
    return IsolatedEnv(spec, final)


def env_main(description: str, specs: Callable[[], Sequence[EnvSpec]], prog: str,
             argv: Optional[Sequence[str]] = None) -> int:
    """``build [--force] [-q]`` / ``info`` command line over the environments ``specs()``."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="build the environment(s) unless already cached")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("-q", "--quiet", action="store_true")
    sub.add_parser("info", help="print the cache key, its path and whether it is built")
    args = parser.parse_args(argv)
    try:
        for spec in specs():
            if args.cmd == "build":
                def say(msg: str, name=spec.name) -> None:
                    print(f"{name}: {msg}", file=sys.stderr, flush=True)

                print(ensure(spec, progress=None if args.quiet else say, force=args.force).root)
            else:
                final = spec.cache_dir() / spec.key()
                print(json.dumps({"name": spec.name, "key": spec.key(), "path": str(final),
                                  "built": final.is_dir()}, indent=2))
    except DeviceUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0

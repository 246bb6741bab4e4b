"""An isolated Python environment with MediaPipe, for the TFLite metadata writer and a real client.

MediaPipe needs absl-py ~= 2.x while tensorflow-model-optimization 0.8.1 pins absl-py
1.4.0, so MediaPipe cannot live in the pipeline's venv. It is an isolated
environment (:mod:`pipeline.store.isolated_env`): built once into
``~/.cache/mobile-model/mediapipe-env/<key>/`` keyed by everything it depends on, and
used by running :mod:`pipeline.publish.mediapipe_worker` with its own Python as a
subprocess.

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

import sys
from pathlib import Path
from typing import Optional, Sequence

from pipeline.store.isolated_env import EnvSpec, IsolatedEnv, cache_root, ensure, env_main
from pipeline.errors import Log

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
SPEC = EnvSpec(name="mediapipe-env", requirements=REQUIREMENTS, python=PYTHON, smoke=(str(WORKER), "versions"),
               make_target="mediapipe-env", builder_version=2, pip_options=("--no-deps",),
               env=(("GLOG_minloglevel", "2"),))  # MediaPipe's C++ logs on every task creation


def _stderr(msg: str) -> None:
    print(f"mediapipe-env: {msg}", file=sys.stderr, flush=True)


class MediaPipeEnv(IsolatedEnv):
    """The built MediaPipe environment; ``run(args)`` runs the worker with ``args``."""

    def __init__(self, root: Path):
        super().__init__(SPEC, Path(root))

    def run(self, args: Sequence[str], what: str, timeout: float = 600, json_output: bool = True) -> dict:
        return super().run([str(WORKER), *map(str, args)], what, timeout, json_output)

    @property
    def versions(self) -> dict:
        """The versions the smoke test reported (mediapipe, numpy)."""
        return self.manifest()["smoke"]


def cache_dir() -> Path:
    """``$MOBILE_MODEL_CACHE/mediapipe-env`` (default ``~/.cache/mobile-model/mediapipe-env``)."""
    return cache_root() / SPEC.name


def ensure_env(progress: Optional[Log] = _stderr, force: bool = False) -> MediaPipeEnv:
    """Returns the MediaPipe environment, building it first if this key is not cached yet.

    Raises:
        DeviceUnavailableError: no Python of the right version, or pip (PyPI) failed.
    """
    return MediaPipeEnv(ensure(SPEC, progress=progress, force=force).root)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return env_main("Build or inspect the isolated MediaPipe environment.", lambda: [SPEC],
                    "python -m pipeline.publish.mediapipe_env", argv)


if __name__ == "__main__":
    sys.exit(main())

"""Artifacts on disk: atomic writes, hashes, the build manifest and stage caching.

Every artifact is written to a temporary file in the same directory and renamed
into place, so a killed build never leaves a half-written file under a final
name. The manifest (``manifest.json``) holds one record per stage: its config,
input and output sha256, library versions, wall time and metrics. A stage whose
cache key (config + input hashes + code version) matches its record, and whose
outputs still hash as recorded, is not run again.
"""

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

from pipeline.config import config_hash
from pipeline.errors import MobileModelError

# Bumped when a stage's code changes what it produces, so old caches are not reused.
STAGE_CODE_VERSION = "1"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path next to ``path``; renames it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``suffix`` keeps an extension some writers insist on (Keras wants ``.h5``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


#: Libraries whose versions shape artifacts (stage records hold the first five).
STAGE_LIBRARIES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "numpy")
BUILD_LIBRARIES = STAGE_LIBRARIES + ("absl-py", "flatbuffers", "Pillow", "PyYAML", "scikit-learn",
                                     "mobile-model")
#: Environment variables that change what a build computes or how TensorFlow runs.
REPRODUCIBILITY_ENV = ("PYTHONHASHSEED", "TF_USE_LEGACY_KERAS", "TF_DETERMINISTIC_OPS",
                       "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                       "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TF_CONFIG", "MOBILE_MODEL_CACHE")


def library_versions(dists=STAGE_LIBRARIES) -> Dict[str, str]:
    """Versions of the libraries that shape artifacts (read from installed metadata)."""
    from importlib import metadata

    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def code_fingerprint() -> str:
    """sha256 over the source of the ``pipeline`` and ``models`` packages (sorted paths)."""
    top = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in ("pipeline", "models"):
        for p in sorted((top / pkg).rglob("*")):
            if p.suffix in (".py", ".yaml", ".c", ".h") and "__pycache__" not in p.parts:
                h.update(p.relative_to(top).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def reproducibility_record(seed: int) -> Dict[str, Any]:
    """Everything besides the recipe and the data that a build's artifacts depend on.

    The build stores it in the manifest under ``reproduce``: the seed and the
    determinism settings the training stages apply, the environment variables that
    matter, library versions, the code fingerprint, the ARM runtime key, the
    interpreter and the platform.
    """
    from pipeline.devices.runtime import runtime_key
    from pipeline.training import OP_DETERMINISM

    return {
        "seed": seed,
        "determinism": {"tf_op_determinism": OP_DETERMINISM, "keras_set_random_seed": seed,
                        "data_rng": "numpy default_rng([seed, crc32(stream)]) per split",
                        "gzip_mtime": 0},
        "env": {k: os.environ.get(k) for k in REPRODUCIBILITY_ENV},
        "versions": library_versions(BUILD_LIBRARIES),
        "code_sha256": code_fingerprint(),
        "arm_runtime_key": runtime_key(),
        "python": sys.version.split()[0],
        "platform": {"system": platform.system(), "release": platform.release(),
                     "machine": platform.machine(), "libc": "-".join(platform.libc_ver()),
                     "cpu_count": os.cpu_count()},
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


def verify_recorded_models(root: Path) -> int:
    """Checks that every ``tflite/*.tflite`` of a build is the file its manifest recorded.

    Such files were produced by the pipeline and may be loaded in process; a file
    changed or added after the build is not, and is refused.

    Returns:
        How many files were checked.

    Raises:
        ModelFileError: a .tflite with no record in ``manifest.json`` or whose
            sha256 differs from the record.
    """
    from pipeline.errors import ModelFileError

    root = Path(root)
    recorded = {}
    for rec in Manifest(root).stages.values():
        for out in (rec.get("outputs") or {}).values() if isinstance(rec, dict) else ():
            if isinstance(out, dict) and "path" in out:
                recorded[out["path"]] = out.get("sha256")
    files = sorted((root / "tflite").glob("*.tflite"))
    for p in files:
        rel = p.relative_to(root).as_posix()
        if rel not in recorded:
            raise ModelFileError(f"{p}: not recorded in {root / 'manifest.json'} (not produced by this build); "
                                 "rebuild, or check it with `mobile-model inspect`")
        if sha256_file(p) != recorded[rel]:
            raise ModelFileError(f"{p}: sha256 differs from the one recorded in {root / 'manifest.json'} "
                                 "(changed after the build); rebuild, or check it with `mobile-model inspect`")
    return len(files)


class BuildLockedError(MobileModelError):
    """Another build holds the lock on this build directory."""


@dataclass
class StageResult:
    metrics: Dict[str, Any]
    cached: bool
    wall_s: float


class Manifest:
    """The record of a build directory: one entry per stage, saved atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / "manifest.json"
        self.data: Dict[str, Any] = {"stages": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                # A manifest is only ever replaced atomically, so this is outside damage:
                # start over rather than trust any cached stage.
                self.data = {"stages": {}}
            self.data.setdefault("stages", {})

    @property
    def stages(self) -> Dict[str, Any]:
        return self.data["stages"]

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data)

    def rel(self, p: Path) -> str:
        p = Path(p)
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    @staticmethod
    def stage_key(config: Any, input_hashes: Mapping[str, str], extra_key: Any = None) -> str:
        """The cache key of a stage: its config, its inputs' sha256 and the code version."""
        return config_hash({"config": config, "inputs": dict(input_hashes), "extra": extra_key,
                            "code": STAGE_CODE_VERSION})

    def is_cached(self, stage: str, config: Any, inputs: Mapping[str, Path], outputs: Mapping[str, Path],
                  extra_key: Any = None) -> bool:
        """Whether :meth:`run_stage` with these arguments would skip the work."""
        key = self.stage_key(config, {n: sha256_file(Path(p)) for n, p in inputs.items()}, extra_key)
        return self.cached(stage, key, outputs) is not None

    def cached(self, stage: str, key: str, outputs: Mapping[str, Path]) -> Optional[Dict[str, Any]]:
        """The stage's record if its key matches and every output hashes as recorded."""
        rec = self.stages.get(stage)
        if not rec or rec.get("key") != key:
            return None
        recorded = rec.get("outputs", {})
        for name, p in outputs.items():
            entry = recorded.get(name)
            if entry is None or not Path(p).exists() or sha256_file(Path(p)) != entry["sha256"]:
                return None
        return rec

    def run_stage(
        self,
        stage: str,
        config: Any,
        inputs: Mapping[str, Path],
        outputs: Mapping[str, Path],
        fn: Callable[[], Dict[str, Any]],
        extra_key: Any = None,
        log: Callable[[str], None] = print,
    ) -> StageResult:
        """Runs ``fn`` unless the stage is cached; records it in the manifest.

        Args:
            stage: unique stage name within the build (e.g. ``convert/int8-ptq``).
            config: plain data (dict) that determines the stage's outputs.
            inputs: named input artifact paths; their sha256 enter the cache key.
            outputs: named output paths ``fn`` must write (atomically).
            fn: does the work; returns a metrics dict (JSON-serialisable).
            extra_key: other things that determine the outputs (e.g. a data fingerprint).

        Returns:
            StageResult with the metrics, whether it was cached, and wall time.
        """
        input_hashes = {n: sha256_file(Path(p)) for n, p in inputs.items()}
        key = self.stage_key(config, input_hashes, extra_key)
        rec = self.cached(stage, key, outputs)
        if rec is not None:
            log(f"[{stage}] up to date (cached)")
            return StageResult(rec.get("metrics", {}), True, rec.get("wall_s", 0.0))
        t0 = time.perf_counter()
        metrics = fn()
        wall = time.perf_counter() - t0
        missing = [n for n, p in outputs.items() if not Path(p).exists()]
        if missing:
            raise RuntimeError(f"stage {stage} did not write its outputs: {missing}")
        self.stages[stage] = {
            "key": key,
            "config": config,
            "inputs": {n: {"path": self.rel(p), "sha256": input_hashes[n]} for n, p in inputs.items()},
            "outputs": {n: {"path": self.rel(p), "sha256": sha256_file(Path(p))} for n, p in outputs.items()},
            "versions": library_versions(),
            "wall_s": round(wall, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metrics": metrics,
        }
        self.save()
        return StageResult(metrics, False, wall)


# The temporary names atomic_path creates: ".<name>.<8 random chars>.tmp[<suffix>]".
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def remove_stale_temps(root: Path) -> int:
    """Deletes temporary files a killed writer left under ``root``, and the staging
    directories of a killed bundle swap (``.bundle.*.tmp`` / ``.old``); returns how many.

    Only call with the build lock held: then no writer is active in ``root``.
    """
    n = 0
    for p in Path(root).rglob(".*.tmp*"):
        if p.is_file() and _TEMP_NAME.match(p.name):
            p.unlink()
            n += 1
    for p in Path(root).glob(".bundle.*"):
        if p.is_dir() and p.suffix in (".tmp", ".old"):
            shutil.rmtree(p)
            n += 1
    return n


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Holds an exclusive lock on a build directory for the duration of a build.

    The lock is an ``flock`` on ``root/.lock``: the kernel drops it when the
    holder dies, even by SIGKILL. On entry it removes temporary files of a killed
    earlier build.

    Inside the block (in the main thread) SIGINT and SIGTERM end the process at
    once, with one line on stderr (what was kept, how to resume) and exit code
    128 + the signal (130, 143). That is as safe as SIGKILL, which the atomic
    artifacts and stage records are built for, and safer than a
    KeyboardInterrupt raised at an arbitrary point inside TensorFlow (measured:
    one raised while TensorFlow traced a function surfaced as a SystemError
    traceback). Children in the build's process group receive a Ctrl-C
    themselves; isolated model loaders die with the build (``safe_load``).

    Raises:
        BuildLockedError: another process is building into ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildLockedError(f"another build is running in {root} (lock held on {root / '.lock'}); "
                                   "wait for it to finish or build into another --out directory") from None
        previous: Dict[int, Any] = {}
        err_fd = -1
        if threading.current_thread() is threading.main_thread():
            # A copy of stderr: converters redirect fd 2 to a file while they run
            # (pipeline.native.captured_stderr), and the message must reach the user.
            err_fd = os.dup(2)
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. nohup: stays ignored
                    previous[sig] = signal.signal(sig, functools.partial(_stop_now, root, err_fd))
        try:
            remove_stale_temps(root)
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if err_fd >= 0:
                os.close(err_fd)
            fcntl.flock(f, fcntl.LOCK_UN)


def _stop_now(root: Path, err_fd: int, signum: int, frame) -> None:
    """Signal handler inside a build: one line, then exit without unwinding."""
    os.write(err_fd, f"error: {_interrupted_message(root, signal.Signals(signum).name)}\n".encode())
    os._exit(128 + signum)


def _interrupted_message(root: Path, what: str) -> str:
    try:
        done = sorted(Manifest(root).stages)
    except OSError:
        done = []
    kept = f"{len(done)} completed stage(s) kept ({', '.join(done[:6])}{', ...' if len(done) > 6 else ''})" \
        if done else "no stage had completed"
    return (f"build interrupted ({what}); {kept} in {root}; no partial artifact is used: "
            "run the same command again to resume")

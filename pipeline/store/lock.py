"""The build lock: one build per directory, interrupt-safe, stale temporaries removed."""

import contextlib
import fcntl
import functools
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Dict, Iterator

from pipeline.errors import BuildLockedError
from pipeline.store.manifest import Manifest

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
    themselves; isolated model loaders die with the build (:mod:`pipeline.tflite.sandbox`).

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
                                   "wait for it to finish or build into another directory") from None
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

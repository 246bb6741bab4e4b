"""TensorFlow's process environment, and quieting the C++ logging of TensorFlow and LiteRT.

``tf_environment`` is the one place that sets the variables TensorFlow reads when
it is first imported; every entry point (the CLI group, ``import_tensorflow``, the
test configuration) calls it.

The converter and interpreters print to file descriptor 2 directly (not through
Python), so ``captured_stderr`` redirects the descriptor itself. What was printed
is replayed if the block fails, so nothing is hidden from a failing run.
"""

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
import warnings
from typing import Iterator

_environment_set = False


def tf_environment() -> None:
    """Sets TensorFlow's environment before its first import; later calls do nothing.

    Variables already in the environment win (``setdefault``), so a user can still
    turn TensorFlow's logging back on.
    """
    global _environment_set
    if _environment_set:
        return
    # tfmot only works on Keras 2 (tf_keras), and TensorFlow picks its Keras at import.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    # TensorFlow's C++ start-up lines (oneDNN, "no CUDA driver") are noise on a CPU build machine.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(tf_keras|tensorflow)\.")
    # Some start-up lines ("Could not find cuda drivers", absl's "before InitializeLog")
    # ignore TF_CPP_MIN_LOG_LEVEL: whichever module imports TensorFlow first, the
    # import runs with fd 2 captured.
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder("tensorflow"))
    _environment_set = True


class _QuietLoader(importlib.abc.Loader):
    """Delegates to the real loader, running the module's code under :func:`captured_stderr`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with captured_stderr():
            self.loader.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.loader, name)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Finds one top-level module the normal way and wraps its loader in :class:`_QuietLoader`.

    Removes itself on first use: only the first import executes the module.
    """

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


@contextlib.contextmanager
def captured_stderr() -> Iterator[None]:
    """Sends fd 2 to a temporary file for the block; replays it on an exception."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            tmp.seek(0)
            sys.stderr.write(tmp.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow():
    """Imports TensorFlow with its C++ start-up lines (oneDNN, CUDA probing) captured."""
    tf_environment()
    with captured_stderr():
        import tensorflow as tf
    return tf

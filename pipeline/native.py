"""Quieting the C++ logging of TensorFlow and LiteRT.

The converter and interpreters print to file descriptor 2 directly (not through
Python), so ``captured_stderr`` redirects the descriptor itself. What was printed
is replayed if the block fails, so nothing is hidden from a failing run.
"""

import contextlib
import os
import sys
import tempfile
from typing import Iterator


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
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    with captured_stderr():
        import tensorflow as tf
    return tf

"""Atomic writes and content hashes.

Every artifact is written to a temporary file in the same directory and renamed
into place, so a killed build never leaves a half-written file under a final name.
"""

import contextlib
import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gzip_size(data: bytes) -> int:
    """Compressed size at gzip level 9 with a fixed mtime (reproducible)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


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




def short_hash(data: Union[str, bytes], length: int) -> str:
    """The first ``length`` hex digits of the sha256 of ``data`` (text is hashed as UTF-8).

    Every cache key and short name of the package comes from here; each caller keeps
    the length its keys were first written with, so existing caches stay valid.
    """
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:length]


def json_hash(obj: Any, length: int, compact: bool = False) -> str:
    """:func:`short_hash` of ``obj`` as JSON with sorted keys (``str()`` of what JSON cannot
    hold); ``compact``: without spaces after separators."""
    separators = (",", ":") if compact else None
    return short_hash(json.dumps(obj, sort_keys=True, separators=separators, default=str), length)


def config_hash(obj: Any) -> str:
    """sha256 (first 16 hex) of canonical (compact) JSON of ``obj``."""
    return json_hash(obj, 16, compact=True)

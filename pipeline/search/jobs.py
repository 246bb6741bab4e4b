"""Where a search's trainings run: in this process, or as jobs of a pool.

A search trains two kinds of builds: each candidate's proxy (one build per rung,
``root/proxy/<candidate>``) and the finalists' full recipes (``root/finalists/<candidate>``).
On this machine with ``search.concurrency: 1`` they are built here, one at a time, as
they always were. Otherwise each is a job of a pool (:mod:`pipeline.pool`): worker
processes of this machine, or Ray tasks on the cluster this process joined.

A job needs no shared file system. It builds in a temporary directory of the node that
runs it, from the recipe and, when the search already keeps that build (a resumed or
repeated search), from the kept folder sent along as a tar archive, so the build's stage
cache skips what is done (a build's manifest holds paths relative to its folder). It
returns the build's summary, its log and its folder as a tar archive; this process
unpacks it where the search keeps it, atomically: the folder is replaced by the complete
new one, or left as it was (:func:`unpack`).
"""

import concurrent.futures as cf
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pipeline.errors import Log
from pipeline.pool import Needs, connected, largest_node_cpus, open_pool
from pipeline.recipe.schema import Recipe

#: CPUs a training job asks for: TensorFlow spreads one training over the cores it finds,
#: and every training figure of docs/search.md was measured on 2 cores; more cores gain
#: little on these small models and leave fewer trials running side by side. A cluster
#: whose largest node has fewer gets that node's count (else the job would never start).
TRAIN_CPUS = 2
#: Memory of a proxy build: float training and one conversion, below a full build.
PROXY_MEMORY_MB = 3072
#: Memory of a finalist's full recipe: DESIGN.md measured a MobileNetV2-0.35 build at
#: 96x96 (train, prune, QAT, int8, evaluation) at 4 GB at its peak.
FULL_MEMORY_MB = 4096
#: Files of a build folder that stay on the node that made them (the build lock).
_LOCAL_ONLY = (".lock",)

_log_lock = threading.Lock()


def pack(folder: Path) -> bytes:
    """``folder``'s files as an uncompressed tar archive (paths relative to it; no lock file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and p.name not in _LOCAL_ONLY:
                tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)
    return buf.getvalue()


def _extract(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")  # the data filter refuses absolute and outside paths


def unpack(data: bytes, dest: Path) -> None:
    """Replaces the folder ``dest`` by the archive ``data``, atomically: the archive is
    unpacked next to it, then renamed into place (a killed search leaves the old folder or
    the new one, and a staging folder :func:`remove_staging` clears)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=dest.parent))
    try:
        _extract(data, staging)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / dest.name)
            os.replace(staging, dest)
            shutil.rmtree(old)
        else:
            os.replace(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def remove_staging(root: Path) -> int:
    """Deletes the staging folders of a killed :func:`unpack` under ``root``'s ``proxy/``
    and ``finalists/`` (call with the search's lock held); returns how many."""
    n = 0
    for kind in ("proxy", "finalists"):
        for p in (Path(root) / kind).glob(".*"):
            if p.is_dir() and (".unpack-" in p.name or ".old-" in p.name):
                shutil.rmtree(p)
                n += 1
    return n


def build_job(recipe: Recipe, prior: Optional[bytes]) -> Tuple[Dict[str, Any], float, List[str], str, bytes]:
    """A pool job: builds ``recipe`` (no device checks) in a temporary directory, starting
    from the archive ``prior`` of an earlier build when given.

    Returns:
        (the summary as a dict, wall seconds, the log lines, the folder it was built in,
        the finished folder as a tar archive).
    """
    from pipeline.build import build

    lines: List[str] = []
    with tempfile.TemporaryDirectory(prefix="mm-search-") as tmp:
        out = Path(tmp) / "build"
        if prior is not None:
            _extract(prior, out)
        res = build(recipe, out=out, log=lines.append, run_devices=False)
        return res.summary.to_dict(), res.wall_s, lines, str(out.resolve()), pack(out)


def train_needs(memory_mb: int) -> Needs:
    """What a training job declares: :data:`TRAIN_CPUS` (at most the largest node's) and ``memory_mb``."""
    cpus = largest_node_cpus()
    return Needs(cpus=float(TRAIN_CPUS if cpus is None else max(min(TRAIN_CPUS, cpus), 1.0)),
                 memory_mb=memory_mb)


class Builds:
    """Runs a search's builds (see the module docstring); a context manager.

    Args:
        concurrency: builds at once (``search.concurrency``); with 1 and no cluster,
            each is built in this process when submitted.
    """

    def __init__(self, concurrency: int = 1):
        self.concurrency = concurrency
        self.inline = connected() is None and concurrency == 1
        self._pool = None if self.inline else open_pool(concurrency)

    def submit(self, recipe: Recipe, dest: Path, name: str, memory_mb: int, log: Log) -> cf.Future:
        """Builds ``recipe`` into ``dest`` (no device checks) as the job ``name``.

        Returns:
            a future of the :class:`pipeline.build.BuildResult` (its ``root`` is ``dest``),
            or of the error that names the job (:mod:`pipeline.pool`).
        """
        from pipeline.build import BuildResult, build
        from pipeline.summary import BuildSummary

        outer: cf.Future = cf.Future()
        if self.inline:
            try:
                outer.set_result(build(recipe, out=dest, log=log, run_devices=False))
            except Exception as e:  # raised where the caller reads the result, as before
                outer.set_exception(e)
            return outer
        dest = Path(dest)
        prior = pack(dest) if (dest / "manifest.json").is_file() else None
        inner = self._pool.submit(build_job, recipe, prior, name=name, needs=train_needs(memory_mb))

        def done(f: cf.Future) -> None:
            try:
                summary, wall, lines, where, data = f.result()
                unpack(data, dest)
                summary = _relocated(summary, where, dest)
                with _log_lock:
                    for line in lines:
                        log(line)
                outer.set_result(BuildResult(dest, BuildSummary.from_dict(summary, f"job {name}: summary"), wall))
            except BaseException as e:  # whatever happens, the caller is not left waiting
                outer.set_exception(e)

        inner.add_done_callback(done)
        return outer

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> "Builds":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _relocated(summary: Dict[str, Any], where: str, dest: Path) -> Dict[str, Any]:
    """The summary with the job's folder replaced by ``dest`` in its paths (also in ``dest/summary.json``)."""
    from pipeline.store.atomic import atomic_write_text
    from pipeline.summary import SUMMARY_FILE

    text = json.dumps(summary).replace(json.dumps(where)[1:-1], json.dumps(str(Path(dest).resolve()))[1:-1])
    moved = json.loads(text)
    path = Path(dest) / SUMMARY_FILE
    if path.is_file():
        kept = path.read_text().replace(json.dumps(where)[1:-1], json.dumps(str(Path(dest).resolve()))[1:-1])
        atomic_write_text(path, kept)
    return moved


def done_future(fn: Callable[[], Any]) -> cf.Future:
    """A finished future of ``fn()`` (its result, or the exception it raised)."""
    future: cf.Future = cf.Future()
    try:
        future.set_result(fn())
    except Exception as e:
        future.set_exception(e)
    return future

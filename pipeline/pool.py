"""Independent jobs in worker processes, on this machine or on a Ray cluster: one pool, two back-ends.

A caller opens a pool (:func:`open_pool`), submits jobs and reads their futures; it does
not know where they run::

    with open_pool(workers=2) as pool:
        future = pool.submit(run_one, model_bytes, x, name="device/pixel4/int8-qat", needs=Needs(memory_mb=2048))
        result = future.result()

Without a cluster a job runs in a spawned worker process of this machine (a
``ProcessPoolExecutor`` of ``workers`` processes). After :func:`connect` joined a Ray
cluster (``--ray ADDRESS`` or ``$RAY_ADDRESS``), every pool submits its jobs as Ray tasks
that declare their CPUs, memory and custom resources (:class:`Needs`) and are retried
:data:`RETRIES` times when their worker or node dies.

A job takes what it needs as arguments (model bytes, arrays) and returns its result: it
never reads nor writes the caller's files, so the nodes need no shared file system. The
caller writes what it keeps (atomically). Content-addressed caches (the ARM runtime,
converted reference models) stay in each node's user cache (``$MOBILE_MODEL_CACHE``).

A job that fails raises, from its future, an error that names the job: one of ours keeps
its type (and exit code) with the job's name in front; a job lost with its worker or node
raises :class:`pipeline.errors.ClusterError`; anything else (a bug) raises
:class:`JobError`.
"""

import concurrent.futures as cf
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from pipeline.errors import ClusterError, ConfigError, MobileModelError

#: The environment variable that names the cluster when ``--ray`` is not given (Ray's own).
ADDRESS_ENV = "RAY_ADDRESS"
#: How often Ray runs a job again after its worker or node died (not after the job raised).
RETRIES = 2
#: Seconds to wait for the head's port before saying it cannot be reached (``ray.init``
#: itself retries for minutes).
CONNECT_TIMEOUT_S = 5.0
#: While this process is joined, the head's port is probed every HEAD_PROBE_S seconds;
#: when it has not answered for HEAD_GONE_S, every unfinished job fails with one line and
#: the process leaves Ray. (Ray's own driver ends the whole process 60 s after it loses
#: the head, with a log line and none of the command's clean-up: this comes first.)
HEAD_PROBE_S = 2.0
HEAD_GONE_S = 10.0

__all__ = ["ADDRESS_ENV", "RETRIES", "JobError", "Needs", "Pool", "cluster_address", "connect", "connected",
           "device_resource", "disconnect", "head_lost", "largest_node_cpus", "open_pool", "run_job"]


class JobError(RuntimeError):
    """A job failed with an exception that is not one of ours (a bug); its cause is chained."""


@dataclass(frozen=True)
class Needs:
    """What one job needs from the node that runs it.

    Attributes:
        cpus: CPU cores (an emulated run is single-threaded: 1).
        memory_mb: memory the job may use at its peak.
        custom: custom resources of a node (:func:`device_resource`), each with its amount.
    """

    cpus: float = 1.0
    memory_mb: int = 1024
    custom: Mapping[str, float] = field(default_factory=dict)


def device_resource(host: str) -> str:
    """The custom resource a node advertises for the real device ``host`` that it can reach
    (``ray start --resources '{"mm-device:camera-7": 1}'``)."""
    return f"mm-device:{host}"


def cluster_address(address: Optional[str]) -> Optional[str]:
    """The cluster to join: ``address`` (``--ray``), else ``$RAY_ADDRESS``, else None (this machine)."""
    return address or os.environ.get(ADDRESS_ENV) or None


_joined: Dict[str, Any] = {"address": None, "lost": False}


def connected() -> Optional[str]:
    """The address of the Ray cluster this process joined, or None."""
    return _joined["address"]


def connect(address: Optional[str]) -> Optional[str]:
    """Joins the Ray cluster at ``address`` (see :func:`cluster_address`), so that every
    pool opened afterwards runs its jobs there. Nothing happens without an address.

    Returns:
        The address joined, or None (jobs run on this machine).

    Raises:
        ConfigError: an address that is not ``HOST:PORT`` (nor ``auto`` or ``ray://...``).
        ClusterError: nothing answers at the address, or Ray refused to join it.
    """
    address = cluster_address(address)
    if address is None or address == connected():
        return address
    _probe(address)
    import ray

    if head_lost():  # the watchdog left a cluster that went away (from its thread): finish here
        ray.shutdown()
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ClusterError(f"cannot join the Ray cluster at {address}: {first}") from None
    _joined["address"], _joined["lost"] = address, False
    where = _host_port(address)
    if where is not None:
        stop = threading.Event()
        threading.Thread(target=_watch_head, args=(address, where, stop), name="ray-head-watchdog",
                         daemon=True).start()
        _joined["watchdog"] = stop
    return address


def head_lost() -> bool:
    """Whether the head of the cluster this process joined stopped answering (see
    :data:`HEAD_GONE_S`): jobs can no longer be sent. Ray's exit handlers would wait on it,
    so the CLI ends the process with ``os._exit`` once it has said so
    (:func:`pipeline.cli.common.fail`)."""
    return bool(_joined["lost"])


def disconnect() -> None:
    """Leaves the cluster :func:`connect` joined (pools then run jobs on this machine)."""
    if connected() is not None:
        import ray

        stop = _joined.pop("watchdog", None)
        if stop is not None:
            stop.set()
        if not head_lost():  # else the watchdog left already
            ray.shutdown()
        _joined["address"] = None


def largest_node_cpus() -> Optional[float]:
    """The CPUs of the largest live node of the cluster this process joined (None on this
    machine): a job that asks for more would wait for a node that never comes."""
    if connected() is None:
        return None
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=None)


def _host_port(address: str) -> Optional[Tuple[str, int]]:
    """``(host, port)`` of a ``HOST:PORT`` address; None for ``auto`` and ``ray://...``."""
    if address == "auto" or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r}: expected HOST:PORT of the head node (its GCS port, "
                          f"6379 unless `ray start --head --port` said otherwise), 'auto' or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def _probe(address: str) -> None:
    """Fails at once when nothing listens at ``HOST:PORT`` (``ray.init`` would retry for minutes)."""
    where = _host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray head at {address}: {e.strerror or e}") from None


def _answers(where: Tuple[str, int]) -> bool:
    try:
        socket.create_connection(where, timeout=HEAD_PROBE_S).close()
    except OSError:
        return False
    return True


class Pool:
    """Runs independent jobs; :func:`open_pool` gives the back-end of this process."""

    def submit(self, fn: Callable[..., Any], *args: Any, name: str, needs: Needs = Needs()) -> cf.Future:
        """Runs ``fn(*args)`` (a module-level function; arguments and result picklable) as the job ``name``.

        Returns:
            Its future: the result, or an error naming the job (see the module docstring).
        """
        raise NotImplementedError

    def require(self, needs: Iterable[Needs]) -> None:
        """Checks, before any job is submitted, that some node has every custom resource of
        ``needs`` (on this machine there is nothing to check).

        Raises:
            ClusterError: naming the resources no node advertises.
        """

    def close(self) -> None:
        """Drops the jobs not started (here: waits for the running ones; on a cluster: cancels them)."""

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _LocalPool(Pool):
    """Spawned worker processes of this machine (started at the first job)."""

    def __init__(self, workers: int):
        self._workers = workers
        self._executor: Optional[cf.ProcessPoolExecutor] = None

    def submit(self, fn, *args, name: str, needs: Needs = Needs()) -> cf.Future:
        if self._executor is None:
            self._executor = cf.ProcessPoolExecutor(max_workers=self._workers,
                                                    mp_context=multiprocessing.get_context("spawn"))
        return _named(self._executor.submit(fn, *args), name)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class _RayPool(Pool):
    """Ray tasks on the cluster :func:`connect` joined."""

    def __init__(self, address: str):
        self._address = address
        self._remote: Dict[Callable, Any] = {}
        self._refs: List[Any] = []

    def submit(self, fn, *args, name: str, needs: Needs = Needs()) -> cf.Future:
        import ray

        if head_lost():
            raise _gone_error(self._address)
        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn)
        task = self._remote[fn].options(num_cpus=needs.cpus, memory=int(needs.memory_mb) * 2 ** 20,
                                        resources=dict(needs.custom), max_retries=RETRIES, name=name)
        ref = task.remote(*args)
        self._refs.append(ref)
        outer = _named(ref.future(), name)
        with _out_lock:
            _out[outer] = name
        outer.add_done_callback(_returned)
        return outer

    def require(self, needs: Iterable[Needs]) -> None:
        import ray

        have = ray.cluster_resources()
        missing = sorted({r for n in needs for r, amount in n.custom.items() if have.get(r, 0) < amount})
        if missing:
            raise ClusterError(
                f"no node of the Ray cluster at {self._address} advertises {', '.join(missing)}: start one "
                f"where the device can be reached with ray start --address {self._address} "
                f"--resources '{{\"{missing[0]}\": 1}}'")

    def close(self) -> None:
        import ray

        if head_lost():  # nothing to cancel them with
            self._refs = []
            return
        if self._refs:  # a caller that stops early (an error) leaves jobs behind: they are cancelled
            _, not_ready = ray.wait(self._refs, num_returns=len(self._refs), timeout=0)
            for ref in not_ready:
                ray.cancel(ref)
        self._refs = []


#: The jobs out on the cluster (their futures, with their names), for the head's watchdog.
_out: Dict[cf.Future, str] = {}
_out_lock = threading.Lock()


def _returned(f: cf.Future) -> None:
    with _out_lock:
        _out.pop(f, None)


def _watch_head(address: str, where: Tuple[str, int], stop: threading.Event) -> None:
    """While this process is joined: once the head has not answered for :data:`HEAD_GONE_S`,
    fails every job out with one line, and leaves Ray, whose driver would otherwise end the
    process 60 s after losing the head (also while this process works on its own, e.g.
    trains, between jobs)."""
    silent_since: Optional[float] = None
    while not stop.wait(HEAD_PROBE_S):
        if _answers(where):
            silent_since = None
            continue
        now = time.monotonic()
        silent_since = silent_since or now
        if now - silent_since < HEAD_GONE_S:
            continue
        _joined["lost"] = True
        with _out_lock:
            out = list(_out.items())
            _out.clear()
        for f, name in out:
            try:
                f.set_exception(_gone_error(address, name, len(out)))
            except cf.InvalidStateError:  # it finished meanwhile
                pass
        try:
            import ray

            ray.shutdown()
        except Exception:  # noqa: BLE001 - leaving a cluster that is gone: nothing more to do
            pass
        return


def _gone_error(address: str, name: Optional[str] = None, unfinished: int = 0) -> ClusterError:
    jobs = f"job {name} and {unfinished - 1} more unfinished" if name and unfinished > 1 else (
        f"job {name} unfinished" if name else "no job can be sent")
    return ClusterError(f"the Ray head at {address} went away ({jobs}): results finished before "
                        "are kept; run the command again when the cluster is back, or without --ray, "
                        "to go on from them")


def run_job(fn: Callable[..., Any], *args: Any, name: str, needs: Needs = Needs()) -> Any:
    """``fn(*args)`` as one job of the cluster this process joined, waited for (see
    :meth:`Pool.submit`; call it only when :func:`connected`): the result, or the error
    that names the job."""
    with open_pool(1) as pool:
        return pool.submit(fn, *args, name=name, needs=needs).result()


def open_pool(workers: int) -> Pool:
    """A pool on the cluster this process joined (:func:`connect`), else ``workers``
    spawned processes of this machine."""
    address = connected()
    return _LocalPool(workers) if address is None else _RayPool(address)


def _named(inner: cf.Future, name: str) -> cf.Future:
    """A future of ``inner``'s result whose failure names the job (:func:`job_error`)."""
    outer: cf.Future = cf.Future()

    def done(f: cf.Future) -> None:
        if outer.done():  # failed already: the head went away (_RayPool)
            return
        if f.cancelled():
            outer.cancel()
            outer.set_running_or_notify_cancel()
            return
        error = f.exception()
        if error is None:
            outer.set_result(f.result())
            return
        try:
            error = job_error(name, error)
        finally:  # whatever happens here, the caller is not left waiting
            outer.set_exception(error)

    inner.add_done_callback(done)
    return outer


def job_error(name: str, error: BaseException) -> BaseException:
    """The error a failed job ``name`` raises from its future.

    One of ours keeps its type with the job's name in front; a worker or node that died
    (after its retries on a cluster) is a :class:`ClusterError`; anything else a
    :class:`JobError` chained to it.
    """
    ray_exceptions = sys.modules.get("ray.exceptions")
    if ray_exceptions is not None and isinstance(error, ray_exceptions.RayTaskError):
        return job_error(name, error.cause)
    if isinstance(error, MobileModelError):
        try:
            named = type(error)(f"job {name}: {error}")
        except TypeError:  # an error type of ours with another constructor: the message alone
            named = ClusterError(f"job {name}: {error}")
        return named.with_traceback(error.__traceback__)
    if isinstance(error, BrokenProcessPool):
        return ClusterError(f"job {name}: its worker process died ({error})")
    if ray_exceptions is not None and isinstance(error, ray_exceptions.RayError):
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return ClusterError(f"job {name} was lost on the Ray cluster ({RETRIES} retries): "
                            f"{type(error).__name__}: {first}")
    named = JobError(f"job {name} failed: {type(error).__name__}: {error}")
    named.__cause__ = error
    return named

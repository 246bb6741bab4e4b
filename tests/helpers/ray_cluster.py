"""A real two-node Ray cluster on 127.0.0.1 for the tests of :mod:`pipeline.pool`.

``ray start --head`` and one more ``ray start --address`` node, one CPU each, every port
chosen free and every file under a temporary directory of its own (``--temp-dir``), a
short one under /tmp: Ray's sockets live there, and a Unix socket's path may not exceed
107 bytes (a pytest-xdist worker's tmp path already takes most of them).
Each ``ray start`` runs in a session of its own, so the processes it leaves (GCS, raylet,
agents) share its process group; a raylet starts each of its workers in a process group
of its own (a job's children, e.g. qemu, join it). :meth:`LocalCluster.stop` ends those
groups, and only those (``ray stop`` would end every Ray process of the machine, other
users' too).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head of ``head_cpus`` CPUs (0: it runs no job) and ``extra_nodes`` more nodes of one
    CPU each (see the module docstring)."""

    def __init__(self, env: Optional[Dict[str, str]] = None, extra_nodes: int = 1,
                 resources: Optional[Dict[str, float]] = None, head_cpus: int = 1):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mmray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        self.env = dict(os.environ, PYTHONPATH=path, RAY_USAGE_STATS_ENABLED="0", **(env or {}))
        self.env.pop("RAY_ADDRESS", None)
        self._groups: List[int] = []
        self._extra_nodes = extra_nodes
        self._resources = resources
        self._head_cpus = head_cpus

    def _ray_start(self, *args: str, cpus: int = 1) -> None:
        ray = str(Path(sys.executable).parent / "ray")
        # No log monitor (a driver here joins with log_to_driver=False) and, on the head, no
        # autoscaler monitor (the cluster is fixed): two Python processes less per node.
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--temp-dir", str(self.temp_dir),
                  "--object-store-memory", str(200 * 2 ** 20), "--disable-usage-stats", "--include-log-monitor=false",
                  "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                  "--runtime-env-agent-port", str(free_port())]
        p = subprocess.Popen([ray, "start", *args, *common], env=self.env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._groups.append(p.pid)  # its session: every process it starts
        out, _ = p.communicate(timeout=180)
        if p.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed ({p.returncode}):\n{out[-3000:]}")

    def start(self) -> "LocalCluster":
        self._ray_start("--head", "--port", str(self.port), "--include-dashboard=false", "--no-monitor",
                        "--ray-client-server-port", str(free_port()), cpus=self._head_cpus)
        for _ in range(self._extra_nodes):
            extra = ["--resources", _json(self._resources)] if self._resources else []
            self._ray_start("--address", self.address, *extra)
        return self

    @property
    def head_group(self) -> int:
        """The process group of the head node (its GCS, raylet and workers)."""
        return self._groups[0]

    @property
    def node_groups(self) -> List[int]:
        """The process groups of the nodes other than the head (one each)."""
        return list(self._groups[1:])

    def running_job(self) -> Optional[Tuple[int, str]]:
        """``(process group, process title)`` of a node other than the head and of its worker
        that runs a task now (Ray titles a busy worker ``ray::<function>``, an idle one
        ``ray::IDLE``; the node's agents, also ``ray::...``, share the node's group), or None."""
        procs = _processes()
        for pid, (group, parent, title) in procs.items():
            node = procs.get(parent, (None,))[0]
            if (node in self.node_groups and group == pid and title.startswith("ray::")
                    and not title.startswith("ray::IDLE")):
                return node, title
        return None

    def pause_nodes(self) -> None:
        """SIGSTOP to every node other than the head: its group and its workers' (a job that
        runs there stops where it is)."""
        groups = self.node_groups
        for group in groups + _worker_groups(groups):
            _signal(group, signal.SIGSTOP)

    def kill_node(self, group: int) -> None:
        """SIGKILL to the node of process group ``group`` and to its workers (each in a group
        of its own, which would otherwise run on until they miss their raylet)."""
        for g in [group] + _worker_groups([group]):
            _signal(g, signal.SIGKILL)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGKILL to this cluster's process groups and its workers' (each followed by SIGCONT,
        for a group a test paused), then waits until none of their processes runs (a zombie
        only waits for its reaper). A throwaway cluster keeps nothing that a graceful exit
        would save, and Ray's GCS and raylets take seconds to leave on SIGTERM."""
        groups = self._groups + _worker_groups(self._groups)
        for group in groups:
            for each in (signal.SIGKILL, signal.SIGCONT):
                _signal(group, each)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _running(groups):
            time.sleep(0.05)
        self._groups = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _processes() -> Dict[int, Tuple[int, int, str]]:
    """``{pid: (process group, parent, title)}`` of the processes of this machine now."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if fields[0] != "Z":
            found[int(pid)] = (int(fields[2]), int(fields[1]), title)
    return found


def _worker_groups(groups: List[int]) -> List[int]:
    """The process groups of the workers that the raylets of ``groups`` started."""
    procs = _processes()
    return sorted({g for pid, (g, parent, _) in procs.items()
                   if g == pid and g not in groups and procs.get(parent, (None,))[0] in groups})


def _running(groups: List[int]) -> bool:
    """Whether a process of ``groups`` runs (is not a zombie)."""
    return any(g in groups for g, _, _ in _processes().values())


def _signal(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _json(resources: Dict[str, float]) -> str:
    import json

    return json.dumps(resources)


@contextlib.contextmanager
def starting_cluster(**kwargs) -> Iterator[LocalCluster]:
    """A :class:`LocalCluster` (``kwargs`` as its constructor's) that starts in the background
    while the block runs (other work meanwhile: its ``ray start`` commands mostly wait):
    ``started.result()`` waits for it and gives it (or raises what its start raised).
    Left (:func:`pipeline.pool.disconnect`) and stopped on exit."""
    from pipeline.pool import disconnect

    c = LocalCluster(**kwargs)
    starter = ThreadPoolExecutor(1)
    c.started = starter.submit(c.start)
    try:
        yield c
    finally:
        starter.shutdown(wait=True)
        disconnect()
        c.stop()

"""A real two-node Ray cluster on 127.0.0.1 for the tests of :mod:`pipeline.pool`.

``ray start --head`` and one more ``ray start --address`` node, one CPU each, every port
chosen free and every file under a temporary directory of its own (``--temp-dir``), a
short one under /tmp: Ray's sockets live there, and a Unix socket's path may not exceed
107 bytes (a pytest-xdist worker's tmp path already takes most of them).
Each ``ray start`` runs in a session of its own, so the processes it leaves (GCS, raylet,
workers) share its process group: :meth:`LocalCluster.stop` ends those groups, and only
those (``ray stop`` would end every Ray process of the machine, other users' too).
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
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--temp-dir", str(self.temp_dir),
                  "--object-store-memory", str(200 * 2 ** 20), "--disable-usage-stats",
                  "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                  "--runtime-env-agent-port", str(free_port())]
        p = subprocess.Popen([ray, "start", *args, *common], env=self.env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._groups.append(p.pid)  # its session: every process it starts
        out, _ = p.communicate(timeout=180)
        if p.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed ({p.returncode}):\n{out[-3000:]}")

    def start(self) -> "LocalCluster":
        self._ray_start("--head", "--port", str(self.port), "--include-dashboard=false",
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
        """``(process group, process title)`` of a worker of a node other than the head that
        runs a task now (Ray titles a busy worker ``ray::<function>``, an idle one
        ``ray::IDLE``), or None."""
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                group = os.getpgid(int(pid))
            except OSError:  # gone meanwhile
                continue
            if group in self.node_groups and title.startswith("ray::") and not title.startswith("ray::IDLE"):
                return group, title
        return None

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM to this cluster's process groups, SIGKILL to what is left after ``grace_s``
        (each followed by SIGCONT, for a group a test paused)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in self._groups:
                for each in (sig, signal.SIGCONT):
                    try:
                        os.killpg(group, each)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(_alive(g) for g in self._groups):
                time.sleep(0.2)
        self._groups = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _json(resources: Dict[str, float]) -> str:
    import json

    return json.dumps(resources)


@contextlib.contextmanager
def joined_cluster(**kwargs) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster` (``kwargs`` as its constructor's) that this process
    has joined (:func:`pipeline.pool.connect`); left and stopped on exit."""
    from pipeline.pool import connect, disconnect

    c = LocalCluster(**kwargs)
    try:
        c.start()
        connect(c.address)
        yield c
    finally:
        disconnect()
        c.stop()

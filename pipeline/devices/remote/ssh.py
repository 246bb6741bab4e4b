"""The system's ``ssh``/``scp``, never prompting, and what their failures mean.

Every call runs in batch mode (no password or passphrase prompt), with a connect
timeout, the user's key (``-i``), and a known-hosts file of the tool's own
(:func:`known_hosts`) with ``StrictHostKeyChecking=accept-new``: a board's key is
learnt on first contact, and a key that changed later is refused.

Running is kept apart from reading: :class:`Ssh` returns ssh's exit code and output;
:func:`connection_error` turns the output of a failed connection into one sentence.
"""

import re
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

from pipeline.devices.remote.target import SshTarget, cache_dir
from pipeline.errors import ConfigError, DeviceUnavailableError

#: ssh's own exit code for a failure of the connection (the remote command's code otherwise).
SSH_FAILED = 255
#: Seconds to wait for the TCP connection and the SSH handshake.
CONNECT_TIMEOUT_S = 10


def known_hosts() -> Path:
    """The known-hosts file of the tool (``<cache>/remote/known_hosts``), not ``~/.ssh``'s."""
    return cache_dir() / "known_hosts"


_FAILURES = (
    (re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed"),
     "the host key of {where} has changed since it was first seen (recorded in {known}): "
     "refused. If the board was re-installed, remove its old key with "
     "ssh-keygen -R '{key_name}' -f {known}"),
    (re.compile(r"Permission denied|Too many authentication failures"),
     "authentication failed for {who}: the key {identity} was refused (is its public key in "
     "the board's ~/.ssh/authorized_keys?)"),
    (re.compile(r"Connection refused"),
     "cannot connect to {where}: connection refused (is sshd running there, on port {port}?)"),
    (re.compile(r"Could not resolve hostname"), "cannot connect to {where}: unknown host name"),
    (re.compile(r"timed out|No route to host|Network is unreachable"),
     "cannot connect to {where}: no answer within {timeout} s"),
)


def connection_error(stderr: str, target: SshTarget, identity: Optional[Path], during: str) -> str:
    """One sentence for ssh/scp's exit 255 with ``stderr``; ``during`` says what was under way.

    A connection that fails for none of the known reasons after it was made is a lost
    connection ("the connection to HOST was lost during the run").
    """
    where = f"{target.host}:{target.port}"
    fields = dict(where=where, port=target.port, who=f"{target.destination} ({where})",
                  identity=identity or "(ssh's default keys)", known=known_hosts(), timeout=CONNECT_TIMEOUT_S,
                  key_name=target.host if target.port == 22 else f"[{target.host}]:{target.port}")
    for pattern, message in _FAILURES:
        if pattern.search(stderr):
            return message.format(**fields)
    last = (stderr.strip().splitlines() or ["no message"])[-1]
    return f"the connection to {where} was lost during {during} (ssh exit 255: {last})"


class Ssh:
    """ssh/scp to one board with fixed options.

    Args:
        target: the board.
        identity: the private key (``-i``), or None for ssh's defaults.
        timeout_s: wall-clock limit of one call (a run included).
    """

    def __init__(self, target: SshTarget, identity: Optional[Path] = None, timeout_s: float = 600.0):
        if identity is not None and not Path(identity).is_file():
            raise ConfigError(f"identity file {identity} does not exist")
        self.target, self.identity, self.timeout_s = target, identity, timeout_s

    def options(self) -> List[str]:
        known = known_hosts()
        known.parent.mkdir(parents=True, exist_ok=True)
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3"]
        if self.identity is not None:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return opts

    def _call(self, argv: Sequence[str], during: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(list(argv), capture_output=True, timeout=self.timeout_s,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise DeviceUnavailableError(f"{argv[0]} is not installed on this machine (it reaches "
                                         f"boards over SSH): install OpenSSH's client") from None
        except subprocess.TimeoutExpired:
            raise DeviceUnavailableError(f"{during} on {self.target.host} took more than "
                                         f"{self.timeout_s:.0f} s") from None

    def fail(self, done: subprocess.CompletedProcess, during: str) -> DeviceUnavailableError:
        """The error for a call that ssh itself failed (exit 255)."""
        return DeviceUnavailableError(connection_error(done.stderr.decode(errors="replace"), self.target,
                                                       self.identity, during))

    def run(self, command: str, during: str) -> subprocess.CompletedProcess:
        """Runs a shell ``command`` on the board: its exit code and raw output (bytes).

        Raises:
            DeviceUnavailableError: ssh failed (exit 255), or the call timed out.
        """
        done = self._call(["ssh", *self.options(), "-p", str(self.target.port), self.target.destination,
                           command], during)
        if done.returncode == SSH_FAILED:
            raise self.fail(done, during)
        return done

    def put(self, files: Sequence[Path], remote_dir: str, during: str) -> None:
        """Copies local ``files`` into the board's ``remote_dir`` (an absolute path)."""
        self._scp([str(f) for f in files] + [f"{self._host()}:{remote_dir}/"], during)

    def get(self, remote_path: str, local_dir: Path, during: str) -> None:
        """Copies the board's ``remote_path`` (a directory: recursively) into ``local_dir``."""
        self._scp(["-r", f"{self._host()}:{remote_path}", str(local_dir)], during)

    def _host(self) -> str:
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        return f"{self.target.user}@{host}" if self.target.user else host

    def _scp(self, args: List[str], during: str) -> None:
        done = self._call(["scp", "-q", *self.options(), "-P", str(self.target.port), *args], during)
        if done.returncode == SSH_FAILED or (done.returncode and _connection_words(done.stderr)):
            raise self.fail(done, during)
        if done.returncode:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise DeviceUnavailableError(f"copying files ({during}) with {self.target.host} failed: {tail[0]}")


def _connection_words(stderr: bytes) -> bool:
    text = stderr.decode(errors="replace")
    return any(p.search(text) for p, _ in _FAILURES) or "Connection closed" in text or "lost connection" in text

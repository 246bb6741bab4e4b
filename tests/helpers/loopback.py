"""Run the test session in a network namespace of its own that has only the loopback interface.

The tests start real services (an OpenSSH server, a Ray cluster, TensorFlow workers) and
must reach them on 127.0.0.1 only. Most of them bind 127.0.0.1 when told, but Ray does
not: ``ray start --node-ip-address 127.0.0.1`` swaps the loopback address for the
machine's routable one, and its GCS and raylet gRPC servers listen on every interface.
In a namespace where loopback is the only interface there is nothing else to listen on,
and nothing a test starts can be reached from outside the machine, nor reach out.

:func:`enter` is called once by the pytest process before it starts its workers (which
inherit the namespace). It needs ``CAP_SYS_ADMIN`` (root); without it the session stays
on the host's network, and the header line of the run says so.
"""

import ctypes
import fcntl
import os
import socket
import struct

#: unshare(2) flag for a new network namespace (linux/sched.h).
CLONE_NEWNET = 0x40000000
#: ioctls that read and set an interface's flags (linux/sockios.h), and its "up" flag.
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
#: Set to ``host`` to keep the session on the host's network.
ENV = "MOBILE_MODEL_TEST_NETWORK"


def enter() -> str:
    """Move this process into a new network namespace with loopback up; returns one line
    that says which network the session uses (for pytest's header)."""
    if os.environ.get(ENV) == "host":
        return f"network: the host's ({ENV}=host)"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        return (f"network: the host's (a namespace of its own needs root: unshare: {os.strerror(err)}); "
                "services bind 127.0.0.1 where they let us")
    _loopback_up()
    return "network: a namespace of its own with loopback only: every service a test starts is on 127.0.0.1"


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))

"""A peer on a network of its own, which can vanish without a word: no reset, no FIN.

On loopback a peer cannot disappear silently: whatever happens to its process, its kernel
answers with a FIN or a reset. Here the peer's sockets live in a network namespace joined to
this one by a veth pair; taking its address away makes its kernel drop every packet for it
unanswered, exactly as a phone whose network is gone. Needs root and iproute2's ``ip`` (as
every machine of this project has); a test that uses it fails, never skips, without them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

# Made in the namespace by a child process and handed back over a Unix socket: a socket
# stays in the namespace it was made in.
_MAKE_SOCKET = """
import socket, sys
unix = socket.socket(fileno=int(sys.argv[1]))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
socket.send_fds(unix, [b"s"], [tcp.fileno()])
"""


IP: Final = shutil.which("ip") or "/usr/sbin/ip"


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=10)  # noqa: S603


@dataclass
class IsolatedPeer:
    namespace: str
    host_address: str  # this side of the veth pair: where the gateway is reached
    peer_address: str
    peer_device: str

    def socket(self) -> socket.socket:
        """An unconnected TCP socket of the peer's network."""
        ours, theirs = socket.socketpair()
        with ours, theirs:
            subprocess.run(  # noqa: S603  # our own command
                [
                    IP,
                    "netns",
                    "exec",
                    self.namespace,
                    sys.executable,
                    "-c",
                    _MAKE_SOCKET,
                    str(theirs.fileno()),
                ],
                check=True,
                pass_fds=[theirs.fileno()],
                timeout=10,
            )
            _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        return socket.socket(fileno=fds[0])

    def vanish(self) -> None:
        """The peer's network is gone: its kernel no longer answers anything sent to it."""
        _ip("netns", "exec", self.namespace, "ip", "addr", "flush", "dev", self.peer_device)


@contextlib.contextmanager
def isolated_peer() -> Iterator[IsolatedPeer]:
    tag = f"{os.getpid() % 100_000}{random.randrange(1000)}"  # noqa: S311  # a name, not a secret
    namespace, host_device, peer_device = f"kgw{tag}", f"kgwh{tag}", f"kgwp{tag}"
    subnet = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"  # noqa: S311
    host, peer = f"{subnet}.1", f"{subnet}.2"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", host_device, "type", "veth", "peer", "name", peer_device)
        _ip("link", "set", peer_device, "netns", namespace)
        _ip("addr", "add", f"{host}/30", "dev", host_device)
        _ip("link", "set", host_device, "up")
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"{peer}/30", "dev", peer_device)
        _ip("netns", "exec", namespace, "ip", "link", "set", peer_device, "up")
        yield IsolatedPeer(namespace, host, peer, peer_device)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_device)
        _ip("netns", "del", namespace)

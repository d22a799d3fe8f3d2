"""Streamed utterances corked: the socket a streamed upload's call opens to the backend holds
its bytes back (Linux ``TCP_CORK``) until a full segment is ready or the upload ends (or,
with nothing in flight, the kernel's ceiling: 200 ms), instead of sending one small segment
per audio frame.

Each frame is still one write, but the kernel transmits (and, on the same host, delivers and
wakes the backend for) one segment per many frames. Measured with 4 KiB frames: in a
loopback micro-benchmark the gateway's CPU per streamed frame fell from ~31 to 14-20 µs; on
the bench's streamed case a frame's forwarding went from ~11 to ~3 µs over its ingest, with
no copy of ours and no memory held in the process (joining frames into larger chunks took
twice the memory, bench/README.md "Streamed utterances"). Nothing waits for those bytes
before the upload's end — the backend answers once the body is whole — and ``release``
uncorks the socket as the end is written, so the last bytes go at once.

The socket is aiohttp's (``TCPConnector(socket_factory=backend_socket)``), made as aiohttp
makes one; it is corked only when the call opening it runs inside ``Cork.start``, found
through a context variable (a task copies its context when it is made). Every other backend
call gets a socket as before. Where the system has no ``TCP_CORK`` nothing is corked."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

T = TypeVar("T")

TCP_CORK: Final[int | None] = getattr(socket, "TCP_CORK", None)


class Cork:
    """The sockets one streamed upload's call opened corked, until ``release``."""

    __slots__ = ("_held", "_released")

    def __init__(self) -> None:
        self._held: list[socket.socket] = []
        self._released = False

    def start(self, call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``call`` as a task whose backend sockets are corked."""
        token = _corking.set(self)
        try:
            return asyncio.ensure_future(call)
        finally:
            _corking.reset(token)

    @property
    def corked(self) -> tuple[socket.socket, ...]:
        return tuple(self._held)

    def take(self, sock: socket.socket) -> None:
        """Cork ``sock``, unless the upload has already ended (its end is sent at once)."""
        if self._released or TCP_CORK is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_CORK, 1)
        except OSError:
            return  # not a TCP socket after all: sent as any other
        self._held.append(sock)

    def release(self) -> None:
        """Uncork: what the sockets hold is sent now, and what follows at once; a socket the
        call opens from now on is not corked. Safe to call more than once, and after the
        sockets are closed."""
        self._released = True
        held, self._held = self._held, []
        for sock in held:
            with contextlib.suppress(OSError):  # closed meanwhile: nothing to send
                sock.setsockopt(socket.IPPROTO_TCP, TCP_CORK or 0, 0)


_corking: contextvars.ContextVar[Cork | None] = contextvars.ContextVar(
    "kalami_backend_corking", default=None
)


def backend_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """aiohttp's socket factory: a socket as aiohttp would make it, corked when the call
    that opens it is a streamed upload's (``Cork.start``)."""
    family, kind, proto = addr_info[:3]
    sock = socket.socket(family=family, type=kind, proto=proto)
    cork = _corking.get()
    if cork is not None:
        cork.take(sock)
    return sock

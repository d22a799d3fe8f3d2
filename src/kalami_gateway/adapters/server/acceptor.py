"""The gateway accepts its own connections, so that running out of files is never silent.

uvloop accepts in C (libuv). When ``accept`` fails with EMFILE or ENFILE, libuv closes a
spare descriptor it keeps, accepts every waiting connection and closes it at once, and opens
the spare again: each client sees its connection closed before any answer, and nothing is
logged or counted (and should libuv pass the error on, uvloop closes the listening server
for good, still without a word). Measured from outside (issue 29): a worker at its limit
dropped a third of a run's connects, and ``GET /stats`` too, while other workers had room.

``Acceptor`` does the accepting in Python on uvloop's reader callback (``add_reader``) and
hands each socket to uvloop as an accepted connection (``connect_accepted_socket``): a few
µs per connection beside a handshake's ~400. An accept that fails for lack of files is
counted and logged once per burst (``SocketCapacity.accept_failed``), and its client is
still answered: a spare descriptor of ours is let go, the waiting connection accepted into
it, told ``503`` with ``Retry-After`` and closed, and the spare taken back — the trick
libuv plays, with an answer instead of silence. Should even the spare be taken, accepting
pauses for ``PAUSE_SECONDS`` (the connections wait in the kernel's queue, not lost).

The ceiling (``adapters/capacity.py``) keeps a process well short of its limit, so this is
the last line, not the usual path: past the ceiling a handshake is refused by the HTTP
protocol, which has read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Final

from kalami_gateway.adapters.capacity import SocketCapacity
from kalami_gateway.adapters.server.http_protocol import refusal

log = logging.getLogger(__name__)

# Connections accepted per wake-up of the loop, at most (asyncio's own server takes its
# backlog's worth; a burst of thousands must not stall the loop's other work).
BATCH: Final = 128
# Accepting pauses this long when not even the spare descriptor can be had, or accept fails
# otherwise (the socket stays readable: retried at once, it would spin).
PAUSE_SECONDS: Final = 0.1
_OUT_OF_FILES: Final = {errno.EMFILE: "EMFILE", errno.ENFILE: "ENFILE"}
REFUSAL: Final = refusal(503)


def _spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class Acceptor:
    """Accepts on one listening socket for ``protocol_factory``'s protocols until closed.

    Looks to uvicorn like the server it would have made (``close``, ``wait_closed``); the
    listening socket is closed with it."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        capacity: SocketCapacity,
        backlog: int,
    ) -> None:
        self._sock = sock
        self._factory = protocol_factory
        self._capacity = capacity
        self._loop = asyncio.get_running_loop()
        self._spare = _spare()
        self._handing: set[asyncio.Task[object]] = set()
        self._closed = False
        sock.setblocking(False)
        sock.listen(backlog)  # (again, if it listens already: the backlog asked for)
        self._loop.add_reader(sock.fileno(), self._accept_waiting)

    def _accept_waiting(self) -> None:
        for _ in range(BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # gone before it was accepted
                continue
            except OSError as exc:
                name = _OUT_OF_FILES.get(exc.errno or 0)
                if name is None:  # ENOBUFS, ENOMEM, a firewall's EPERM: a little later
                    log.warning("accept_failed", extra={"error": str(exc)})
                    self._pause()
                    return
                # (Linux finds a descriptor before it looks at the queue: at the limit, accept
                # fails so whether a connection waits or not.)
                refused = self._refuse_one()
                if refused is None:  # nothing was waiting
                    return
                self._capacity.accept_failed(name)
                if not refused:
                    self._pause()
                    return
                continue
            self._capacity.accepted()
            self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
        self._handing.add(task)
        task.add_done_callback(self._handed)

    def _handed(self, task: asyncio.Task[object]) -> None:
        self._handing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("accept_handover_failed", extra={"error": str(task.exception())})

    def _refuse_one(self) -> bool | None:
        """With every descriptor taken: accept one waiting connection into the spare's place,
        answer it 503 and close it. None when no connection was waiting; False when the spare
        cannot be had (then the waiting one stays in the queue)."""
        if self._spare is None:
            self._spare = _spare()
            return False
        os.close(self._spare)
        self._spare = None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            self._spare = _spare()
            return None if self._spare is not None else False
        except OSError:  # taken by another thread meanwhile, or gone: it waits or is gone
            conn = None
        if conn is not None:
            with conn, contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(REFUSAL)
                conn.shutdown(socket.SHUT_WR)
                # What the client sent already is read, so the close is a FIN, not a reset
                # that could destroy the answer before it is read.
                conn.recv(65536)
        self._spare = _spare()
        return self._spare is not None

    def _pause(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._loop.call_later(PAUSE_SECONDS, self._resume)

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept_waiting)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, OSError):  # the socket may be closed already
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    async def wait_closed(self) -> None:
        if self._handing:
            await asyncio.gather(*self._handing, return_exceptions=True)

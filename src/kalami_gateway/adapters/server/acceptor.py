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
pauses for ``PAUSE_SECONDS`` (the connections wait in the kernel's queue, not lost). A lost
spare is opened again when accepting resumes (before any client takes the slot), after an
accept that succeeds, and at the next failed one; an ordinary accept, with the spare held,
costs no syscall more.

Only connections refused, or left waiting for lack of files, are counted. Linux finds a
descriptor before it looks at the queue, so at the limit accept fails whether a connection
waits or not: without the spare to tell, one is known to wait only when the loop has just
said the socket is readable (the first accept of a wake-up). Later in a wake-up, nothing is
counted and accepting does not pause: if a connection does wait, the socket is still
readable and the loop calls again at once. Any other error of the accept into the spare's
place (ENOBUFS, ENOMEM, a firewall's EPERM) pauses accepting, as it does on the main path.

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
        for turn in range(BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # gone before it was accepted
                continue
            except OSError as exc:
                name = _OUT_OF_FILES.get(exc.errno or 0)
                if name is None:  # ENOBUFS, ENOMEM, a firewall's EPERM: a little later
                    self._failed_otherwise(exc)
                    return
                # The loop calls when the socket is readable: on the first turn a connection
                # surely waits; later, the ones before may have emptied the queue.
                if not self._refuse_one(name, surely_waiting=turn == 0):
                    return
                continue
            self._capacity.accepted()
            if self._spare is None:  # lost at the limit: taken back once there is room
                self._spare = _spare()
            self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
        self._handing.add(task)
        task.add_done_callback(self._handed)

    def _handed(self, task: asyncio.Task[object]) -> None:
        self._handing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("accept_handover_failed", extra={"error": str(task.exception())})

    def _refuse_one(self, name: str, surely_waiting: bool) -> bool:
        """With every descriptor taken: accept one waiting connection into the spare's place,
        answer it 503 and close it, counted as an accept failed with ``name``. Whether to
        accept on: not when nothing was waiting, nor when accepting has paused."""
        if self._spare is None:
            self._spare = _spare()
            if self._spare is None:
                self._stuck(name, surely_waiting)
                return False
        os.close(self._spare)
        self._spare = None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):  # nothing was waiting
            self._spare = _spare()
            return False
        except ConnectionAbortedError:  # gone before it was accepted: refused all the same
            conn = None
        except OSError as exc:
            self._spare = _spare()
            if exc.errno not in _OUT_OF_FILES:  # retried at once, it would spin
                self._failed_otherwise(exc)
                return False
            if self._spare is None:  # the slot taken by another thread meanwhile
                self._stuck(name, surely_waiting)
                return False
            return True
        if conn is not None:
            with conn, contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(REFUSAL)
                conn.shutdown(socket.SHUT_WR)
                # What the client sent already is read, so the close is a FIN, not a reset
                # that could destroy the answer before it is read.
                conn.recv(65536)
        self._spare = _spare()
        self._capacity.accept_failed(name)
        # Without the spare back, the next accept would fail whether a connection waits or
        # not: this wake-up ends, and if one waits, the loop calls again at once.
        return self._spare is not None

    def _stuck(self, name: str, surely_waiting: bool) -> None:
        """No descriptor to accept into, nor a spare to let go: a connection can be neither
        accepted nor seen. One known to wait is counted, and accepting paused (the socket
        stays readable: retried at once, it would spin); otherwise nothing happened."""
        if surely_waiting:
            self._capacity.accept_failed(name)
            self._pause()

    def _failed_otherwise(self, exc: OSError) -> None:
        log.warning("accept_failed", extra={"error": str(exc)})
        self._pause()

    def _pause(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._loop.call_later(PAUSE_SECONDS, self._resume)

    def _resume(self) -> None:
        if self._closed:
            return
        if self._spare is None:
            self._spare = _spare()
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

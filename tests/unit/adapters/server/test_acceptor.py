"""The gateway's own accept loop (adapters/server/acceptor.py) at the open-file limit, on
fakes: the process's descriptor table (``Descriptors``: a fixed number of slots, which the
acceptor's spare, each accepted connection and other threads' files take), a listening
socket that accepts as Linux does (a descriptor first — EMFILE when there is none, whether a
connection waits or not — then the queue), and an event loop that holds the listening
socket's reader and the acceptor's timers for the test to fire: the reader when a
connection waits, a timer when its time has come. No socket, no sleep.

The acceptor reaches the table through its module's ``os`` (``os.open`` of the spare,
``os.close``), which these tests replace with the table's own ``FakeOs``.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, TypeVarTuple, cast

import pytest

from kalami_gateway.adapters.capacity import Ceiling, SocketCapacity
from kalami_gateway.adapters.server import acceptor as acceptor_module
from kalami_gateway.adapters.server.acceptor import BATCH, PAUSE_SECONDS, REFUSAL, Acceptor
from tests.unit.adapters.server.fakes import FakeTransport

Ts = TypeVarTuple("Ts")
P = TypeVar("P", bound=asyncio.BaseProtocol)
LISTENING_FD: Final = 1_000_000  # the fake listening socket's number (no real descriptor)
REQUEST: Final = b"GET /ws HTTP/1.1\r\nHost: gateway.test\r\n\r\n"


def out_of_files() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


class Descriptors:
    """The process's descriptor table: ``free`` slots left; opening a file or accepting a
    connection takes one (EMFILE when none is free), closing gives it back — or, if another
    thread was waiting to open a file of its own, to that thread (``elsewhere``)."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.open: set[int] = set()
        self.elsewhere = 0  # slots other threads hold
        self.files_opened = 0  # by ``os.open`` (the spare), tried or done; accepts aside
        self._next = 100

    def take(self) -> int:
        if self.free == 0:
            raise out_of_files()
        self.free -= 1
        self._next += 1
        self.open.add(self._next)
        return self._next

    def give_back(self, fd: int, to_another_thread: bool = False) -> None:
        self.open.remove(fd)  # (KeyError: closed twice, or never ours)
        if to_another_thread:
            self.elsewhere += 1
        else:
            self.free += 1

    def release_elsewhere(self) -> None:
        """Another thread closes its file."""
        self.elsewhere -= 1
        self.free += 1


class FakeOs:
    """The part of ``os`` the acceptor uses, on ``Descriptors``."""

    devnull = os.devnull
    O_RDONLY = os.O_RDONLY
    O_CLOEXEC = os.O_CLOEXEC

    def __init__(self, table: Descriptors) -> None:
        self.table = table

    def open(self, path: str, flags: int) -> int:
        assert path == os.devnull
        assert flags & os.O_CLOEXEC  # a worker's children must not inherit it
        self.table.files_opened += 1
        return self.table.take()

    def close(self, fd: int) -> None:
        self.table.give_back(fd)


class Client:
    """A connection waiting in the listening socket's queue, then accepted: what it was sent
    and what was done with it."""

    def __init__(self, table: Descriptors, name: str) -> None:
        self.table = table
        self.name = name
        self.fd: int | None = None
        self.sent = bytearray()
        self.shut_write = False
        self.closed = False
        self.read = 0
        # Another thread opens a file the moment this connection's slot comes free.
        self.slot_taken_on_close = False

    def __repr__(self) -> str:
        return f"Client({self.name})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setblocking(self, flag: bool) -> None:
        assert flag is False  # an answer must never block the loop

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def shutdown(self, how: int) -> None:
        assert how == socket.SHUT_WR
        self.shut_write = True

    def recv(self, size: int) -> bytes:
        self.read += 1
        return REQUEST

    def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True
        assert self.fd is not None
        self.table.give_back(self.fd, self.slot_taken_on_close)


ABORTED: Final = "aborted"  # a queued connection the client reset before it was accepted


class Listener:
    """A listening socket that accepts as Linux does: a descriptor first, then the queue."""

    def __init__(self, table: Descriptors, *waiting: Client | str) -> None:
        self.table = table
        self.waiting: deque[Client | str] = deque(waiting)
        self.accepts = 0
        self.closed = False
        self.backlog: int | None = None
        self.errors: list[OSError] = []  # raised by the next accepts, before anything else

    def fileno(self) -> int:
        return LISTENING_FD

    def setblocking(self, flag: bool) -> None:
        assert flag is False

    def listen(self, backlog: int) -> None:
        self.backlog = backlog

    def accept(self) -> tuple[Client, tuple[str, int]]:
        self.accepts += 1
        if self.errors:
            raise self.errors.pop(0)
        fd = self.table.take()  # EMFILE, whether a connection waits or not
        if not self.waiting:
            self.table.give_back(fd)
            raise BlockingIOError(errno.EAGAIN, "no connection waiting")
        client = self.waiting.popleft()
        if isinstance(client, str):
            self.table.give_back(fd)
            raise ConnectionAbortedError(errno.ECONNABORTED, "reset while queued")
        client.fd = fd
        return client, ("192.0.2.1", 40000 + self.accepts)

    def close(self) -> None:
        self.closed = True


class AcceptorLoop(asyncio.SelectorEventLoop):
    """A real event loop, but the listening socket's reader and every ``call_later`` are
    held for the test: ``readable()`` calls the reader as the loop would with a connection
    waiting, ``time_passes()`` runs the timers; handing a socket over is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.reader: Callable[[], object] | None = None
        self.later: list[tuple[float, Callable[..., object], tuple[Any, ...]]] = []
        self.handed: list[Client] = []

    def add_reader(self, fd: Any, callback: Callable[[*Ts], object], *args: *Ts) -> None:
        if fd != LISTENING_FD:
            super().add_reader(fd, callback, *args)
            return
        self.reader = lambda: callback(*args)

    def remove_reader(self, fd: Any) -> bool:
        if fd != LISTENING_FD:
            return super().remove_reader(fd)
        held, self.reader = self.reader, None
        return held is not None

    def call_later(
        self,
        delay: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        self.later.append((delay, callback, args))
        return asyncio.TimerHandle(self.time() + delay, callback, args, self, context)

    async def connect_accepted_socket(
        self,
        protocol_factory: Callable[[], P],
        sock: socket.socket,
        *,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.Transport, P]:
        self.handed.append(cast(Client, sock))  # (what the fake listener accepted)
        return FakeTransport(), protocol_factory()

    def readable(self) -> None:
        assert self.reader is not None, "the acceptor is not reading the listening socket"
        self.reader()

    def time_passes(self) -> list[float]:
        """Run every timer set so far; their delays."""
        due, self.later = self.later, []
        for _, callback, args in due:
            callback(*args)
        return [delay for delay, _, _ in due]


def on_a_loop(scenario: Callable[[AcceptorLoop], Awaitable[None]]) -> None:
    loop = AcceptorLoop()
    try:
        loop.run_until_complete(scenario(loop))
    finally:
        loop.close()


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Descriptors:
    """A table with one free slot: the acceptor's spare takes it, and the process is at its
    limit from then on (tests that want room add ``free``)."""
    descriptors = Descriptors(free=1)
    monkeypatch.setattr(acceptor_module, "os", FakeOs(descriptors))
    return descriptors


def capacity() -> SocketCapacity:
    return SocketCapacity(Ceiling(100, 1024, None))


def make_acceptor(listener: Listener, sockets: SocketCapacity) -> Acceptor:
    return Acceptor(cast(socket.socket, listener), asyncio.Protocol, sockets, backlog=4096)


def answered_503(client: Client) -> bool:
    """Told 503 with Retry-After, its write side shut after what it sent was read (a FIN, not
    a reset that could destroy the answer), and its descriptor closed."""
    return bytes(client.sent) == REFUSAL and client.shut_write and client.read > 0 and client.closed


def untouched(client: Client) -> bool:
    return client.fd is None and not client.sent


# -- At the limit ----------------------------------------------------------------------------


def test_at_the_limit_each_waiting_client_is_answered_503_in_the_spares_place(
    table: Descriptors,
) -> None:
    first, second = Client(table, "first"), Client(table, "second")
    listener = Listener(table, first, second)
    sockets = capacity()

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        assert table.free == 0  # the spare holds the last slot
        assert REFUSAL.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nretry-after: " in REFUSAL
        loop.readable()
        assert answered_503(first)
        assert answered_503(second)
        assert loop.handed == []
        assert sockets.accept_errors == {"EMFILE": 2}
        # The spare is back, and the queue empty: reading on, nothing paused.
        assert table.free == 0
        assert len(table.open) == 1
        assert loop.reader is not None
        assert loop.later == []
        acceptor.close()
        assert table.free == 1  # the spare given back
        assert listener.closed
        assert loop.reader is None

    on_a_loop(scenario)


def test_when_the_spare_cannot_be_had_again_accepting_pauses_and_resumes_without_spinning(
    table: Descriptors,
) -> None:
    """The slot the refused client frees is taken by another thread before the spare is
    opened again (EMFILE on the spare). The next accept would fail whether a connection waits
    or not, so the wake-up ends there; the loop calls again because the clients behind wait,
    and then they are counted, once per try: the acceptor tries again every PAUSE_SECONDS —
    not at once, which would spin on a socket that stays readable. When a slot is free, the
    spare is taken back first, and the clients are answered or served as room allows."""
    first, second, third = Client(table, "first"), Client(table, "second"), Client(table, "third")
    listener = Listener(table, first, second, third)
    sockets = capacity()

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        first.slot_taken_on_close = True
        loop.readable()
        assert answered_503(first)
        assert table.elsewhere == 1  # its slot went to the other thread, not to the spare
        assert untouched(second)
        assert untouched(third)
        assert list(listener.waiting) == [second, third]  # waiting, not lost
        assert sockets.accept_errors == {"EMFILE": 1}  # the refused one
        assert listener.accepts == 2  # the failed accept, and the one into the spare's place
        assert loop.reader is not None
        assert loop.later == []

        # The socket is still readable (they wait): the loop calls again at once. Now one is
        # known to wait: counted, and accepting pauses until the timer puts the reader back.
        loop.readable()
        assert listener.accepts == 3
        assert sockets.accept_errors == {"EMFILE": 2}
        assert untouched(second)
        assert loop.reader is None
        assert [delay for delay, _, _ in loop.later] == [PAUSE_SECONDS]

        # Still no slot: one more try, counted, and paused again.
        assert loop.time_passes() == [PAUSE_SECONDS]
        loop.readable()
        assert listener.accepts == 4
        assert sockets.accept_errors == {"EMFILE": 3}
        assert untouched(second)
        assert loop.reader is None
        assert [delay for delay, _, _ in loop.later] == [PAUSE_SECONDS]

        # The other thread closes its file, and another file of the process is closed: the
        # spare takes the first slot when accepting resumes, the next client the second one.
        table.release_elsewhere()
        table.free += 1
        loop.time_passes()
        assert table.free == 1
        assert len(table.open) == 1  # the spare, back
        loop.readable()
        await asyncio.sleep(0)
        assert loop.handed == [second]
        # At the limit again, with the spare in hand: the last one is answered.
        assert answered_503(third)
        assert sockets.accept_errors == {"EMFILE": 4}
        assert listener.waiting == deque()
        assert loop.reader is not None
        assert loop.later == []
        assert len(table.open) == 2  # second's, and the spare
        acceptor.close()
        await acceptor.wait_closed()
        assert len(table.open) == 1  # second's: the spare given back

    on_a_loop(scenario)


def test_a_connection_reset_while_refusing_is_counted_and_the_next_one_answered(
    table: Descriptors,
) -> None:
    client = Client(table, "client")
    listener = Listener(table, ABORTED, client)
    sockets = capacity()

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        loop.readable()
        assert answered_503(client)
        assert sockets.accept_errors == {"EMFILE": 2}  # two accepts failed for lack of files
        assert len(table.open) == 1  # the spare, back
        assert loop.reader is not None
        assert loop.later == []
        acceptor.close()

    on_a_loop(scenario)


def lose_the_spare(loop: AcceptorLoop, table: Descriptors, listener: Listener) -> None:
    """At the limit, a client is answered in the spare's place and its slot taken by another
    thread before the spare is opened again: the spare is lost. Then time passes (nothing
    waits: there is no pause to end, but a test of what follows must not hang on it)."""
    refused = Client(table, "refused")
    refused.slot_taken_on_close = True
    listener.waiting.append(refused)
    loop.readable()
    assert answered_503(refused)
    assert table.open == set()  # no spare
    assert table.elsewhere == 1
    loop.time_passes()
    assert table.open == set()  # still no descriptor for it
    assert loop.reader is not None


def test_a_lost_spare_is_taken_back_when_accepting_resumes(table: Descriptors) -> None:
    """Otherwise, once lost, the spare was never opened again: at every later limit the
    clients got no 503, they just waited."""
    listener = Listener(table)
    sockets = capacity()

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        lose_the_spare(loop, table, listener)
        # A client waits: counted, accepting paused.
        waiting = Client(table, "waiting")
        listener.waiting.append(waiting)
        loop.readable()
        assert sockets.accept_errors == {"EMFILE": 2}
        assert loop.reader is None
        # The other thread closes its file while accepting is paused: the spare takes the
        # slot back when accepting resumes, so the client is answered, not left to wait.
        table.release_elsewhere()
        loop.time_passes()
        assert len(table.open) == 1
        assert table.free == 0
        loop.readable()
        assert answered_503(waiting)
        assert sockets.accept_errors == {"EMFILE": 3}
        assert len(table.open) == 1  # the spare, back again
        assert loop.reader is not None
        acceptor.close()
        assert table.open == set()

    on_a_loop(scenario)


def test_a_lost_spare_is_taken_back_after_an_accept_once_there_is_room(
    table: Descriptors,
) -> None:
    listener = Listener(table)
    sockets = capacity()

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        lose_the_spare(loop, table, listener)
        # Room again, and a client: accepted, and the spare taken back at once.
        table.release_elsewhere()
        table.free += 5
        served = Client(table, "served")
        listener.waiting.append(served)
        loop.readable()
        await asyncio.sleep(0)
        assert loop.handed == [served]
        assert len(table.open) == 2  # served's, and the spare
        # Other files take every slot left: the next client is answered in the spare's place.
        table.elsewhere += table.free
        table.free = 0
        late = Client(table, "late")
        listener.waiting.append(late)
        loop.readable()
        assert answered_503(late)
        assert sockets.accept_errors == {"EMFILE": 2}  # the first refused, and late
        assert loop.reader is not None
        assert loop.later == []
        acceptor.close()
        await acceptor.wait_closed()

    on_a_loop(scenario)


def test_without_the_spare_draining_the_queue_into_the_last_slot_counts_nothing(
    table: Descriptors,
) -> None:
    """The accept after the last slot is taken fails whether a connection waits or not; with
    no spare to let go, none is known to wait: nothing is counted and accepting does not
    pause. If one does wait, the loop calls again at once, and that one is counted."""
    listener = Listener(table)
    sockets = capacity()

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        lose_the_spare(loop, table, listener)
        assert sockets.accept_errors == {"EMFILE": 1}  # the refused one
        # One slot comes free, and one client takes it: the queue is empty.
        table.release_elsewhere()
        served = Client(table, "served")
        listener.waiting.append(served)
        loop.readable()
        await asyncio.sleep(0)
        assert loop.handed == [served]
        assert listener.waiting == deque()
        assert sockets.accept_errors == {"EMFILE": 1}  # nothing was refused, none waits
        assert loop.reader is not None
        assert loop.later == []
        # A client comes with no slot free: the loop calls, and this one is counted.
        stuck = Client(table, "stuck")
        listener.waiting.append(stuck)
        loop.readable()
        assert untouched(stuck)
        assert sockets.accept_errors == {"EMFILE": 2}
        assert loop.reader is None
        assert loop.time_passes() == [PAUSE_SECONDS]
        acceptor.close()
        await acceptor.wait_closed()

    on_a_loop(scenario)


def test_another_error_of_the_accept_into_the_spares_place_pauses_uncounted(
    table: Descriptors, caplog: pytest.LogCaptureFixture
) -> None:
    """At the limit, the spare let go, the accept into its place fails otherwise (ENOBUFS):
    as on the main path, logged and accepting paused, not counted as a lack of files nor
    retried at once (it was both: with the error lasting, BATCH accepts into the spare's
    place per wake-up, each counted as EMFILE)."""
    client = Client(table, "client")
    listener = Listener(table, client)
    listener.errors += [out_of_files(), OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))]
    sockets = capacity()
    caplog.set_level(logging.WARNING, logger=acceptor_module.__name__)

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        loop.readable()
        assert sockets.accept_errors == {}
        assert loop.reader is None
        assert [r.getMessage() for r in caplog.records] == ["accept_failed"]
        assert listener.accepts == 2  # the failed one, and the one into the spare's place
        assert untouched(client)
        assert len(table.open) == 1  # the spare, back
        assert loop.time_passes() == [PAUSE_SECONDS]
        loop.readable()
        assert answered_503(client)  # still at the limit
        assert sockets.accept_errors == {"EMFILE": 1}
        acceptor.close()

    on_a_loop(scenario)


# -- Below the limit -------------------------------------------------------------------------


def test_an_aborted_accept_is_skipped_without_a_count_or_a_pause(table: Descriptors) -> None:
    table.free += 10
    client = Client(table, "client")
    listener = Listener(table, ABORTED, client, ABORTED)
    sockets = capacity()

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        loop.readable()
        await asyncio.sleep(0)
        assert loop.handed == [client]
        assert not client.sent
        assert sockets.accept_errors == {}
        assert listener.accepts == 4  # aborted, client, aborted, then the empty queue
        assert loop.reader is not None
        assert loop.later == []
        assert table.free == 10 - 1  # the client's; the aborted ones took none for good
        acceptor.close()
        await acceptor.wait_closed()

    on_a_loop(scenario)


def test_another_accept_error_pauses_accepting_and_is_logged(
    table: Descriptors, caplog: pytest.LogCaptureFixture
) -> None:
    table.free += 10
    client = Client(table, "client")
    listener = Listener(table, client)
    listener.errors.append(OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS)))
    sockets = capacity()
    caplog.set_level(logging.WARNING, logger=acceptor_module.__name__)

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        loop.readable()
        assert [r.getMessage() for r in caplog.records] == ["accept_failed"]
        assert sockets.accept_errors == {}  # not a lack of files
        assert untouched(client)
        assert loop.reader is None
        assert loop.time_passes() == [PAUSE_SECONDS]
        loop.readable()
        await asyncio.sleep(0)
        assert loop.handed == [client]
        acceptor.close()
        await acceptor.wait_closed()

    on_a_loop(scenario)


def test_a_burst_is_accepted_a_batch_per_wake_up(table: Descriptors) -> None:
    table.free += BATCH + 10
    clients = [Client(table, str(n)) for n in range(BATCH + 5)]
    listener = Listener(table, *clients)
    sockets = capacity()

    async def scenario(loop: AcceptorLoop) -> None:
        acceptor = make_acceptor(listener, sockets)
        assert listener.backlog == 4096
        loop.readable()
        assert listener.accepts == BATCH  # the loop's other work is not held up longer
        assert loop.reader is not None
        loop.readable()
        await asyncio.sleep(0)
        assert loop.handed == clients
        assert sockets.accept_errors == {}
        assert table.files_opened == 1  # the spare, at the start: none per accept
        acceptor.close()
        await acceptor.wait_closed()

    on_a_loop(scenario)

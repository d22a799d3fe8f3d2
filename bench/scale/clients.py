"""A client process of the scale run: up to ``ClientPlan.count`` idle WebSockets from its own
loopback source address, opened at a bounded rate, held, then closed cleanly.

The parent (``ClientProcess``) drives each one through a pipe — ``ramp`` (at a shared
wall-clock start), ``hold`` (start counting pings), ``report``, ``close`` — and each step
answers with a dataclass. A process that hears nothing for ``ClientPlan.deadline`` seconds
drops its sockets and exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import socket
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, Final

import uvloop

from bench.scale.figures import Spread, percentile, spread_of
from bench.scale.lean import OPEN, Book, LeanSocket
from bench.scale.outcomes import Kind, classify_error, key

# Linux: bind the source address now, the port at connect() (from the whole ephemeral range per
# destination, not one port per source address and socket). Python 3.11's socket lacks the name.
IP_BIND_ADDRESS_NO_PORT: Final = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_YIELD_EVERY: Final = 500  # close frames written between two turns of the event loop
CLOSE_TIMEOUT_S: Final = 120.0  # for the server's answers to every close frame


@dataclass(frozen=True)
class ClientPlan:
    index: int
    source: str  # this process's loopback source address, e.g. 127.0.2.1
    host: str
    port: int
    count: int
    rate: float  # connects started per second, this process's share
    in_flight: int  # handshakes under way at most
    ramp_budget: float  # connects stop being started at this many times the planned ramp
    handshake_timeout: float
    requests: tuple[bytes, ...]  # upgrade requests (one per user), used in turn
    heartbeat: float  # the gateway's ping interval, s
    tolerance: float  # how late a ping may be before it counts as late, s
    deadline: float  # the longest wait for the parent's next command, s


@dataclass
class RampReport:
    index: int
    pid: int
    attempted: int
    held: int
    outcomes: dict[str, int]
    seconds: float  # from the common start to the last handshake settled
    handshake_p50_ms: float
    handshake_p99_ms: float
    handshake_max_ms: float
    rss_before_kb: int
    rss_kb: int
    dropped: dict[str, int]  # welcomed sockets the server closed or lost during the ramp


@dataclass
class HoldReport:
    index: int
    held: int  # still open at the end of the hold
    dropped: dict[str, int]  # held sockets the server closed or lost during the hold, by why
    pings: Spread  # per connection, during the hold
    ping_total: int
    gaps: list[float]  # s between consecutive pings, during the hold
    overdue: int  # open sockets whose last ping is older than heartbeat + tolerance
    longest_silence: float  # s since the last ping (or the upgrade), the most of any socket
    texts: int
    rss_kb: int


@dataclass
class CloseReport:
    index: int
    sent: int
    clean: int  # the server's close frame came back
    other: int  # closed without it
    unfinished: int  # still open at the deadline (aborted)
    seconds: float
    dropped: dict[str, int]  # held sockets the server closed or lost, by why, up to the close
    rss_kb: int


def self_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Clients:
    """The child's side: its sockets and the commands it answers."""

    def __init__(self, plan: ClientPlan, pipe: Connection) -> None:
        self.plan = plan
        self.pipe = pipe
        self.book = Book()
        self.address = (plan.host, plan.port)
        self.hold_counts = array("I")
        self.dropped_before_hold: Counter[str] = Counter()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        # A thread reads the pipe: the event loop's add_reader would make its end non-blocking
        # and a large report's send would then fail half-written.
        threading.Thread(
            target=self._read_commands, args=(loop, commands), name="commands", daemon=True
        ).start()
        self.pipe.send(("ready", self_rss_kb()))
        try:
            while True:
                try:
                    command = await asyncio.wait_for(commands.get(), self.plan.deadline)
                except TimeoutError:
                    break  # the parent is stuck: stop by ourselves
                match command:
                    case ("ramp", start_at):
                        self.pipe.send(await self.ramp(start_at))
                    case ("hold",):
                        self.start_hold()
                        self.pipe.send(("holding",))
                    case ("report",):
                        self.pipe.send(self.hold_report())
                    case ("close",):
                        self.pipe.send(await self.close_all())
                        break
                    case _:
                        break  # ("gone",): the parent closed its end
        finally:
            for sock in self.book.held:
                sock.abort()

    def _read_commands(
        self, loop: asyncio.AbstractEventLoop, commands: asyncio.Queue[tuple[Any, ...]]
    ) -> None:
        while True:
            try:
                command = self.pipe.recv()
            except (EOFError, OSError):
                command = ("gone",)
            loop.call_soon_threadsafe(commands.put_nowait, command)
            if command == ("gone",):
                return

    # -- ramp ----------------------------------------------------------------------------

    async def ramp(self, start_at: float) -> RampReport:
        plan = self.plan
        rss_before = self_rss_kb()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.monotonic()
        gate = asyncio.Semaphore(plan.in_flight)
        pending: set[asyncio.Task[None]] = set()
        attempted = 0
        # Bounded whatever happens: at most ramp_budget times the planned ramp, plus the
        # timeouts.
        budget = plan.count / plan.rate * plan.ramp_budget + plan.handshake_timeout * 2 + 30
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget):
                for n in range(plan.count):
                    delay = began + n / plan.rate - time.monotonic()
                    if delay > 0.002:
                        await asyncio.sleep(delay)
                    await gate.acquire()
                    request = plan.requests[n % len(plan.requests)]
                    task = asyncio.create_task(self.attempt(request, gate))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    attempted += 1
                if pending:
                    await asyncio.wait(pending)
        for task in list(pending):
            task.cancel()
        seconds = time.time() - start_at
        times = self.book.handshake_ms
        return RampReport(
            index=plan.index,
            pid=_pid(),
            attempted=attempted,
            held=sum(1 for s in self.book.held if s.state == OPEN),
            outcomes=dict(self.book.outcomes),
            seconds=seconds,
            handshake_p50_ms=percentile(times, 50),
            handshake_p99_ms=percentile(times, 99),
            handshake_max_ms=max(times, default=float("nan")),
            rss_before_kb=rss_before,
            rss_kb=self_rss_kb(),
            dropped=dict(self.book.dropped),
        )

    async def attempt(self, request: bytes, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[str] = loop.create_future()
        client = LeanSocket(self.book, request, settled)
        started = time.monotonic()
        connected = False
        handed_over = False  # from create_connection on, the socket is the event loop's
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.plan.source, 0))
            async with asyncio.timeout(self.plan.handshake_timeout):
                await loop.sock_connect(sock, self.address)
                connected = handed_over = True
                await loop.create_connection(lambda: client, sock=sock)
                outcome = await settled
        except TimeoutError:
            # Never counted as welcomed, even if the welcome came in the same turn of the
            # loop: a cancelled create_connection closes its transport without telling the
            # protocol (no connection_lost), which would then look held and never be pinged.
            outcome = key(Kind.TIMEOUT, "response" if connected else "connect")
            client.abort()
        except OSError as exc:
            outcome = classify_error(exc, connected)
            client.abort()
        finally:
            gate.release()
            if not handed_over:
                sock.close()
        self.book.outcomes[outcome] += 1
        if client.state == OPEN:
            self.book.held.append(client)
            self.book.handshake_ms.append((time.monotonic() - started) * 1000)

    # -- hold ----------------------------------------------------------------------------

    def start_hold(self) -> None:
        self.hold_counts = array("I", (s.pings for s in self.book.held))
        self.dropped_before_hold = Counter(self.book.dropped)
        self.book.gaps = array("d")
        self.book.recording = True

    def hold_report(self) -> HoldReport:
        book = self.book
        book.recording = False
        now = time.monotonic()
        open_now = [s for s in book.held if s.state == OPEN]
        silences = [now - (s.last_ping or s.opened_at) for s in open_now]
        limit = self.plan.heartbeat + self.plan.tolerance
        # Pings per connection over the sockets still open: a dropped one is counted there.
        counts = [
            s.pings - c
            for s, c in zip(book.held, self.hold_counts, strict=False)
            if s.state == OPEN
        ]
        return HoldReport(
            index=self.plan.index,
            held=len(open_now),
            dropped=dict(book.dropped - self.dropped_before_hold),
            pings=spread_of(counts),
            ping_total=sum(counts),
            gaps=list(book.gaps),
            overdue=sum(1 for s in silences if s > limit),
            longest_silence=max(silences, default=0.0),
            texts=book.texts,
            rss_kb=self_rss_kb(),
        )

    # -- close ---------------------------------------------------------------------------

    async def close_all(self) -> CloseReport:
        began = time.monotonic()
        sent = 0
        for n, sock in enumerate(list(self.book.held), 1):
            sent += sock.close()
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the loop write them and read the answers
        all_closed = self.book.expect_closes(sent)
        unfinished = 0
        try:
            await asyncio.wait_for(asyncio.shield(all_closed), CLOSE_TIMEOUT_S)
        except TimeoutError:
            unfinished = sent - self.book.closed_clean - self.book.closed_other
        seconds = time.monotonic() - began
        return CloseReport(
            index=self.plan.index,
            sent=sent,
            clean=self.book.closed_clean,
            other=self.book.closed_other,
            unfinished=unfinished,
            seconds=seconds,
            dropped=dict(self.book.dropped),
            rss_kb=self_rss_kb(),
        )


def _pid() -> int:
    return multiprocessing.current_process().pid or 0


def _main(plan: ClientPlan, pipe: Connection) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(_Clients(plan, pipe).serve())


@dataclass
class ClientProcess:
    """The parent's handle on one client process (spawned: a clean interpreter)."""

    plan: ClientPlan
    _process: SpawnProcess | None = field(default=None, init=False)
    _pipe: Connection | None = field(default=None, init=False)

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._pipe = ours
        self._process = context.Process(target=_main, args=(self.plan, theirs), daemon=True)
        self._process.start()
        theirs.close()

    @property
    def pid(self) -> int:
        assert self._process is not None
        assert self._process.pid is not None
        return self._process.pid

    def send(self, *command: object) -> None:
        assert self._pipe is not None
        self._pipe.send(command)

    def receive(self, timeout: float) -> Any:
        assert self._pipe is not None
        if not self._pipe.poll(timeout):
            raise TimeoutError(f"client process {self.plan.index} said nothing in {timeout:.0f} s")
        return self._pipe.recv()

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

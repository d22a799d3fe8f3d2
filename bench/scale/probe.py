"""Two watchers that run in threads of the parent while the clients work: the probe, one more
WebSocket that sends the protocol's application ``ping`` at a steady pace and times each
``pong`` (what a user would feel), and the ``/stats`` poller, which records whether the
gateway still answers its own endpoint while the connections pour in."""

from __future__ import annotations

import collections
import contextlib
import math
import socket
import threading
import time
from dataclasses import dataclass, field

from bench.scale.figures import percentile
from bench.scale.frames import (
    CLOSE,
    CLOSE_FRAME,
    PING,
    PONG,
    TEXT,
    client_frame,
    close_code,
    split_frames,
)
from bench.scale.gateway import get_json
from bench.scale.outcomes import HEAD_END, Kind, classify_head, kind_of

_APP_PING = client_frame(TEXT, b'{"type":"ping"}')


@dataclass
class ProbeResult:
    sent: int
    answered: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    error: str = ""


class Probe:
    """One authenticated WebSocket from 127.0.0.1, opened before the ramp (so that it is
    there however the ramp goes). Its thread answers the gateway's protocol pings from the
    start; ``measure`` makes it also send the application ``ping`` at a steady pace for a
    while and time each ``pong``."""

    def __init__(self, port: int, request: bytes, timeout: float = 10.0) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._timeout = timeout
        self._buffer = b""
        self._texts: collections.deque[bytes] = collections.deque()
        self._sock.sendall(request)
        while HEAD_END not in self._buffer:
            self._read()
        head, self._buffer = self._buffer.split(HEAD_END, 1)
        outcome = classify_head(head)
        if kind_of(outcome) is not Kind.OK:
            self._sock.close()
            raise RuntimeError(f"the probe's handshake: {outcome}")
        self._frames()
        welcome = self._next_text(timeout)
        if b'"connected"' not in welcome:
            self._sock.close()
            raise RuntimeError(f"the probe's welcome: {welcome[:80]!r}")
        self._stop = threading.Event()
        self._window: tuple[float, float, int] | None = None  # start, pause, count
        self._done = threading.Event()
        self.latencies: list[float] = []
        self.sent = 0
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the gateway closed the probe")
        self._buffer += chunk

    def _frames(self) -> None:
        """Handle the complete frames in the buffer: pings answered, texts kept."""
        frames, self._buffer = split_frames(self._buffer)
        for opcode, payload in frames:
            if opcode == PING:
                self._sock.sendall(client_frame(PONG, payload))
            elif opcode == TEXT:
                self._texts.append(payload)
            elif opcode == CLOSE:
                raise ConnectionError(f"the gateway closed the probe ({close_code(payload)})")

    def _next_text(self, timeout: float) -> bytes:
        self._sock.settimeout(timeout)
        while not self._texts:
            self._read()
            self._frames()
        return self._texts.popleft()

    def _idle(self, seconds: float) -> None:
        """Wait up to ``seconds`` for frames, answering pings."""
        self._sock.settimeout(max(0.001, seconds))
        try:
            self._read()
        except TimeoutError:
            return
        self._frames()
        self._texts.clear()  # nothing asked for them (token_expiring and the like)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                window = self._window
                if window is None:
                    self._idle(0.1)
                    continue
                start, pause, count = window
                if self.sent >= count:
                    self._window = None
                    self._done.set()
                    continue
                due = start + self.sent * pause
                now = time.monotonic()
                if now < due:
                    self._idle(due - now)
                    continue
                sent = time.perf_counter()
                self._sock.sendall(_APP_PING)
                self.sent += 1
                while b'"pong"' not in self._next_text(self._timeout):
                    pass
                self.latencies.append(time.perf_counter() - sent)
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._done.set()

    def measure(self, rate: float, seconds: float) -> None:
        """Ping ``rate`` times a second for ``seconds`` (at most 10,000 pings); returns at
        once: ``result`` waits for the end."""
        count = min(10_000, max(1, round(rate * seconds)))
        self.latencies, self.sent = [], 0
        self._done.clear()
        self._window = (time.monotonic(), 1 / rate, count)

    def result(self, timeout: float = 30.0) -> ProbeResult:
        self._done.wait(timeout)
        ms = [x * 1000 for x in self.latencies]
        return ProbeResult(
            self.sent,
            len(ms),
            percentile(ms, 50),
            percentile(ms, 99),
            max(ms, default=math.nan),
            self.error,
        )

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return  # closed already
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self._sock.sendall(CLOSE_FRAME)
        self._sock.close()


@dataclass
class StatsPolls:
    """``GET /stats`` every ``interval`` seconds while the connections were opened."""

    polls: int = 0
    answered: int = 0
    slowest_ms: float = 0.0
    failures: list[str] = field(default_factory=list)  # the first few errors


class StatsPoller:
    def __init__(self, url: str, interval: float = 1.0, timeout: float = 3.0) -> None:
        self._url = url
        self._interval = interval
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-poller", daemon=True)
        self.polls = StatsPolls()

    def __enter__(self) -> StatsPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(self._timeout + 5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            began = time.perf_counter()
            self.polls.polls += 1
            try:
                get_json(self._url, self._timeout)
            except (OSError, ValueError) as exc:
                if len(self.polls.failures) < 5:
                    self.polls.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            self.polls.answered += 1
            self.polls.slowest_ms = max(self.polls.slowest_ms, (time.perf_counter() - began) * 1e3)

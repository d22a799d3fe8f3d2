"""What one WebSocket client can make the gateway do is budgeted where its bytes arrive (issue
24, rows 3, 4, 5 and 8; issue 28, item 6), tested as an attacker would: raw frames on real
sockets against a real ``kalami-gateway serve`` process.

- A flood of frames that cost nothing by their size (empty binary frames, 1-byte audio,
  1-byte fragments, protocol pings) is read at WS_FRAME_RATE; another client's pings are
  answered meanwhile and the gateway does not grow.
- A client that pings and never reads its pongs is let go past WS_SEND_BUFFER_BYTES.
- A refused socket that keeps sending after its close frame is closed within two seconds,
  after a bounded read.
- A throttled client that vanishes is let go within two heartbeat intervals.
- Frames in the handshake's own segment are answered after the 101; garbage there closes
  the connection cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.integration.conftest import eventually, recv_json, token_for
from tests.integration.netns import isolated_peer
from tests.integration.raw_websocket import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    ServerFrames,
    frame,
    handshake,
    open_raw,
    raw_socket,
    read_until,
    reset,
)
from tests.integration.test_lifecycle import free_port, gateway_env

GATEWAY = [sys.executable, "-m", "kalami_gateway", "serve"]
FRAME_RATE = 400  # WS_FRAME_RATE's default


@dataclass
class Served:
    port: int
    pid: int
    log: IO[bytes]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, user: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={token_for(user)}"

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@asynccontextmanager
async def serving(**env: str) -> AsyncIterator[Served]:
    """``kalami-gateway serve`` (stub backend) in a process of its own, its log kept."""
    port = free_port()
    environ = gateway_env(
        "http://127.0.0.1:9",
        port,
        **{"BACKEND_MODE": "stub", "MAX_CONNECTIONS_PER_USER": "0", "LOG_LEVEL": "info", **env},
    )
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            *GATEWAY, env=environ, stdout=log, stderr=log, start_new_session=True
        )
        try:
            async with httpx.AsyncClient() as client:
                for _ in range(300):
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"http://127.0.0.1:{port}/health")).is_success:
                            break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the gateway did not start")
            yield Served(port, proc.pid, log)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def stats(served: Served) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        body: dict[str, Any] = (await client.get(f"{served.http}/stats")).json()["websocket"]
        return body


async def connections(served: Served) -> int:
    return int((await stats(served))["connections"])


async def send_text(
    writer: asyncio.StreamWriter,
    reader: asyncio.StreamReader,
    seen: ServerFrames,
    message: dict[str, Any],
    answer: str,
) -> None:
    """Send a JSON message and read until the answer of that type has come."""
    writer.write(frame(TEXT, json.dumps(message).encode()))
    async with asyncio.timeout(10):
        while answer not in [json.loads(p)["type"] for op, p in seen.frames if op == TEXT]:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionResetError("closed")
            seen.feed(chunk)


async def flood(writer: asyncio.StreamWriter, unit: bytes, seconds: float) -> int:
    """Send ``unit`` over and over, as fast as the socket takes it, for ``seconds``: the
    bytes the socket took."""
    blob = unit * max(1, 65536 // len(unit))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    sent = 0
    with contextlib.suppress(TimeoutError, ConnectionError):
        while (left := deadline - loop.time()) > 0:
            writer.write(blob)
            sent += len(blob)
            await asyncio.wait_for(writer.drain(), left)
    return sent


async def count_answers(reader: asyncio.StreamReader, seen: ServerFrames) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(1 << 18):
            seen.feed(chunk)


# -- A: every frame costs something ---------------------------------------------------------


@dataclass(frozen=True)
class Flood:
    unit: bytes  # sent over and over
    frames: int  # frames in one unit
    answer: int  # the opcode of the one answer a unit gets
    recording: bool = False  # the flood comes while recording
    opening: bytes = b""  # sent once first


FLOODS = {
    # each an `error` (binary outside a recording)
    "empty-binary": Flood(frame(BINARY), 1, TEXT),
    # each an `audio_received`, and streamed on to the backend
    "one-byte-audio": Flood(frame(BINARY, b"a"), 1, TEXT, recording=True),
    # a text message that never ends, one space at a time; a ping every ten frames counts them
    "one-byte-fragments": Flood(
        frame(CONT, b" ", fin=False) * 9 + frame(PING),
        10,
        PONG,
        opening=frame(TEXT, b'{"type":"ping"', fin=False),
    ),
    "protocol-pings": Flood(frame(PING), 1, PONG),
}


@pytest.mark.parametrize("kind", FLOODS)
async def test_a_flood_of_tiny_frames_is_read_at_the_frame_rate_and_nobody_else_pays(
    kind: str,
) -> None:
    spec = FLOODS[kind]
    seconds = 2.0
    async with (
        serving() as served,
        raw_socket(served.port, handshake(token_for("flooder"))) as (reader, writer, seen),
        connect(served.ws("bystander")) as bystander,
    ):
        await read_until(reader, seen, TEXT)  # connected
        if spec.recording:
            start = {"type": "start_session", "payload": {"profileId": "p"}}
            await send_text(writer, reader, seen, start, "session_started")
            record = {"type": "start_recording", "payload": {"format": "wav"}}
            await send_text(writer, reader, seen, record, "recording_started")
        await recv_json(bystander)
        seen.frames.clear()
        seen.counts.clear()
        seen.keep = False
        writer.write(spec.opening)
        counting = asyncio.create_task(count_answers(reader, seen))
        round_trips: list[float] = []
        before = rss_kib(served.pid)
        peak = before
        flooding = asyncio.create_task(flood(writer, spec.unit, seconds))
        while not flooding.done():  # meanwhile another client pings
            asked = time.monotonic()
            await bystander.send('{"type":"ping"}')
            assert (await recv_json(bystander, within=5))["type"] == "pong"
            round_trips.append(time.monotonic() - asked)
            peak = max(peak, rss_kib(served.pid))
            await asyncio.sleep(0.05)
        sent = await flooding
        await asyncio.sleep(0.5)  # answers still on their way
        counting.cancel()
    answered = seen.counts.get(spec.answer, 0) * spec.frames
    # A burst of two seconds' worth, the rate for the rest, one burst of overshoot (a read
    # parsed whole within the budget's room). Unbudgeted: tens of thousands a second.
    allowed = 3 * 2 * FRAME_RATE + FRAME_RATE * (seconds + 1.0)
    sent_frames = sent // len(spec.unit) * spec.frames
    worst = max(round_trips) * 1000
    assert answered <= allowed, (
        f"{answered} of {sent_frames} frames parsed in {seconds} s (bystander's worst round "
        f"trip {worst:.0f} ms)"
    )
    assert answered > 0
    assert len(round_trips) >= 5  # the bystander's pings were all answered meanwhile
    grown = peak - before
    assert grown < 16 * 1024, f"the gateway grew by {grown} KiB"


# -- B: pongs are writes too ----------------------------------------------------------------


async def test_a_client_that_pings_and_never_reads_is_let_go_as_a_slow_consumer() -> None:
    # No frame budget here: it would only slow the flood down (the measurement).
    async with (
        serving(WS_FRAME_RATE="0", WS_SEND_BUFFER_BYTES="65536") as served,
        raw_socket(served.port, handshake(token_for("mute"))) as (_, writer, _),
    ):
        writer.transport.pause_reading()  # type: ignore[attr-defined]  # never reads again
        await eventually(lambda: _connections_are(served, 1))
        before = rss_kib(served.pid)
        blob = frame(PING, b"p" * 125) * 500  # each owes a 127-byte pong
        grown = 0
        dropped = False
        started = time.monotonic()
        while time.monotonic() - started < 15 and grown < 256 * 1024:
            try:
                writer.write(blob)
                await asyncio.wait_for(writer.drain(), 0.1)
            except TimeoutError:
                pass
            except ConnectionError:
                dropped = True
                break
            grown = rss_kib(served.pid) - before
        assert dropped, f"still connected after {time.monotonic() - started:.1f} s, {grown} KiB"
        assert grown < 32 * 1024, f"the gateway grew by {grown} KiB"
        await eventually(lambda: _connections_are(served, 0))
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{served.http}/metrics")).text
        assert 'kalami_websocket_closed_total{reason="slow_consumer"} 1.0' in metrics


async def _connections_are(served: Served, expected: int) -> bool:
    return await connections(served) == expected


# -- C: nothing is read for long after the gateway's own close ------------------------------


REFUSALS = [
    # (what is wrong, the handshake's query token, extra headers, the close code)
    ("no token", None, "", 4001),
    ("bad token", "not-a-jwt", "", 4002),
    ("one connection too many", "holder", "", 4004),
    ("a foreign origin", "browser", "origin: https://evil.example\r\n", 4008),
]


async def refused_then_sending(
    served: Served, token: str | None, headers: str
) -> tuple[int | None, float, int]:
    """Open a socket the gateway refuses, and after its close frame keep sending frames as
    fast as the socket takes them: the close code, how long the gateway kept the socket
    open after the close frame, and how many bytes the socket took meanwhile."""
    async with raw_socket(served.port, handshake(token, headers)) as (reader, writer, seen):
        await read_until(reader, seen, CLOSE)
        closed = asyncio.Event()

        async def watch() -> None:
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
            closed.set()

        watching = asyncio.create_task(watch())
        refused_at = time.monotonic()
        junk = frame(BINARY, b"x" * 16384) * 16
        sent = 0
        with contextlib.suppress(ConnectionError):
            while not closed.is_set() and time.monotonic() - refused_at < 10:
                writer.write(junk)
                sent += len(junk)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(writer.drain(), 0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closed.wait(), 1)
        took = time.monotonic() - refused_at
        watching.cancel()
        return seen.close_code(), took, sent


async def test_a_refused_socket_that_keeps_sending_is_closed_within_two_seconds() -> None:
    async with (
        serving(MAX_CONNECTIONS_PER_USER="1", CORS_ORIGINS="https://app.example") as served,
        connect(served.ws("holder")) as holder,
    ):
        await recv_json(holder)
        for what, user, headers, expected in REFUSALS:
            token = None if user is None else (user if user == "not-a-jwt" else token_for(user))
            code, took, sent = await refused_then_sending(served, token, headers)
            assert code == expected, what
            assert took < 2.0, f"{what}: open {took:.1f} s after its close, {sent >> 20} MiB in"
            # What the gateway read (64 KiB at most) and what the kernel buffers held;
            # unbounded, the gateway read everything for 10 s: gigabytes.
            assert sent < 16 << 20, f"{what}: {sent >> 20} MiB taken after the close"
        assert await connections(served) == 1  # the holder's


# -- D: a throttled client that vanishes is let go ------------------------------------------


@pytest.mark.parametrize("how", ["reset", "died"])
@pytest.mark.parametrize(
    "unit",
    [frame(TEXT, b'{"type":"ping"}'), frame(PING)],
    ids=["text-over-its-rate", "pings-over-the-frame-rate"],
)
async def test_a_throttled_client_that_vanishes_is_let_go_within_two_heartbeats(
    unit: bytes, how: str
) -> None:
    interval = 0.5
    async with (
        serving(WS_HEARTBEAT_INTERVAL=str(int(interval * 1000))) as served,
        raw_socket(served.port, handshake(token_for("gone"))) as (reader, writer, seen),
    ):
        await read_until(reader, seen, TEXT)
        await flood(writer, unit, 1.0)  # far over its rate: most of it waits
        assert await connections(served) == 1
        if how == "reset":
            reset(writer)  # an RST
        else:
            # The process died: its kernel closes the socket, with a FIN after what it had
            # still to send, or an RST if replies lay unread in it.
            writer.transport.abort()
        vanished = time.monotonic()
        await eventually(lambda: _connections_are(served, 0), within=10)
        took = time.monotonic() - vanished
        assert took < 2 * interval + 1.0, f"let go {took:.1f} s after it vanished"


@pytest.mark.parametrize(
    "unit",
    [frame(TEXT, b'{"type":"ping"}'), frame(PING)],
    ids=["text-over-its-rate", "pings-over-the-frame-rate"],
)
async def test_a_throttled_client_whose_network_vanishes_is_let_go_within_two_heartbeats(
    unit: bytes,
) -> None:
    """No reset, no FIN: its kernel answers nothing any more (a phone whose network went).
    Without asking the kernel, the gateway pinged it again and again for ~15 minutes."""
    interval = 1.0
    with isolated_peer() as peer:
        async with serving(
            WS_HEARTBEAT_INTERVAL=str(int(interval * 1000)),
            GATEWAY_HOST="0.0.0.0",  # noqa: S104
        ) as served:
            reader, writer, seen = await open_raw(
                served.port, handshake(token_for("tunnel")), peer.host_address, peer.socket()
            )
            try:
                await read_until(reader, seen, TEXT)
                await flood(writer, unit, 1.0)  # far over its rate: most of it waits
                assert await connections(served) == 1
                peer.vanish()
                vanished = time.monotonic()
                await eventually(lambda: _connections_are(served, 0), within=10)
                took = time.monotonic() - vanished
                assert took < 2 * interval + 0.5, f"let go {took:.1f} s after it vanished"
                assert "ws_peer_gone" in served.output()
            finally:
                writer.transport.abort()


# -- F: frames behind the handshake ---------------------------------------------------------


async def test_frames_in_the_handshakes_segment_are_answered_after_the_101() -> None:
    behind = frame(PING, b"1") + frame(PING, b"2") + frame(PING, b"3")
    behind += frame(TEXT, b'{"type":"ping"}')
    async with (
        serving() as served,
        raw_socket(served.port, handshake(token_for("eager")) + behind) as (reader, _, seen),
    ):
        assert seen.head is not None
        assert seen.head.startswith(b"HTTP/1.1 101 ")  # nothing of theirs before it
        async with asyncio.timeout(10):
            while len([op for op, _ in seen.frames if op in (PONG, TEXT)]) < 5:
                chunk = await reader.read(65536)
                assert chunk, f"closed, after {seen.frames}"
                seen.feed(chunk)
    assert [p for op, p in seen.frames if op == PONG] == [b"1", b"2", b"3"]
    texts = [json.loads(p)["type"] for op, p in seen.frames if op == TEXT]
    assert texts == ["connected", "pong"]


async def test_garbage_in_the_handshakes_segment_closes_the_connection_cleanly() -> None:
    garbage = b"\xff\xfe garbage, not a frame"
    async with serving() as served:
        async with raw_socket(served.port, handshake(token_for("garbled")) + garbage) as (
            reader,
            _,
            seen,
        ):
            assert seen.head is not None
            assert seen.head.startswith(b"HTTP/1.1 101 ")
            async with asyncio.timeout(10):
                while chunk := await reader.read(65536):
                    seen.feed(chunk)
        assert seen.close_code() == 1002  # a protocol error, then the end of the stream
        await eventually(lambda: _connections_are(served, 0))
        output = served.output()
        assert "Traceback" not in output
        assert '"level": "error"' not in output

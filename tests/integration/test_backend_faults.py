"""Backend calls against a backend that misbehaves: every call ends by its deadline, and no
backend session is left open (issue 12)."""

from __future__ import annotations

import asyncio
import json
import time

from websockets.asyncio.client import ClientConnection, connect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)

START = json.dumps({"type": "start_session", "payload": {"profileId": "p"}})
TURN = json.dumps({"type": "audio", "payload": {"audio_base64": "AAAA", "format": "wav"}})
END = '{"type":"end_session"}'


async def until(ws: ClientConnection, kind: str, within: float = 10.0) -> dict[str, object]:
    while True:
        message = await recv_json(ws, within)
        if message["type"] == kind:
            return message


async def test_a_reply_that_drips_fails_at_the_deadline_not_when_it_ends(
    backend: BackendServer,
) -> None:
    backend.drip_seconds = 0.01  # 1000 bytes over 10 s, a byte at a time
    async with (
        running_gateway(make_settings(backend.url, backend_timeout_ms=1000)) as gw,
        connect(gw.ws(token_for("a"))) as ws,
    ):
        await recv_json(ws)
        await ws.send(START)
        await until(ws, "session_started")
        started = time.monotonic()
        await ws.send(TURN)
        error = await until(ws, "error")
        took = time.monotonic() - started
    assert "timed out" in str(error["payload"])
    assert took < 5  # the whole reply would take 10 s; the deadline is 1 s


async def test_a_failed_end_is_retried_until_the_backend_takes_it(backend: BackendServer) -> None:
    backend.end_statuses = [503]
    async with running_gateway(make_settings(backend.url)) as gw:
        async with connect(gw.ws(token_for("a"))) as ws:
            await recv_json(ws)
            await ws.send(START)
            sid = (await until(ws, "session_started"))["payload"]["id"]  # type: ignore[index]
            await ws.send(END)
            assert (await until(ws, "session_ended"))["payload"] == {"id": sid}
        await eventually(lambda: sid in dict(backend.ended))
        assert backend.end_calls == [sid, sid]  # the 503, then the retry (2 s later)


async def test_an_end_that_never_answers_does_not_hold_the_client(
    backend: BackendServer,
) -> None:
    backend.end_hold = asyncio.Event()
    async with (
        running_gateway(make_settings(backend.url, backend_timeout_ms=500)) as gw,
        connect(gw.ws(token_for("a"))) as ws,
    ):
        await recv_json(ws)
        await ws.send(START)
        await until(ws, "session_started")
        started = time.monotonic()
        await ws.send(END)
        await until(ws, "session_ended")
        assert time.monotonic() - started < 3  # bounded by the 0.5 s deadline
        backend.end_hold.set()
        await ws.send('{"type":"ping"}')
        assert (await until(ws, "pong"))["type"] == "pong"


async def test_a_create_answered_after_the_timeout_has_its_session_ended(
    backend: BackendServer,
) -> None:
    backend.create_delay = 1.0
    async with running_gateway(make_settings(backend.url, backend_timeout_ms=300)) as gw:
        async with connect(gw.ws(token_for("a"))) as ws:
            await recv_json(ws)
            await ws.send(START)
            error = await until(ws, "error")
            assert "timed out" in str(error["payload"])
        await eventually(lambda: len(backend.ended) == 1, within=10)
    assert backend.ended[0][0] == "sess-1"  # the session the late create made
    assert backend.sessions == {"sess-1"}

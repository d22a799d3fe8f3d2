"""Resumable sessions over real sockets: two instances on the real Redis, a backend that takes
a second per turn, clients that vanish without a close frame, a rolling restart."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    Gateway,
    closed_with,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.redis_fixtures import REDIS_URL, delete_prefix
from tests.integration.tcp_relay import TcpRelay
from tests.integration.test_cluster import cluster
from tests.integration.test_lifecycle import free_port, gateway_env, process
from tests.integration.test_voice import make_wav, run_cli

TURN: list[str | bytes] = [
    json.dumps({"type": "start_recording", "payload": {"format": "wav"}}),
    b"\x01" * 3200,
    b"\x02" * 3200,
    json.dumps({"type": "stop_recording"}),
]
REPLIES = ["transcription", "response", "audio"]


async def in_session(url: str, user: str = "alice") -> tuple[ClientConnection, str, str]:
    """A socket with a session open: the socket, its resume token and the session id."""
    ws = await connect(url)
    hello = await recv_json(ws)
    assert hello["type"] == "connected"
    await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p1"}}))
    started = await recv_json(ws)
    assert started["type"] == "session_started", started
    return ws, hello["payload"]["resumeToken"], started["payload"]["id"]


async def start_turn(ws: ClientConnection) -> None:
    for frame in TURN:
        await ws.send(frame)
    seen = [(await recv_json(ws))["type"] for _ in range(4)]
    assert seen == ["recording_started", "audio_received", "audio_received", "processing"]


def reset(ws: ClientConnection) -> None:
    """Vanish the way a phone does: a TCP reset, no close frame."""
    sock: socket.socket = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


async def resume(gateway: Gateway, token: str, user: str = "alice") -> ClientConnection:
    return await connect(f"{gateway.ws(token_for(user))}&resume={token}")


async def stats_of(gateway: Gateway) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        body: dict[str, Any] = (await client.get(f"{gateway.http}/stats")).json()
        return body


async def parked_on(gateway: Gateway) -> int:
    parked: int = (await stats_of(gateway))["sessions"]["parked"]
    return parked


async def nothing_more(ws: ClientConnection) -> None:
    """Everything the server had queued has arrived: the next answer is our ping's pong."""
    await ws.send(json.dumps({"type": "ping"}))
    assert (await recv_json(ws))["type"] == "pong"


async def test_a_client_reset_mid_turn_resumes_on_the_other_instance(
    backend: BackendServer, prefix: str
) -> None:
    backend.turn_seconds = 1.0
    async with cluster(backend, prefix) as (a, b):
        ws, token, session_id = await in_session(a.ws(token_for("alice")))
        await start_turn(ws)
        reset(ws)
        await eventually(lambda: parked_on(b))  # cluster-wide: a parked it, b counts it
        again = await resume(b, token)
        hello = await recv_json(again)
        assert hello["type"] == "connected"
        assert hello["payload"]["resumeToken"] != token
        resumed = await recv_json(again)
        assert resumed == {
            "type": "session_resumed",
            "payload": {"id": session_id, "profileId": "p1", "topic": None, "state": "processing"},
        }
        replies = [await recv_json(again) for _ in REPLIES]
        assert [r["type"] for r in replies] == REPLIES
        assert replies[0]["payload"]["text"].startswith("6400 bytes")  # the whole utterance
        await nothing_more(again)  # each reply came once
        assert backend.end_calls == []
        assert await parked_on(b) == 0
        # The session goes on: another turn, then the end.
        await start_turn(again)
        assert [(await recv_json(again))["type"] for _ in REPLIES] == REPLIES
        await again.send(json.dumps({"type": "end_session"}))
        assert (await recv_json(again))["type"] == "session_ended"
        assert backend.end_calls == [session_id]
        await again.close()


async def test_a_token_resumes_once_and_never_for_another_user(
    backend: BackendServer, prefix: str
) -> None:
    async with cluster(backend, prefix) as (a, b):
        ws, token, session_id = await in_session(a.ws(token_for("alice")))
        await ws.close()
        await eventually(lambda: parked_on(a))
        mallory = await resume(b, token, "mallory")
        assert (await recv_json(mallory))["type"] == "connected"
        refusal = await recv_json(mallory)
        assert refusal["type"] == "error"
        assert "belongs to another user" in refusal["payload"]["message"]
        await nothing_more(mallory)  # idle, open, and no session of alice's
        await mallory.send(json.dumps({"type": "end_session"}))
        assert "No session is open" in (await recv_json(mallory))["payload"]["message"]
        assert await parked_on(a) == 1  # untouched
        owner = await resume(b, token)
        await recv_json(owner)
        assert (await recv_json(owner))["payload"]["id"] == session_id
        second = await resume(a, token)
        await recv_json(second)
        refusal = await recv_json(second)
        assert "already used" in refusal["payload"]["message"]
        for w in (mallory, owner, second):
            await w.close()


async def test_the_grace_lapses_and_the_session_is_ended_once(
    backend: BackendServer, prefix: str
) -> None:
    async with cluster(backend, prefix, resume_grace_ms=500) as (a, b):
        ws, token, session_id = await in_session(a.ws(token_for("alice")))
        reset(ws)
        await eventually(lambda: backend.end_calls, within=5)
        await asyncio.sleep(1.5)  # both instances sweep every second: still one end call
        assert backend.end_calls == [session_id]
        assert backend.open_sessions() == set()
        late = await resume(b, token)
        await recv_json(late)
        refusal = await recv_json(late)
        assert "not resumed within the grace period" in refusal["payload"]["message"]
        await late.close()


async def test_a_half_open_socket_is_closed_4007_and_its_session_moves(
    backend: BackendServer, prefix: str
) -> None:
    async with cluster(backend, prefix) as (a, b):
        old, token, session_id = await in_session(a.ws(token_for("alice")))
        new = await resume(b, token)
        await recv_json(new)
        resumed = await recv_json(new)
        assert resumed["payload"] == {
            "id": session_id,
            "profileId": "p1",
            "topic": None,
            "state": "active",
        }
        assert await closed_with(old) == (4007, "Session resumed elsewhere")
        await start_turn(new)
        assert [(await recv_json(new))["type"] for _ in REPLIES] == REPLIES
        assert backend.end_calls == []
        await new.close()


async def test_a_takeover_mid_turn_hands_the_replies_to_the_new_socket(
    backend: BackendServer, prefix: str
) -> None:
    backend.turn_seconds = 1.0
    async with cluster(backend, prefix) as (a, b):
        old, token, _ = await in_session(a.ws(token_for("alice")))
        await start_turn(old)
        new = await resume(b, token)
        await recv_json(new)
        assert (await recv_json(new))["payload"]["state"] == "processing"
        assert [(await recv_json(new))["type"] for _ in REPLIES] == REPLIES
        assert await closed_with(old) == (4007, "Session resumed elsewhere")
        await new.close()


async def test_without_a_grace_a_drop_ends_the_session_as_before(
    backend: BackendServer, prefix: str
) -> None:
    async with cluster(backend, prefix, resume_grace_ms=0) as (a, b):
        ws, token, session_id = await in_session(a.ws(token_for("alice")))
        reset(ws)
        await eventually(lambda: backend.end_calls)
        assert backend.end_calls == [session_id]
        late = await resume(b, token)
        await recv_json(late)
        assert "RESUME_GRACE=0" in (await recv_json(late))["payload"]["message"]
        await late.close()


async def test_single_process_resume_works_within_the_process(backend: BackendServer) -> None:
    backend.turn_seconds = 0.5
    async with running_gateway(make_settings(backend.url)) as gw:
        ws, token, _ = await in_session(gw.ws(token_for("alice")))
        await start_turn(ws)
        reset(ws)
        await eventually(lambda: parked_on(gw))
        again = await resume(gw, token)
        await recv_json(again)
        assert (await recv_json(again))["payload"]["state"] == "processing"
        assert [(await recv_json(again))["type"] for _ in REPLIES] == REPLIES
        assert backend.end_calls == []
        await again.close()


async def test_a_rolling_restart_loses_no_session_and_no_reply(
    backend: BackendServer, prefix: str
) -> None:
    backend.turn_seconds = 1.0
    port = free_port()
    env = gateway_env(
        backend.url,
        port,
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
        LOG_LEVEL="warning",
        SHUTDOWN_TIMEOUT="8000",
    )
    args = [sys.executable, "-m", "kalami_gateway", "serve"]
    async with (
        cluster(backend, prefix, size=1) as (b,),
        process(args, env, port) as proc,
    ):
        clients = []
        for n in range(20):
            clients.append(await in_session(f"ws://127.0.0.1:{port}/ws?token={token_for(f'u{n}')}"))
        mid_turn = clients[:5]
        for ws, _, _ in mid_turn:
            await start_turn(ws)
        proc.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(closed_with(ws) for ws, _, _ in clients))
        assert set(codes) == {(1012, "Service restart")}
        assert backend.end_calls == []

        async def carry_on(n: int, token: str, session_id: str) -> ClientConnection:
            ws = await resume(b, token, f"u{n}")
            assert (await recv_json(ws))["type"] == "connected"
            resumed = await recv_json(ws)
            assert resumed["type"] == "session_resumed", resumed
            assert resumed["payload"]["id"] == session_id
            if n < 5:  # its reply was being made when A went down: it comes, once, in order
                assert [(await recv_json(ws))["type"] for _ in REPLIES] == REPLIES
            await nothing_more(ws)
            return ws

        resumed = await asyncio.gather(
            *(carry_on(n, token, sid) for n, (_, token, sid) in enumerate(clients))
        )
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert backend.end_calls == []
        assert len(backend.uploads) == 5
        for ws in resumed:
            await ws.send(json.dumps({"type": "end_session"}))
            assert (await recv_json(ws))["type"] == "session_ended"
            await ws.close()
        assert len(backend.end_calls) == 20
        assert backend.open_sessions() == set()
        assert await parked_on(b) == 0


async def test_talk_resumes_on_the_other_instance_when_its_network_drops(
    backend: BackendServer, prefix: str, tmp_path: Path
) -> None:
    backend.turn_seconds = 1.0
    size = make_wav(tmp_path / "hello.wav")
    async with cluster(backend, prefix) as (a, b):
        relay = await TcpRelay(a.port).start()  # the phone's network, in front of a
        try:
            talk = asyncio.create_task(
                run_cli(
                    "talk",
                    "--file",
                    "hello.wav",
                    "--url",
                    f"ws://127.0.0.1:{relay.port}/ws",
                    "--resume-url",
                    b.ws(),
                    "--sub",
                    "alice",
                    cwd=tmp_path,
                )
            )
            await asyncio.wait_for(backend.audio_arrived.wait(), 30)  # the turn is running
            relay.cut()
            code, out, err = await talk
        finally:
            await relay.close()
    assert code == 0, err + out
    # "processing" may or may not have got through before the cut: it is not a reply.
    lines = [line for line in out.splitlines() if not line.startswith("processing")]
    labels = [line.split()[0] for line in lines]
    assert labels == [
        "connected",
        "session",
        "recording",
        "dropped",
        "connected",
        "resumed",
        "you",
        "tutor",
        "correction",
        "audio",
        "session",
    ]
    assert "no close frame" in lines[3]
    assert "(processing)" in lines[5]  # resumed while the turn was still running
    assert f"{size} bytes" in lines[6]
    assert len(backend.uploads) == 1
    assert backend.end_calls == [backend.uploads[0].session_id]  # the end talk sent, once


async def test_sessions_redis_forgot_are_still_ended(
    backend: BackendServer, redis: Redis, prefix: str
) -> None:
    """Redis restarted with nothing kept: a parked session and an open one are written back
    by the instance that had them, and both are ended once their clients are gone."""
    async with cluster(backend, prefix, size=1, resume_grace_ms=1500) as [gateway]:
        kept_open, _, open_id = await in_session(gateway.ws(token_for("alice")))
        dropped, _, parked_id = await in_session(gateway.ws(token_for("bob")))
        reset(dropped)
        await eventually(lambda: parked_on(gateway), within=5)
        await delete_prefix(redis, prefix)  # the restart: every key gone
        await asyncio.sleep(1.5)  # a sweep or two: the instance notices and writes back
        await kept_open.close()
        await eventually(lambda: {parked_id, open_id} <= {s for s, _ in backend.ended}, 10)
        assert sorted(s for s, _ in backend.ended) == sorted([parked_id, open_id])  # once each

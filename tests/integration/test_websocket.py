"""/ws over real sockets: authentication close codes, protocol, sessions, liveness and limits."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect

from kalami_gateway.adapters.http.websocket import query_values
from tests.forged_tokens import signed as forged
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    SECRET,
    Gateway,
    closed_with,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)


async def welcomed(gateway: Gateway, user: str = "alice", **kwargs: Any) -> ClientConnection:
    ws = await connect(gateway.ws(token_for(user, **kwargs)))
    hello = await recv_json(ws)
    assert hello["type"] == "connected"
    return ws


async def stats(gateway: Gateway) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        body: dict[str, Any] = (await client.get(f"{gateway.http}/stats")).json()["websocket"]
        return body


async def test_no_token_closes_4001(gateway: Gateway) -> None:
    for url in (gateway.ws(), gateway.ws("")):
        async with connect(url) as ws:
            assert await closed_with(ws) == (4001, "Authentication required")


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def signed(payload: bytes) -> str:
    """A correctly signed HS256 token over raw JSON (NaN, Infinity, huge numbers included)."""
    return forged(payload, SECRET)


INVALID_TOKENS = {
    "garbage": "not-a-token",
    "wrong-secret": jwt.encode(
        {"sub": "u", "exp": int(time.time()) + 600}, "x" * 64, algorithm="HS256"
    ),
    "alg-none": b64({"alg": "none"}) + "." + b64({"sub": "u", "exp": int(time.time()) + 600}) + ".",
    "hs512": jwt.encode(
        {"sub": "u", "exp": int(time.time()) + 600}, SECRET + "x" * 20, algorithm="HS512"
    ),
    "no-sub": jwt.encode({"exp": int(time.time()) + 600}, SECRET, algorithm="HS256"),
    "no-exp": jwt.encode({"sub": "u"}, SECRET, algorithm="HS256"),
    "expired": jwt.encode({"sub": "u", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256"),
    "too-long": "a" * 9000,
    "exp-nan": signed(b'{"sub":"u","exp":NaN}'),
    "exp-infinity": signed(b'{"sub":"u","exp":Infinity}'),
    "exp-10^400": signed(b'{"sub":"u","exp":1' + b"0" * 400 + b"}"),
}


@pytest.mark.parametrize("name", list(INVALID_TOKENS))
async def test_invalid_tokens_close_4002(gateway: Gateway, name: str) -> None:
    async with connect(gateway.ws(INVALID_TOKENS[name]), max_size=None) as ws:
        assert await closed_with(ws) == (4002, "Invalid token")
    assert (await stats(gateway))["connections"] == 0


async def test_welcome_ping_and_heartbeat(gateway: Gateway) -> None:
    async with connect(gateway.ws(token_for("alice"))) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "connected"
        uuid.UUID(hello["payload"]["connectionId"], version=4)
        await ws.send('{"type":"ping"}')
        assert await recv_json(ws) == {"type": "pong", "payload": {}}
        await ws.send('{"type":"heartbeat"}')
        assert await recv_json(ws) == {"type": "heartbeat", "payload": {"pong": True}}


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("{oops", "Malformed JSON"),
        ("[1]", "got an array"),
        ('"hello"', "got a string"),
        ('{"payload":{}}', 'no "type"'),
        ('{"type":"sing"}', "Unknown message type 'sing'"),
        (
            '{"type":"start_session","payload":{"profile":"x"}}',
            "Invalid payload for 'start_session'",
        ),
        ('{"type":"start_recording"}', "No session is open"),
        ('{"type":"stop_recording"}', "No session is open"),
        ('{"type":"end_session"}', "nothing to end"),
        ('{"type":"audio","payload":{"audio_base64":"QUJD"}}', "No session is open"),
    ],
)
async def test_bad_and_out_of_order_frames_get_an_error_and_the_connection_stays(
    gateway: Gateway, frame: str, fragment: str
) -> None:
    async with connect(gateway.ws(token_for("alice"))) as ws:
        await recv_json(ws)
        await ws.send(frame)
        error = await recv_json(ws)
        assert error["type"] == "error"
        assert fragment in error["payload"]["message"]
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"


async def test_a_binary_frame_outside_recording_is_an_error(gateway: Gateway) -> None:
    async with connect(gateway.ws(token_for("alice"))) as ws:
        await recv_json(ws)
        await ws.send(b"\x00\x01")
        error = await recv_json(ws)
        assert "only while recording" in error["payload"]["message"]


async def test_session_start_and_end_reach_the_backend_with_the_clients_token(
    gateway: Gateway, backend: BackendServer
) -> None:
    token = token_for("alice")
    async with connect(gateway.ws(token)) as ws:
        await recv_json(ws)
        await ws.send(
            json.dumps({"type": "start_session", "payload": {"profileId": "p1", "topic": "food"}})
        )
        started = await recv_json(ws)
        assert started == {
            "type": "session_started",
            "payload": {"id": "sess-1", "profileId": "p1", "topic": "food"},
        }
        await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p1"}}))
        again = await recv_json(ws)
        assert "already open" in again["payload"]["message"]
        await ws.send('{"type":"end_session"}')
        assert await recv_json(ws) == {"type": "session_ended", "payload": {"id": "sess-1"}}
    assert backend.created == [({"profile_id": "p1", "topic": "food"}, f"Bearer {token}")]
    assert backend.ended == [("sess-1", f"Bearer {token}")]


async def test_a_backend_refusal_to_start_is_an_error_and_a_retry_works(gateway: Gateway) -> None:
    async with connect(gateway.ws(token_for("alice"))) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "missing"}}))
        refused = await recv_json(ws)
        assert refused["type"] == "error"
        assert refused["payload"]["message"] == (
            "Could not start the session: the backend answered 404 (Profile not found)."
        )
        await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p2"}}))
        assert (await recv_json(ws))["type"] == "session_started"


async def test_without_a_resume_grace_a_disconnect_ends_the_open_session(
    backend: BackendServer,
) -> None:
    async with running_gateway(make_settings(backend.url, resume_grace_ms=0)) as gateway:
        async with connect(gateway.ws(token_for("alice"))) as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p1"}}))
            await recv_json(ws)
        await eventually(lambda: backend.ended == [("sess-1", backend.created[0][1])])


async def test_stats_go_up_and_back_to_zero(gateway: Gateway) -> None:
    sockets = [await welcomed(gateway, user) for user in ("a", "a", "b")]
    now = await stats(gateway)
    assert (now["connections"], now["users"]) == (3, 2)
    for ws in sockets:
        await ws.close()
    await eventually(lambda: gateway.app.service.instance_stats().connections == 0)
    after = await stats(gateway)
    assert (after["connections"], after["users"], after["acceptedTotal"]) == (0, 0, 3)


async def test_a_frame_over_the_limit_closes_1009(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url, max_message_bytes=2048)) as gw:
        ws = await welcomed(gw)
        await ws.send(b"x" * 4096)
        code, _ = await closed_with(ws)
        assert code == 1009
        await eventually(lambda: gw.app.service.instance_stats().connections == 0)


async def test_an_expiring_token_is_closed_4003(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url, ws_heartbeat_interval_ms=200)) as gw:
        ws = await connect(
            gw.ws(jwt.encode({"sub": "u", "exp": int(time.time()) + 2}, SECRET, algorithm="HS256"))
        )
        assert (await recv_json(ws))["type"] == "connected"
        assert await closed_with(ws) == (4003, "Token expired")
        assert gw.app.service.instance_stats().connections == 0


async def mute_client(port: int) -> asyncio.StreamWriter:
    """A WebSocket client on a raw socket, upgraded, that will never read or answer a ping."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(b"0123456789abcdef").decode()
    writer.write(
        (
            f"GET /ws?token={token_for('mute')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    return writer


async def test_a_client_that_never_answers_pings_is_dropped(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url, ws_heartbeat_interval_ms=200)) as gw:
        writer = await mute_client(gw.port)
        await eventually(lambda: gw.app.service.instance_stats().connections == 1)
        # Never read, never answer: the server's pings go unanswered.
        await eventually(lambda: gw.app.service.instance_stats().connections == 0, within=5)
        writer.close()
        scrape = gw.app.metrics.render().decode()
        assert 'kalami_websocket_closed_total{reason="ping_timeout"} 1.0' in scrape


async def test_heartbeats_on_the_shared_timer_drop_the_mute_and_keep_the_live(
    backend: BackendServer,
) -> None:
    """A 2 s heartbeat is kept on the loop's shared timer (adapters/server/heartbeats.py): the
    client that answers pings outlives several intervals; the one that never does is dropped,
    and not before a ping could be due and its pong deadline pass."""
    interval = 2.0
    settings = make_settings(backend.url, ws_heartbeat_interval_ms=int(interval * 1000))
    async with running_gateway(settings) as gw:
        live = await connect(gw.ws(token_for("live")))  # websockets answers pings itself
        assert (await recv_json(live))["type"] == "connected"
        opened = time.monotonic()
        writer = await mute_client(gw.port)
        await eventually(lambda: gw.app.service.instance_stats().connections == 2)
        await eventually(lambda: gw.app.service.instance_stats().connections == 1, within=10)
        assert time.monotonic() - opened >= 2 * interval - 0.05
        await asyncio.sleep(2 * interval)  # more intervals: the live one answers each ping
        await live.send('{"type":"ping"}')
        assert (await recv_json(live))["type"] == "pong"
        assert gw.app.service.instance_stats().connections == 1
        await live.close()
        writer.close()


@pytest.mark.parametrize(
    ("query", "token", "resume"),
    [
        (b"", None, None),
        (b"token=", "", None),
        (b"token=abc.def.ghi", "abc.def.ghi", None),
        (b"x=1&token=a%2Eb&token=second", "a.b", None),
        (b"tokens=nope&resumes=no", None, None),
        (b"resume=r%2D1&token=t&resume=second", "t", "r-1"),
    ],
)
def test_token_and_resume_are_read_from_the_raw_query(
    query: bytes, token: str | None, resume: str | None
) -> None:
    assert query_values(query) == (token, resume)


async def test_a_browser_origin_not_in_cors_origins_closes_4008(backend: BackendServer) -> None:
    settings = make_settings(backend.url, cors_origins=("https://app.test",))
    async with running_gateway(settings) as gw:
        url = gw.ws(token_for("alice"))
        async with connect(url, origin="https://evil.test") as ws:  # type: ignore[arg-type]
            assert await closed_with(ws) == (4008, "Origin not allowed")
        for origin in ("https://app.test", None):
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                assert (await recv_json(ws))["type"] == "connected"
        assert (await stats(gw))["connections"] == 0


async def test_any_origin_may_connect_when_cors_origins_is_any(gateway: Gateway) -> None:
    async with connect(gateway.ws(token_for("a")), origin="https://x.test") as ws:  # type: ignore[arg-type]
        assert (await recv_json(ws))["type"] == "connected"


async def test_secrets_in_the_handshake_never_reach_the_log(
    backend: BackendServer, capsys: pytest.CaptureFixture[str]
) -> None:
    token = token_for("alice")
    for log_format in ("console", "json"):
        settings = make_settings(backend.url, log_level="debug", log_format=log_format)
        async with running_gateway(settings) as gw:
            headers = {"Authorization": "Bearer hs-secret-1", "Cookie": "session=hs-secret-2"}
            async with connect(gw.ws(token), additional_headers=headers) as ws:
                assert (await recv_json(ws))["type"] == "connected"
        out = capsys.readouterr().out
        assert "authorization" in out.lower()  # the header was logged (debug), masked
        for secret in ("hs-secret-1", "hs-secret-2", token):
            assert secret not in out


async def test_refresh_over_the_socket(backend: BackendServer) -> None:
    settings = make_settings(
        backend.url, token_expiry_warning_ms=3000, ws_heartbeat_interval_ms=500
    )
    async with running_gateway(settings) as gw:
        # exp is whole seconds: a 4 s token lives 3 to 4 s, and is warned about 3 s before
        async with connect(gw.ws(token_for("alice", ttl=4))) as ws:
            hello = await recv_json(ws)
            first_exp = hello["payload"]["expiresAt"]
            assert abs(first_exp - (time.time() + 4)) < 2
            warning = await recv_json(ws)
            assert warning == {"type": "token_expiring", "payload": {"expiresAt": first_exp}}
            for token, words in (
                (token_for("mallory", ttl=600), "another user"),
                ("not-a-token", "not valid"),
            ):
                await ws.send(json.dumps({"type": "refresh", "payload": {"token": token}}))
                error = await recv_json(ws)
                assert error["type"] == "error"
                assert words in error["payload"]["message"]
            fresh = token_for("alice", ttl=600)
            await ws.send(json.dumps({"type": "refresh", "payload": {"token": fresh}}))
            refreshed = await recv_json(ws)
            assert refreshed["type"] == "refreshed"
            assert refreshed["payload"]["expiresAt"] > first_exp + 500
            await asyncio.sleep(max(0.0, first_exp - time.time()) + 0.6)  # past the first exp
            await ws.send('{"type":"ping"}')
            assert (await recv_json(ws))["type"] == "pong"
        async with connect(gw.ws(token_for("bob", ttl=3))) as ws:
            await recv_json(ws)
            assert (await recv_json(ws))["type"] == "token_expiring"
            assert await closed_with(ws) == (4003, "Token expired")

"""Reply audio a phone can take (issue 26, item 5), over real sockets: a session started with
``"replyAudio": "binary"`` gets ``audio_start`` and binary frames that join into the backend's
audio; the default and the app's way get the ``audio`` message byte for byte as before; audio
past REPLY_AUDIO_MAX_BYTES gets the ``reply_audio_too_large`` error in either form; a binary
session resumed on another instance (Redis) gets its kept reply, and its next ones, in binary."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    Gateway,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.test_cluster import cluster
from tests.integration.test_resume import nothing_more, parked_on, reset, resume, start_turn

# 30 seconds of 64 kbit/s mp3 (an ID3 tag, then bytes that are not a pattern), 240,000 bytes.
AUDIO = b"ID3" + bytes((i * 7919 + i // 251) % 256 for i in range(240_000 - 3))
AUDIO_BASE64 = base64.b64encode(AUDIO).decode()
TURN_BODY = json.dumps(
    {
        "user_text": "I goed to the market",
        "assistant_text": "Nice! What did you buy?",
        "assistant_audio_base64": AUDIO_BASE64,
        "corrections": [{"original": "I goed", "corrected": "I went", "explanation": "past"}],
        "vocabulary_introduced": ["market"],
    }
).encode()
FRAME_LIMIT = 65536


async def in_session(gateway: Gateway, reply_audio: str | None) -> ClientConnection:
    ws = await connect(gateway.ws(token_for("alice")))
    assert (await recv_json(ws))["type"] == "connected"
    payload: dict[str, Any] = {"profileId": "p1"}
    if reply_audio is not None:
        payload["replyAudio"] = reply_audio
    await ws.send(json.dumps({"type": "start_session", "payload": payload}))
    assert (await recv_json(ws))["type"] == "session_started"
    return ws


async def say(ws: ClientConnection) -> None:
    """A ready-made utterance (an ``audio`` message) on the connection's session."""
    payload = {"audio_base64": base64.b64encode(b"\x01" * 3200).decode(), "format": "wav"}
    await ws.send(json.dumps({"type": "audio", "payload": payload}))


async def until_response(ws: ClientConnection) -> list[str]:
    seen = [(await recv_json(ws))["type"]]
    while seen[-1] != "response":
        seen.append((await recv_json(ws))["type"])
    return seen


async def binary_audio(ws: ClientConnection) -> bytes:
    """An ``audio_start`` and the frames it announces, checked, joined."""
    start = await recv_json(ws)
    assert start["type"] == "audio_start", start
    announced = start["payload"]
    assert set(announced) == {"format", "bytes", "frames", "maxFrameBytes"}
    assert (announced["format"], announced["maxFrameBytes"]) == ("mp3", FRAME_LIMIT)
    frames = [await asyncio.wait_for(ws.recv(), 10) for _ in range(announced["frames"])]
    assert all(isinstance(f, bytes) and 0 < len(f) <= FRAME_LIMIT for f in frames)
    audio = b"".join(f for f in frames if isinstance(f, bytes))
    assert len(audio) == announced["bytes"]
    return audio


async def test_binary_reply_audio_is_announced_then_framed(backend: BackendServer) -> None:
    backend.audio_body = TURN_BODY
    async with running_gateway(make_settings(backend.url)) as gateway:
        ws = await in_session(gateway, "binary")
        for _ in range(2):
            await say(ws)
            assert await until_response(ws) == ["processing", "transcription", "response"]
            assert await binary_audio(ws) == AUDIO
            await nothing_more(ws)  # the frames were all, and the session goes on
        await ws.close()


async def test_the_default_audio_message_is_byte_for_byte_what_it_was(
    backend: BackendServer,
) -> None:
    backend.audio_body = TURN_BODY
    expected = '{"type":"audio","payload":{"audio_base64":"' + AUDIO_BASE64 + '","format":"mp3"}}'
    async with running_gateway(make_settings(backend.url)) as gateway:
        for asked in (None, "json"):
            ws = await in_session(gateway, asked)
            await say(ws)
            await until_response(ws)
            assert await asyncio.wait_for(ws.recv(), 10) == expected
            await nothing_more(ws)
            await ws.close()


async def test_the_apps_way_is_unchanged(backend: BackendServer) -> None:
    """The app opens its session over REST and names it in each ``audio``: no start_session,
    so no replyAudio; its reply audio is the ``audio`` message it always got."""
    backend.sessions.add("rest-1")
    async with running_gateway(make_settings(backend.url)) as gateway:
        ws = await connect(gateway.ws(token_for("alice")))
        assert (await recv_json(ws))["type"] == "connected"
        payload = {"audio_base64": "AAEC", "format": "m4a", "session_id": "rest-1"}
        await ws.send(json.dumps({"type": "audio", "payload": payload}))
        await until_response(ws)
        assert await asyncio.wait_for(ws.recv(), 10) == (
            '{"type":"audio","payload":{"audio_base64":"SUQz","format":"mp3"}}'
        )
        await nothing_more(ws)
        await ws.close()


async def test_audio_past_the_cap_is_an_error_in_either_form(backend: BackendServer) -> None:
    backend.audio_body = TURN_BODY
    settings = make_settings(backend.url, reply_audio_max_bytes=len(AUDIO) - 1)
    async with running_gateway(settings) as gateway:
        for asked in ("binary", None):
            ws = await in_session(gateway, asked)
            await say(ws)
            await until_response(ws)
            assert await recv_json(ws) == {
                "type": "error",
                "payload": {
                    "message": (
                        "The tutor's spoken reply (240000 bytes) is larger than this gateway's "
                        "239999-byte limit and was not sent; its text is in the response."
                    ),
                    "code": "reply_audio_too_large",
                },
            }
            await nothing_more(ws)  # no audio, no frame
            await say(ws)  # the session is active: the next turn runs
            assert (await until_response(ws))[-1] == "response"
            await ws.close()


async def test_a_binary_session_resumed_elsewhere_gets_its_kept_reply_in_binary(
    backend: BackendServer, prefix: str
) -> None:
    backend.audio_body = TURN_BODY
    backend.turn_seconds = 1.0
    async with cluster(backend, prefix) as (a, b):
        ws = await connect(a.ws(token_for("alice")))
        token = (await recv_json(ws))["payload"]["resumeToken"]
        start = {"profileId": "p1", "replyAudio": "binary"}
        await ws.send(json.dumps({"type": "start_session", "payload": start}))
        assert (await recv_json(ws))["type"] == "session_started"
        await start_turn(ws)
        reset(ws)  # gone mid-turn, with no close frame
        await eventually(lambda: parked_on(b))  # cluster-wide: a parked it, b counts it
        again = await resume(b, token)
        assert (await recv_json(again))["type"] == "connected"
        assert (await recv_json(again))["type"] == "session_resumed"
        assert [(await recv_json(again))["type"] for _ in range(2)] == [
            "transcription",
            "response",
        ]
        assert await binary_audio(again) == AUDIO  # kept (or forwarded) through Redis
        await nothing_more(again)
        backend.turn_seconds = 0.0
        await start_turn(again)  # the resumed session's own turn, on b
        assert [(await recv_json(again))["type"] for _ in range(2)] == [
            "transcription",
            "response",
        ]
        assert await binary_audio(again) == AUDIO
        await again.close()

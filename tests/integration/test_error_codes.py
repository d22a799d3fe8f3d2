"""Error codes over real sockets: each kind of bad input, state, backend failure and refusal
gets an ``error`` whose ``message`` is word for word what clients always read, and beside it
its ``code``, the ``inReplyTo`` of the message it answers (none for a binary frame, a broken
upload, a resume), the backend's ``status`` of a rejection, the ``reason`` of a refusal."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import Gateway, make_settings, recv_json, running_gateway, token_for

TYPES = (
    "start_session, start_recording, stop_recording, audio, end_session, ping, heartbeat, refresh"
)
START = json.dumps({"type": "start_session", "payload": {"profileId": "p1"}})
START_REC = json.dumps({"type": "start_recording", "payload": {"format": "wav"}})
STOP_REC = '{"type":"stop_recording"}'
END = '{"type":"end_session"}'


def error(message: str, code: str, **extra: object) -> dict[str, Any]:
    return {"type": "error", "payload": {"message": message, "code": code, **extra}}


def audio(session_id: str, data: bytes = b"speech") -> str:
    payload = {"audio_base64": base64.b64encode(data).decode(), "session_id": session_id}
    return json.dumps({"type": "audio", "payload": payload})


async def until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of type ``kind`` (audio acknowledgements and the like skipped)."""
    while True:
        message = await recv_json(ws)
        if message["type"] == kind:
            return message


@asynccontextmanager
async def welcomed(gateway: Gateway, user: str = "alice") -> AsyncIterator[ClientConnection]:
    async with connect(gateway.ws(token_for(user))) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        yield ws


async def in_session(ws: ClientConnection) -> str:
    await ws.send(START)
    started = await recv_json(ws)
    assert started["type"] == "session_started"
    session_id: str = started["payload"]["id"]
    return session_id


# Frames that are not a message, or not one of this state: what each answers, word for word.
REFUSED = [
    (
        "{oops",
        error(
            "Malformed JSON: object keys must be strings (byte 1). Send one JSON object per "
            'text frame, like {"type": "ping"}.',
            "malformed",
        ),
    ),
    ("[1]", error('Expected a JSON object like {"type": "ping"}, got an array.', "malformed")),
    (
        '{"payload":{}}',
        error(f'Message has no "type" field; expected one of: {TYPES}.', "malformed"),
    ),
    ('{"type":7}', error('Message "type" must be a string, got a number.', "malformed")),
    (
        '{"type":"sing"}',
        error(f"Unknown message type 'sing'; expected one of: {TYPES}.", "unknown_type"),
    ),
    (
        '{"type":"start_session","payload":{"profile":"x"}}',
        error(
            "Invalid payload for 'start_session': object missing required field `profileId`. "
            'Expected {"profileId": string, "topic"?: string}.',
            "invalid_payload",
            inReplyTo="start_session",
        ),
    ),
    (
        '{"type":"refresh","payload":[]}',
        error(
            "Invalid payload for 'refresh': expected `object`, got `array`. "
            'Expected {"token": string}.',
            "invalid_payload",
            inReplyTo="refresh",
        ),
    ),
    (
        STOP_REC,
        error(
            "No session is open; send start_session first.",
            "wrong_state",
            inReplyTo="stop_recording",
        ),
    ),
    (
        END,
        error(
            "No session is open, so there is nothing to end.",
            "wrong_state",
            inReplyTo="end_session",
        ),
    ),
    (
        json.dumps({"type": "audio", "payload": {"audio_base64": "QUJD"}}),
        error(
            "No session is open: name one with session_id (a session started over REST), or "
            "send start_session first.",
            "wrong_state",
            inReplyTo="audio",
        ),
    ),
]


@pytest.mark.parametrize(("frame", "expected"), REFUSED)
async def test_each_bad_frame_is_answered_with_its_code_and_the_message_it_always_had(
    gateway: Gateway, frame: str, expected: dict[str, Any]
) -> None:
    async with welcomed(gateway) as ws:
        await ws.send(frame)
        assert await recv_json(ws) == expected
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"  # the connection stays


async def test_a_binary_frame_outside_a_recording_answers_no_message(gateway: Gateway) -> None:
    async with welcomed(gateway) as ws:
        await ws.send(b"\x00\x01")
        assert await recv_json(ws) == error(
            "Binary audio frames are accepted only while recording; send start_session, then "
            "start_recording, first.",
            "wrong_state",
        )


async def test_state_refusals_of_an_open_session(gateway: Gateway) -> None:
    async with welcomed(gateway) as ws:
        session_id = await in_session(ws)
        await ws.send(START)
        assert await recv_json(ws) == error(
            f"A session is already open (id {session_id}); send end_session before starting "
            "another.",
            "wrong_state",
            inReplyTo="start_session",
        )
        await ws.send(START_REC)
        await until(ws, "recording_started")
        await ws.send(STOP_REC)
        assert await recv_json(ws) == error(
            "The utterance was empty: send binary audio frames between start_recording and "
            "stop_recording.",
            "empty_audio",
            inReplyTo="stop_recording",
        )


async def test_a_message_while_a_turn_is_processing_waits_for_it(
    gateway: Gateway, backend: BackendServer
) -> None:
    backend.audio_hold = asyncio.Event()
    async with welcomed(gateway) as ws:
        session_id = await in_session(ws)
        await ws.send(audio(session_id))
        await until(ws, "processing")
        await backend.audio_arrived.wait()
        await ws.send(audio(session_id))
        assert await recv_json(ws) == error(
            "The previous utterance is still being processed; wait for its response (or send "
            "end_session).",
            "turn_in_progress",
            inReplyTo="audio",
        )
        backend.audio_hold.set()
        assert (await until(ws, "response"))["type"] == "response"


async def test_a_backend_refusal_to_start_carries_its_status(gateway: Gateway) -> None:
    async with welcomed(gateway) as ws:
        await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "missing"}}))
        assert await recv_json(ws) == error(
            "Could not start the session: the backend answered 404 (Profile not found).",
            "backend_rejected",
            inReplyTo="start_session",
            status=404,
        )


async def test_a_backend_refusal_of_a_named_session_answers_audio(gateway: Gateway) -> None:
    async with welcomed(gateway) as ws:
        await ws.send(audio("not-a-session"))
        await until(ws, "processing")
        assert await recv_json(ws) == error(
            "Could not process the utterance: the backend answered 404 (Session not found). "
            "Please try again.",
            "backend_rejected",
            inReplyTo="audio",
            status=404,
        )


async def test_a_failed_turn_answers_stop_recording(
    gateway: Gateway, backend: BackendServer
) -> None:
    backend.audio_status = 500
    async with welcomed(gateway) as ws:
        await in_session(ws)
        await ws.send(START_REC)
        await until(ws, "recording_started")
        await ws.send(b"\x00" * 100)
        await until(ws, "audio_received")
        await ws.send(STOP_REC)
        assert await until(ws, "error") == error(
            "Could not process the utterance: the backend answered 500 (speech recognition "
            "failed). Please try again.",
            "backend_rejected",
            inReplyTo="stop_recording",
            status=500,
        )


async def test_an_unreadable_reply_is_backend_invalid_reply(
    gateway: Gateway, backend: BackendServer
) -> None:
    backend.audio_body = b"not json"
    async with welcomed(gateway) as ws:
        session_id = await in_session(ws)
        await ws.send(audio(session_id))
        assert await until(ws, "error") == error(
            "Could not process the utterance: the backend sent a reply the gateway could not "
            "read. Please try again.",
            "backend_invalid_reply",
            inReplyTo="audio",
        )


async def test_a_slow_backend_is_backend_timeout(backend: BackendServer) -> None:
    backend.create_delay = 1.0
    settings = make_settings(backend.url, backend_timeout_ms=300)
    async with running_gateway(settings) as gw, welcomed(gw) as ws:
        await ws.send(START)
        assert await recv_json(ws) == error(
            "Could not start the session: the backend timed out.",
            "backend_timeout",
            inReplyTo="start_session",
        )


async def test_an_unreachable_backend_is_backend_unavailable(backend: BackendServer) -> None:
    url = backend.url
    await backend.stop()  # nothing listens there now
    async with running_gateway(make_settings(url)) as gw, welcomed(gw) as ws:
        await ws.send(START)
        assert await recv_json(ws) == error(
            "Could not start the session: the backend is unavailable.",
            "backend_unavailable",
            inReplyTo="start_session",
        )


async def test_too_much_audio_is_audio_too_large(backend: BackendServer) -> None:
    settings = make_settings(backend.url, max_audio_bytes=1000)
    async with running_gateway(settings) as gw, welcomed(gw) as ws:
        session_id = await in_session(ws)
        await ws.send(audio(session_id, b"x" * 1001))
        assert await until(ws, "error") == error(
            "The utterance is larger than the 1000-byte limit.",
            "audio_too_large",
            inReplyTo="audio",
        )
        await ws.send(START_REC)
        await until(ws, "recording_started")
        await ws.send(b"x" * 600)
        await until(ws, "audio_received")
        await ws.send(b"x" * 600)
        assert await recv_json(ws) == error(  # a binary frame's: answering no message
            "The utterance passed the 1000-byte limit and was dropped; recording stopped. Send "
            "start_recording to try a shorter one.",
            "audio_too_large",
        )


async def test_a_broken_upload_answers_no_message(backend: BackendServer) -> None:
    backend.reject_early = 503
    async with running_gateway(make_settings(backend.url)) as gw, welcomed(gw) as ws:
        await in_session(ws)
        await ws.send(START_REC)
        await until(ws, "recording_started")
        answer: dict[str, Any] = {}
        for _ in range(200):  # frames as a learner speaks, until the upload's refusal lands
            await ws.send(b"x" * 4096)
            answer = await recv_json(ws)
            if answer["type"] == "error":
                break
            await asyncio.sleep(0.002)
        # The backend's words depend on whether its answer or the body's failure came first.
        message = answer["payload"].pop("message")
        assert message.startswith("Could not send the utterance to the backend: the backend ")
        assert "503" in message
        assert message.endswith(
            "The rest of this recording is ignored; send stop_recording, then record again."
        )
        assert answer == {"type": "error", "payload": {"code": "backend_rejected", "status": 503}}


async def test_a_session_start_past_the_budget_is_rate_limited(backend: BackendServer) -> None:
    settings = make_settings(backend.url, session_start_rate=1)
    async with running_gateway(settings) as gw, welcomed(gw) as ws:
        await in_session(ws)
        await ws.send(END)
        await until(ws, "session_ended")
        await ws.send(START)
        assert await recv_json(ws) == error(
            "Too many sessions started in the last minute; wait a few seconds, then send "
            "start_session again.",
            "rate_limited",
            inReplyTo="start_session",
        )


async def test_a_refused_refresh_says_why(gateway: Gateway) -> None:
    async with welcomed(gateway) as ws:
        for token, reason, words in (
            (token_for("mallory"), "other_user", "belongs to another user"),
            ("garbage", "invalid_token", "is not valid"),
        ):
            await ws.send(json.dumps({"type": "refresh", "payload": {"token": token}}))
            got = await recv_json(ws)
            assert got["type"] == "error"
            assert words in got["payload"]["message"]
            assert {k: v for k, v in got["payload"].items() if k != "message"} == {
                "code": "refresh_refused",
                "inReplyTo": "refresh",
                "reason": reason,
            }


async def test_a_refused_resume_says_why_and_answers_no_message(gateway: Gateway) -> None:
    async with connect(f"{gateway.ws(token_for('alice'))}&resume=never-issued") as ws:
        assert (await recv_json(ws))["type"] == "connected"
        assert await recv_json(ws) == error(
            "The session could not be resumed: the resume token is unknown (or its connection "
            "had no session open). Send start_session to start a new one.",
            "resume_refused",
            reason="unknown",
        )

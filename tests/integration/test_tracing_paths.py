"""Tracing on, over real sockets, on the paths off the plain one (``test_tracing.py``): a turn
the client cancels, a turn the backend fails, a session parked and resumed, the Kalami app's
own ``audio`` turns, and BACKEND_MODE=stub. Spans go to the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    SECRET,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.kalami_backend import running_kalami
from tests.integration.redis_fixtures import REDIS_URL
from tests.integration.test_kalami_app import Learner
from tests.integration.test_resume import (
    REPLIES,
    in_session,
    parked_on,
    reset,
    resume,
    start_turn,
)
from tests.integration.test_tracing import ids_of, named, parent_of, sent_traceparent, traced


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def status_of(span: ReadableSpan) -> tuple[StatusCode, str | None]:
    return span.status.status_code, span.status.description


def attribute(span: ReadableSpan, key: str) -> object:
    assert span.attributes is not None
    return span.attributes.get(key)


async def test_a_turn_the_client_cancels_is_a_failed_span_saying_so(
    backend: BackendServer, exporter: InMemorySpanExporter
) -> None:
    backend.audio_hold = asyncio.Event()  # the backend never answers this turn
    settings = make_settings(backend.url)
    async with running_gateway(settings, traced(settings, exporter)) as gw:
        ws, _, _ = await in_session(gw.ws(token_for("alice")))
        await start_turn(ws)  # up to the turn's processing
        await asyncio.wait_for(backend.audio_arrived.wait(), 10)
        await ws.send(json.dumps({"type": "end_session"}))  # cancels the turn
        assert (await recv_json(ws))["type"] == "session_ended"
        await ws.close()
        await eventually(lambda: named(exporter, "ws connection"))
    backend.audio_hold.set()

    [turn] = named(exporter, "turn")
    [waiting] = named(exporter, "turn.backend")
    assert status_of(turn) == (StatusCode.ERROR, "cancelled")
    assert attribute(turn, "kalami.turn.outcome") == "cancelled"
    assert status_of(waiting) == (StatusCode.ERROR, "CancelledError")
    assert parent_of(waiting) == ids_of(turn)[1]
    assert named(exporter, "turn.reply") == []  # nothing was delivered
    [session] = named(exporter, "session")
    assert parent_of(turn) == ids_of(session)[1]
    assert turn.end_time is not None
    assert session.end_time is not None
    assert turn.end_time <= session.end_time


async def test_a_turn_cancelled_before_it_ran_is_still_ended(
    backend: BackendServer, exporter: InMemorySpanExporter
) -> None:
    # stop_recording and end_session in one write: the turn's task is cancelled by the same
    # read that made it, before its first step (its code never runs).
    settings = make_settings(backend.url, utterance_upload="buffer")
    async with running_gateway(settings, traced(settings, exporter)) as gw:
        ws, _, _ = await in_session(gw.ws(token_for("alice")))
        await ws.send(json.dumps({"type": "start_recording", "payload": {"format": "wav"}}))
        assert (await recv_json(ws))["type"] == "recording_started"
        await ws.send(b"\x01" * 3200)
        assert (await recv_json(ws))["type"] == "audio_received"
        transport = ws.transport
        ws.protocol.send_text(b'{"type":"stop_recording"}')
        ws.protocol.send_text(b'{"type":"end_session"}')
        transport.write(b"".join(ws.protocol.data_to_send()))
        seen = [(await recv_json(ws))["type"] for _ in range(2)]
        assert seen == ["processing", "session_ended"]
        await ws.close()
        await eventually(lambda: named(exporter, "ws connection"))

    [turn] = named(exporter, "turn")
    assert turn.end_time is not None
    assert status_of(turn) == (StatusCode.ERROR, "cancelled")
    assert attribute(turn, "kalami.turn.outcome") == "cancelled"


@pytest.mark.parametrize(
    ("fault", "outcome"), [("status", "backend_rejected"), ("timeout", "backend_timeout")]
)
async def test_a_turn_the_backend_fails_is_a_failed_span_saying_why(
    backend: BackendServer, exporter: InMemorySpanExporter, fault: str, outcome: str
) -> None:
    if fault == "status":
        backend.audio_status = 500
        settings = make_settings(backend.url)
    else:
        backend.audio_hold = asyncio.Event()
        settings = make_settings(backend.url, backend_timeout_ms=300)
    async with running_gateway(settings, traced(settings, exporter)) as gw:
        ws, _, _ = await in_session(gw.ws(token_for("alice")))
        await start_turn(ws)  # up to the turn's processing
        failed = await recv_json(ws)
        assert failed["type"] == "error"
        await ws.close()
        await eventually(lambda: named(exporter, "ws connection"))
    if backend.audio_hold is not None:
        backend.audio_hold.set()

    [turn] = named(exporter, "turn")
    [waiting] = named(exporter, "turn.backend")
    [reply] = named(exporter, "turn.reply")  # the error, delivered
    assert status_of(turn) == (StatusCode.ERROR, outcome)
    assert attribute(turn, "kalami.turn.outcome") == outcome
    assert status_of(waiting)[0] is StatusCode.ERROR
    assert status_of(reply)[0] is StatusCode.UNSET
    for child in (waiting, reply):
        assert parent_of(child) == ids_of(turn)[1]
    [call] = [
        span
        for span in named(exporter, "backend POST")
        if str(attribute(span, "url.path")).endswith("/audio")
    ]
    assert call.status.status_code is StatusCode.ERROR
    if fault == "status":
        assert attribute(call, "http.response.status_code") == 500


async def test_a_resumed_session_opens_no_second_session_span(
    backend: BackendServer, exporter: InMemorySpanExporter, prefix: str
) -> None:
    """The session span is the session on the connection that started it; after a resume its
    turns (and its end) belong to the new connection's span and carry the session id."""
    backend.turn_seconds = 0.3
    settings = make_settings(backend.url, redis_url=REDIS_URL, redis_key_prefix=prefix)
    async with running_gateway(settings, traced(settings, exporter)) as gw:
        ws, token, session_id = await in_session(gw.ws(token_for("alice")))
        await start_turn(ws)
        reset(ws)  # gone mid-turn: the session is parked, the turn runs on detached
        await eventually(lambda: parked_on(gw))
        again = await resume(gw, token)
        assert (await recv_json(again))["type"] == "connected"
        assert (await recv_json(again))["type"] == "session_resumed"
        assert [(await recv_json(again))["type"] for _ in REPLIES] == REPLIES
        await start_turn(again)
        assert [(await recv_json(again))["type"] for _ in REPLIES] == REPLIES
        await again.send(json.dumps({"type": "end_session"}))
        assert (await recv_json(again))["type"] == "session_ended"
        await again.close()
        await eventually(lambda: len(named(exporter, "ws connection")) == 2)

    first, second = sorted(named(exporter, "ws connection"), key=lambda span: span.start_time or 0)
    assert ids_of(first)[0] != ids_of(second)[0]  # a trace per connection
    [session] = named(exporter, "session")
    assert parent_of(session) == ids_of(first)[1]
    assert attribute(session, "kalami.session_id") == session_id
    detached, resumed = sorted(named(exporter, "turn"), key=lambda span: span.start_time or 0)
    # The turn the first connection began finished while it was gone: its outcome was parked.
    assert parent_of(detached) == ids_of(session)[1]
    assert attribute(detached, "kalami.turn.outcome") == "ok"
    assert parent_of(resumed) == ids_of(second)[1]
    assert ids_of(resumed)[0] == ids_of(second)[0]
    assert attribute(resumed, "kalami.session_id") == session_id
    assert attribute(resumed, "kalami.turn.outcome") == "ok"
    # The end: a call in the second connection's trace.
    ended = [r for r in backend.requests if r.raw_path.endswith("/end")]
    assert len(ended) == 1
    trace_id, span_id = sent_traceparent(ended[0])
    [end_call] = [s for s in exporter.get_finished_spans() if ids_of(s)[1] == span_id]
    assert trace_id == ids_of(second)[0]
    assert parent_of(end_call) == ids_of(second)[1]


async def test_the_apps_audio_message_is_a_turn_of_the_connection(
    exporter: InMemorySpanExporter,
) -> None:
    """The app names a session it opened over REST: no session span, the turn is the
    connection's child, with no upload part (the audio came in one message)."""
    async with running_kalami(SECRET) as kalami:
        settings = make_settings(kalami.url)
        async with running_gateway(settings, traced(settings, exporter)) as gw:
            learner = Learner(gw, "tracy@example.com")
            try:
                await learner.sign_up()
                session_id = await learner.start_session()
                async with learner.socket() as app:
                    await app.say(os.urandom(20_000), session_id)
                    got = await app.turn()
                    assert [m["type"] for m in got] == [
                        "processing",
                        "transcription",
                        "response",
                        "audio",
                    ]
            finally:
                await learner.http.aclose()
            await eventually(lambda: named(exporter, "ws connection"))

    [connection] = named(exporter, "ws connection")
    [turn] = named(exporter, "turn")
    [waiting] = named(exporter, "turn.backend")
    [reply] = named(exporter, "turn.reply")
    assert named(exporter, "session") == []
    assert named(exporter, "turn.upload") == []
    assert parent_of(turn) == ids_of(connection)[1]
    assert attribute(turn, "kalami.session_id") == session_id
    assert attribute(turn, "kalami.turn.outcome") == "ok"
    for child in (waiting, reply):
        assert parent_of(child) == ids_of(turn)[1]
    [call] = named(exporter, "backend POST")
    assert parent_of(call) == ids_of(waiting)[1]
    assert attribute(call, "url.path") == f"/conversations/sessions/{session_id}/audio"
    # The app's REST calls through /api: register, login, the session's create.
    proxied = named(exporter, "proxy POST")
    assert sorted(str(attribute(span, "url.path")) for span in proxied) == [
        "/api/auth/login",
        "/api/auth/register",
        "/api/conversations/sessions",
    ]
    assert {ids_of(span)[0] for span in proxied}.isdisjoint({ids_of(connection)[0]})


async def test_stub_mode_traces_sessions_and_turns_and_calls_nothing(
    exporter: InMemorySpanExporter,
) -> None:
    settings = make_settings("http://127.0.0.1:9", backend_mode="stub")
    async with running_gateway(settings, traced(settings, exporter)) as gw:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(f"{gw.http}/api/x")
        assert answer.status_code == 404
        assert answer.json()["code"] == "api_not_served"
        ws, _, _ = await in_session(gw.ws(token_for("alice")))
        await start_turn(ws)
        assert [(await recv_json(ws))["type"] for _ in REPLIES] == REPLIES
        await ws.send(json.dumps({"type": "end_session"}))
        assert (await recv_json(ws))["type"] == "session_ended"
        await ws.close()
        await eventually(lambda: named(exporter, "ws connection"))

    names = sorted(span.name for span in exporter.get_finished_spans())
    assert names == [
        "session",
        "turn",
        "turn.backend",
        "turn.reply",
        "turn.upload",
        "ws connection",
    ]  # no proxy span (nothing is forwarded), no backend call spans (nothing is called)
    [connection] = named(exporter, "ws connection")
    [session] = named(exporter, "session")
    [turn] = named(exporter, "turn")
    assert parent_of(session) == ids_of(connection)[1]
    assert parent_of(turn) == ids_of(session)[1]
    assert attribute(turn, "kalami.turn.outcome") == "ok"

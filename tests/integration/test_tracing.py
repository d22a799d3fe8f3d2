"""Tracing on, over real sockets: the spans the gateway makes, their parents, and the
traceparent the backend is sent (a proxied request, a voice turn). The container's ``tracing``
is replaced by one exporting to the SDK's in-memory exporter, span by span as each ends."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest
from dependency_injector import providers
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from websockets.asyncio.client import connect

from kalami_gateway.adapters.tracing import OtelTracing, parse_traceparent
from kalami_gateway.app.container import Container
from kalami_gateway.app.settings import Settings
from tests.integration.backend_server import BackendServer, Recorded, pattern
from tests.integration.conftest import (
    closed_with,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)

# A client's own traceparent (W3C's example): believed only from a peer in TRUSTED_PROXIES.
CLIENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced(settings: Settings, exporter: InMemorySpanExporter) -> Container:
    """The real container, its tracing exporting to ``exporter`` as each span ends."""
    container = Container(settings=settings)

    def tracing() -> Iterator[OtelTracing]:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracing = OtelTracing(provider)
        try:
            yield tracing
        finally:
            tracing.shutdown()

    container.tracing.override(providers.Resource(tracing))
    return container


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def ids_of(span: ReadableSpan) -> tuple[int, int]:
    """(trace id, span id)."""
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def sent_traceparent(request: Recorded) -> tuple[int, int]:
    """The (trace id, parent span id) of the one traceparent the backend got."""
    [value] = request.headers_named("traceparent")
    remote = parse_traceparent(value.encode())
    assert remote is not None, value
    return remote.trace_id, remote.span_id


async def test_a_proxied_request_is_one_span_whose_traceparent_the_backend_gets(
    backend: BackendServer, exporter: InMemorySpanExporter
) -> None:
    settings = make_settings(backend.url)
    async with (
        running_gateway(settings, traced(settings, exporter)) as gw,
        httpx.AsyncClient(timeout=10) as client,
    ):
        response = await client.get(f"{gw.http}/api/x", headers={"X-Request-ID": "req-traced"})
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "req-traced"
        await eventually(lambda: named(exporter, "proxy GET"))
    [span] = named(exporter, "proxy GET")
    assert span.attributes is not None
    assert span.attributes["kalami.request_id"] == "req-traced"
    assert span.attributes["http.response.status_code"] == 200
    [request] = [r for r in backend.requests if r.raw_path == "/x"]
    assert sent_traceparent(request) == ids_of(span)
    assert request.header("X-Request-ID") == "req-traced"


async def test_a_clients_traceparent_is_not_continued_and_is_replaced_upstream(
    backend: BackendServer, exporter: InMemorySpanExporter
) -> None:
    settings = make_settings(backend.url)  # no TRUSTED_PROXIES: 127.0.0.1 is a client
    async with (
        running_gateway(settings, traced(settings, exporter)) as gw,
        httpx.AsyncClient(timeout=10) as client,
    ):
        response = await client.get(
            f"{gw.http}/api/x",
            headers={"traceparent": CLIENT_TRACEPARENT, "tracestate": "vendor=claim"},
        )
        assert response.status_code == 200
        await eventually(lambda: named(exporter, "proxy GET"))
    [span] = named(exporter, "proxy GET")
    trace_id, span_id = ids_of(span)
    assert trace_id != CLIENT_TRACE
    assert span.parent is None  # the root of a trace of its own
    [request] = [r for r in backend.requests if r.raw_path == "/x"]
    assert sent_traceparent(request) == (trace_id, span_id)
    assert request.headers_named("tracestate") == []  # it went with the claim it belonged to


async def test_a_trusted_proxys_traceparent_is_continued(
    backend: BackendServer, exporter: InMemorySpanExporter
) -> None:
    settings = make_settings(backend.url, trusted_proxies=("127.0.0.1",))
    async with (
        running_gateway(settings, traced(settings, exporter)) as gw,
        httpx.AsyncClient(timeout=10) as client,
    ):
        response = await client.get(
            f"{gw.http}/api/x",
            headers={"traceparent": CLIENT_TRACEPARENT, "tracestate": "vendor=kept"},
        )
        assert response.status_code == 200
        await eventually(lambda: named(exporter, "proxy GET"))
    [span] = named(exporter, "proxy GET")
    trace_id, span_id = ids_of(span)
    assert trace_id == CLIENT_TRACE
    assert parent_of(span) == CLIENT_SPAN
    [request] = [r for r in backend.requests if r.raw_path == "/x"]
    assert sent_traceparent(request) == (trace_id, span_id)
    assert request.headers_named("tracestate") == ["vendor=kept"]


@pytest.mark.parametrize("upload", ["stream", "buffer"])
async def test_a_voice_turn_is_traced_from_connection_to_reply(
    backend: BackendServer, exporter: InMemorySpanExporter, upload: str
) -> None:
    settings = make_settings(backend.url, utterance_upload=upload)
    frame = pattern(0, 4096)
    async with running_gateway(settings, traced(settings, exporter)) as gw:
        async with connect(gw.ws(token_for("alice"))) as ws:
            assert (await recv_json(ws))["type"] == "connected"
            await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p"}}))
            started = await recv_json(ws)
            assert started["type"] == "session_started"
            session_id = started["payload"]["id"]
            await ws.send(json.dumps({"type": "start_recording", "payload": {"format": "webm"}}))
            assert (await recv_json(ws))["type"] == "recording_started"
            await ws.send(frame)
            assert (await recv_json(ws))["type"] == "audio_received"
            await ws.send('{"type":"stop_recording"}')
            replies = [await recv_json(ws)]
            while replies[-1]["type"] not in ("audio", "error"):
                replies.append(await recv_json(ws))
            # (3) the turn delivers its messages as it does untraced
            digest = hashlib.sha256(frame).hexdigest()[:12]
            assert replies == [
                {"type": "processing", "payload": {"stage": "transcribing"}},
                {
                    "type": "transcription",
                    "payload": {
                        "text": f"{len(frame)} bytes sha {digest} in {session_id}",
                        "is_final": True,
                    },
                },
                {
                    "type": "response",
                    "payload": {
                        "text": "Great sentence!",
                        "grammar_corrections": [
                            {"original": "I has", "corrected": "I have", "explanation": "agreement"}
                        ],
                        "vocabulary_introduced": ["agreement"],
                    },
                },
                {"type": "audio", "payload": {"audio_base64": "SUQz", "format": "mp3"}},
            ]
            await ws.send('{"type":"end_session"}')
            assert (await recv_json(ws))["type"] == "session_ended"
        await eventually(lambda: named(exporter, "ws connection"))

    [connection] = named(exporter, "ws connection")
    [session] = named(exporter, "session")
    [turn] = named(exporter, "turn")
    [uploading] = named(exporter, "turn.upload")
    [waiting] = named(exporter, "turn.backend")
    [reply] = named(exporter, "turn.reply")
    trace_id, connection_id = ids_of(connection)
    assert connection.parent is None
    spans = [connection, session, turn, uploading, waiting, reply]
    assert {ids_of(span)[0] for span in spans} == {trace_id}
    assert parent_of(session) == connection_id
    assert parent_of(turn) == ids_of(session)[1]
    for child in (uploading, waiting, reply):
        assert parent_of(child) == ids_of(turn)[1], child.name
    assert session.attributes is not None
    assert turn.attributes is not None
    assert session.attributes["kalami.session_id"] == session_id
    assert turn.attributes["kalami.turn.outcome"] == "ok"

    # Each backend call: a client span, child of the span current when it was made, whose
    # traceparent the backend got.
    calls = {ids_of(span)[1]: span for span in exporter.get_finished_spans()}
    by_path = {r.raw_path.rsplit("/", 1)[-1]: r for r in backend.requests}
    expected_parent = {
        "sessions": session,  # the create
        "audio": uploading if upload == "stream" else waiting,
        "end": session,
    }
    for last, parent in expected_parent.items():
        sent_trace, sent_span = sent_traceparent(by_path[last])
        assert sent_trace == trace_id, last
        call = calls[sent_span]
        assert call.name == "backend POST", last
        assert parent_of(call) == ids_of(parent)[1], last


async def test_a_backend_5xx_marks_the_proxied_requests_span_failed(
    backend: BackendServer, exporter: InMemorySpanExporter
) -> None:
    settings = make_settings(backend.url)
    async with (
        running_gateway(settings, traced(settings, exporter)) as gw,
        httpx.AsyncClient(timeout=10) as client,
    ):
        assert (await client.get(f"{gw.http}/api/status/503")).status_code == 503
        assert (await client.get(f"{gw.http}/api/status/404")).status_code == 404
        await eventually(lambda: len(named(exporter, "proxy GET")) == 2)
    failed, missing = named(exporter, "proxy GET")
    assert failed.attributes is not None
    assert missing.attributes is not None
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.status.status_code is StatusCode.ERROR
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.status.status_code is StatusCode.UNSET


async def test_a_connection_the_gateway_closes_says_why_in_its_span(
    backend: BackendServer, exporter: InMemorySpanExporter
) -> None:
    settings = make_settings(backend.url, max_message_bytes=1024)
    async with running_gateway(settings, traced(settings, exporter)) as gw:
        async with connect(gw.ws(token_for("alice"))) as ws:
            assert (await recv_json(ws))["type"] == "connected"
            await ws.send(json.dumps({"type": "ping", "payload": {"pad": "x" * 2048}}))
            assert (await closed_with(ws))[0] == 1009
        await eventually(lambda: named(exporter, "ws connection"))
    [connection] = named(exporter, "ws connection")
    assert connection.attributes is not None
    # The gateway's reason, not the loop's view of a socket that ended.
    assert connection.attributes["kalami.close_reason"] == "message_too_big"


async def test_what_a_connection_leaves_open_is_ended_with_it(
    backend: BackendServer, exporter: InMemorySpanExporter
) -> None:
    settings = make_settings(backend.url)
    async with running_gateway(settings, traced(settings, exporter)) as gw:
        async with connect(gw.ws(token_for("alice"))) as ws:
            assert (await recv_json(ws))["type"] == "connected"
            await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p"}}))
            assert (await recv_json(ws))["type"] == "session_started"
            await ws.send(json.dumps({"type": "start_recording", "payload": {"format": "webm"}}))
            assert (await recv_json(ws))["type"] == "recording_started"
        # Gone mid-recording, without end_session (the session is kept to be resumed).
        await eventually(lambda: named(exporter, "ws connection"))

    [connection] = named(exporter, "ws connection")
    trace_id, connection_id = ids_of(connection)
    assert connection.attributes is not None
    assert connection.attributes["kalami.close_reason"] == "client_closed"
    [session] = named(exporter, "session")
    [turn] = named(exporter, "turn")
    [uploading] = named(exporter, "turn.upload")
    assert parent_of(session) == connection_id
    assert parent_of(turn) == ids_of(session)[1]
    assert parent_of(uploading) == ids_of(turn)[1]
    assert {ids_of(span)[0] for span in (session, turn, uploading)} == {trace_id}
    # none ended after the connection's
    assert connection.end_time is not None
    for span in (session, turn, uploading):
        assert span.end_time is not None
        assert span.end_time <= connection.end_time, span.name

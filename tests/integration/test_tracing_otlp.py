"""Tracing as an operator turns it on: ``kalami-gateway serve`` as a process of its own, the
standard OTEL_* variables pointing its OTLP/HTTP exporter at a receiver in the test
(``otlp_receiver.py``) that decodes what arrives. What the receiver decoded is asserted: the
resource, the span names and their parents, the request id, the trace the backend was sent;
that a SIGTERM flushes what is still batched; that a collector refusing or away costs the
clients nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from kalami_gateway.adapters.tracing import parse_traceparent
from tests.integration.backend_server import BackendServer, Recorded
from tests.integration.conftest import closed_with, eventually, recv_json, token_for
from tests.integration.otlp_receiver import (
    KIND_CLIENT,
    KIND_SERVER,
    STATUS_UNSET,
    OtlpReceiver,
    ReceivedSpan,
)
from tests.integration.redis_fixtures import REDIS_URL
from tests.integration.test_lifecycle import free_port, gateway_env, process

SERVICE = "kalami-gateway-under-test"
SERVE = [sys.executable, "-m", "kalami_gateway", "serve"]


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    made = OtlpReceiver()
    await made.start()
    yield made
    await made.stop()


def traced_env(backend: BackendServer, port: int, endpoint: str, **extra: str) -> dict[str, str]:
    """The gateway's environment with tracing turned on the standard way."""
    return gateway_env(
        backend.url,
        port,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_SERVICE_NAME=SERVICE,
        OTEL_TRACES_SAMPLER="always_on",
        **extra,
    )


def sent_traceparent(request: Recorded) -> tuple[int, int]:
    """The (trace id, parent span id) of the one traceparent the backend got."""
    [value] = request.headers_named("traceparent")
    remote = parse_traceparent(value.encode())
    assert remote is not None, value
    return remote.trace_id, remote.span_id


def by_id(spans: list[ReceivedSpan]) -> dict[int, ReceivedSpan]:
    return {span.span_id: span for span in spans}


def request_to(backend: BackendServer, last_segment: str) -> Recorded:
    [request] = [r for r in backend.requests if r.raw_path.rsplit("/", 1)[-1] == last_segment]
    return request


async def session_with_a_turn(port: int) -> tuple[ClientConnection, str]:
    """A socket whose session has had one voice turn; the socket and the session id."""
    ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token_for('alice')}")
    assert (await recv_json(ws))["type"] == "connected"
    await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p"}}))
    started = await recv_json(ws)
    assert started["type"] == "session_started"
    await ws.send(json.dumps({"type": "start_recording", "payload": {"format": "webm"}}))
    assert (await recv_json(ws))["type"] == "recording_started"
    await ws.send(b"\x01" * 4096)
    assert (await recv_json(ws))["type"] == "audio_received"
    await ws.send('{"type":"stop_recording"}')
    replies = [await recv_json(ws)]
    while replies[-1]["type"] not in ("audio", "error"):
        replies.append(await recv_json(ws))
    assert [r["type"] for r in replies] == ["processing", "transcription", "response", "audio"]
    session_id: str = started["payload"]["id"]
    return ws, session_id


async def proxied_get(port: int, request_id: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(
            f"http://127.0.0.1:{port}/api/x", headers={"X-Request-ID": request_id}
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id


def assert_the_traffics_spans(
    receiver: OtlpReceiver, backend: BackendServer, session_id: str, ended: bool = True
) -> None:
    """What one proxied GET and one session with a voice turn make (``ended``: and the
    session's end call, made with its span current)."""
    spans = by_id(receiver.spans)
    assert {span.resource.get("service.name") for span in receiver.spans} == {SERVICE}
    # Each process (each --workers worker) an instance of its own, named by the SDK.
    assert all(span.resource.get("service.instance.id") for span in receiver.spans)
    assert {span.scope for span in receiver.spans} == {"kalami_gateway"}

    # The proxied request: a server span of a trace of its own, the request id on it, and
    # the backend sent its traceparent.
    [proxied] = receiver.named("proxy GET")
    assert proxied.kind == KIND_SERVER
    assert proxied.parent_span_id is None
    assert proxied.attributes["kalami.request_id"] == "req-otlp"
    assert proxied.attributes["http.response.status_code"] == 200
    assert proxied.attributes["url.path"] == "/api/x"
    assert proxied.status_code == STATUS_UNSET
    assert sent_traceparent(request_to(backend, "x")) == (proxied.trace_id, proxied.span_id)

    # The connection, its session, the turn and the turn's three parts: one trace.
    [connection] = receiver.named("ws connection")
    [session] = receiver.named("session")
    [turn] = receiver.named("turn")
    [uploading] = receiver.named("turn.upload")
    [waiting] = receiver.named("turn.backend")
    [reply] = receiver.named("turn.reply")
    assert connection.kind == KIND_SERVER
    assert connection.parent_span_id is None
    assert connection.trace_id != proxied.trace_id
    tree = [connection, session, turn, uploading, waiting, reply]
    assert {span.trace_id for span in tree} == {connection.trace_id}
    assert session.parent_span_id == connection.span_id
    assert turn.parent_span_id == session.span_id
    for child in (uploading, waiting, reply):
        assert child.parent_span_id == turn.span_id, child.name
    connection_id = connection.attributes["kalami.connection_id"]
    assert isinstance(connection_id, str)
    assert session.attributes["kalami.connection_id"] == connection_id
    assert session.attributes["kalami.session_id"] == session_id
    assert turn.attributes["kalami.session_id"] == session_id
    assert turn.attributes["kalami.turn.outcome"] == "ok"
    assert turn.status_code == STATUS_UNSET
    for span in tree:
        assert span.start_ns <= span.end_ns, span.name

    # Each backend call: a client span whose traceparent the backend got, child of the span
    # current when it was made (streamed upload: the audio call runs in turn.upload).
    calls = [("sessions", session), ("audio", uploading)] + ([("end", session)] if ended else [])
    for last, parent in calls:
        trace_id, span_id = sent_traceparent(request_to(backend, last))
        assert trace_id == connection.trace_id, last
        call = spans[span_id]
        assert call.name == "backend POST", last
        assert call.kind == KIND_CLIENT, last
        assert call.parent_span_id == parent.span_id, last
        assert call.attributes["http.response.status_code"] in (200, 201), last


async def test_a_collector_receives_the_gateways_traces_over_otlp_http(
    backend: BackendServer, receiver: OtlpReceiver
) -> None:
    port = free_port()
    env = traced_env(backend, port, receiver.url, OTEL_BSP_SCHEDULE_DELAY="50")
    async with process(SERVE, env, port) as proc:
        await proxied_get(port, "req-otlp")
        ws, session_id = await session_with_a_turn(port)
        await ws.send('{"type":"end_session"}')
        assert (await recv_json(ws))["type"] == "session_ended"
        await ws.close()
        # Exported while the gateway runs, a batch every 50 ms.
        await eventually(lambda: receiver.named("ws connection"), within=10)
        assert_the_traffics_spans(receiver, backend, session_id)
        [connection] = receiver.named("ws connection")
        assert connection.attributes["kalami.close_reason"] == "client_closed"
        assert receiver.refused == receiver.malformed == 0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_sigterm_exports_what_is_still_batched(
    backend: BackendServer, receiver: OtlpReceiver, prefix: str, workers: int
) -> None:
    port = free_port()
    # A batch every minute: within the test, only the shutdown's flush sends anything.
    env = traced_env(backend, port, receiver.url, OTEL_BSP_SCHEDULE_DELAY="60000")
    if workers > 1:
        # Each worker traces and flushes on its own (the supervisor passes the signal on); the
        # request and the socket may land on either. A cluster's stop parks the session for
        # another instance (1012) instead of ending it.
        env |= {"REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": prefix}
    async with process([*SERVE, "--workers", str(workers)], env, port) as proc:
        await proxied_get(port, "req-otlp")
        ws, session_id = await session_with_a_turn(port)
        assert receiver.exports == 0
        # Stopped with the session open: the drain closes the socket; those spans end during
        # the shutdown (one process: and the session's end call) and are sent too.
        proc.send_signal(signal.SIGTERM)
        if workers == 1:
            assert await closed_with(ws) == (1001, "Server shutting down")
        else:
            assert await closed_with(ws) == (1012, "Service restart")
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert receiver.exports >= 1
    assert_the_traffics_spans(receiver, backend, session_id, ended=workers == 1)
    assert backend.end_calls == ([session_id] if workers == 1 else [])


@pytest.mark.parametrize("collector", ["refusing", "away"])
async def test_a_collector_that_refuses_or_is_away_costs_the_clients_nothing(
    backend: BackendServer, receiver: OtlpReceiver, collector: str
) -> None:
    port = free_port()
    if collector == "refusing":
        receiver.status = 503
        endpoint = receiver.url
    else:
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # The exporter's own retry deadline left at its default (10 s): the stop must not wait
    # for it (the last export is cut short after FINAL_EXPORT_SECONDS).
    env = traced_env(backend, port, endpoint, OTEL_BSP_SCHEDULE_DELAY="50")
    async with process(SERVE, env, port) as proc:
        for n in range(3):
            await proxied_get(port, f"req-{n}")
            ws, _ = await session_with_a_turn(port)
            await ws.send('{"type":"end_session"}')
            assert (await recv_json(ws))["type"] == "session_ended"
            await ws.close()
        if collector == "refusing":
            await eventually(lambda: receiver.refused, within=10)
        # Still serving, and stopped cleanly whatever the exporter is doing.
        await proxied_get(port, "req-last")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert receiver.spans == []
    assert len(backend.ended) == 3

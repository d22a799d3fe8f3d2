"""The tracing adapter: the OTEL_* rule, W3C traceparent, and spans with their parents."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags

from kalami_gateway.adapters.tracing import (
    OtelSpan,
    OtelTracing,
    TracingConfigError,
    exporter_from,
    format_traceparent,
    parse_traceparent,
    traceparent_of,
    tracer_provider,
    tracing_enabled,
)


def in_memory() -> tuple[OtelTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracing(provider), exporter


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_tracing_is_off_unless_the_otel_variables_turn_it_on(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing_enabled(environ) is on
    if not on:  # (when on, the provider would start a real exporter's batch thread)
        assert tracer_provider(environ) is None


def test_an_exporter_the_gateway_does_not_ship_is_refused() -> None:
    with pytest.raises(TracingConfigError, match="jaeger"):
        exporter_from({"OTEL_TRACES_EXPORTER": "jaeger"})


def test_otlp_is_the_default_exporter() -> None:
    exporter = exporter_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert type(exporter).__name__ == "OTLPSpanExporter"
    exporter.shutdown()


def test_a_traceparent_round_trips() -> None:
    context = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1)
    )
    value = format_traceparent(context)
    assert value == b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parsed = parse_traceparent(value)
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id, parsed.trace_flags, parsed.is_remote) == (
        context.trace_id,
        context.span_id,
        1,
        True,
    )


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # 00 has 4 fields
        b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
    ],
)
def test_a_malformed_traceparent_is_not_continued(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    parsed = parse_traceparent(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more")
    assert parsed is not None
    assert parsed.span_id == 0xB7AD6B7169203331


def test_spans_are_children_of_their_parent_and_of_the_current_span() -> None:
    tracing, exporter = in_memory()
    session = tracing.start("session", owner="c1", attributes={"kalami.connection_id": "c1"})
    turn = tracing.start("turn", parent=session)
    with tracing.current(turn):
        call = tracing.client_span("backend POST", {"url.path": "/x"})
        header = traceparent_of(call)
        call.end()
    turn.end()
    session.end()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"session", "turn", "backend POST"}
    trace_id = spans["session"].context.trace_id
    assert {span.context.trace_id for span in spans.values()} == {trace_id}
    assert spans["turn"].parent is not None
    assert spans["turn"].parent.span_id == spans["session"].context.span_id
    assert spans["backend POST"].parent is not None
    assert spans["backend POST"].parent.span_id == spans["turn"].context.span_id
    assert header == format_traceparent(spans["backend POST"].context)
    assert spans["session"].attributes == {"kalami.connection_id": "c1"}


def test_owned_spans_are_found_taken_and_ended_with_their_owner() -> None:
    tracing, exporter = in_memory()
    session = tracing.start("session", owner="c1")
    upload = tracing.start("turn.upload", owner="c1")
    assert tracing.owned("c1", "session") is session
    assert tracing.take("c1", "turn.upload") is upload
    assert tracing.owned("c1", "turn.upload") is None
    tracing.release("c1")  # the connection is over: the session's span ends with it
    assert [span.name for span in exporter.get_finished_spans()] == ["session"]
    assert tracing.owned("c1", "session") is None
    upload.end()
    upload.end()  # a second end changes nothing
    assert [span.name for span in exporter.get_finished_spans()] == ["session", "turn.upload"]


def test_an_ended_owned_span_leaves_its_owners_file() -> None:
    tracing, exporter = in_memory()
    span = tracing.start("session", owner="c1")
    assert isinstance(span, OtelSpan)
    span.fail("timeout")
    span.end()
    assert tracing.owned("c1", "session") is None
    (finished,) = exporter.get_finished_spans()
    assert finished.status.description == "timeout"


def test_an_ended_span_is_changed_by_nothing_asked_of_it_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracing, exporter = in_memory()
    span = tracing.start("turn")
    span.set_attribute("kalami.turn.outcome", "ok")
    span.end()
    span.set_attribute("kalami.turn.outcome", "cancelled")  # a cancellation seen late
    span.fail("cancelled")
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert finished.attributes == {"kalami.turn.outcome": "ok"}
    assert finished.status.description is None
    assert caplog.records == []  # not asked of the SDK (which warns of each, in the log)


def test_a_request_continues_a_trusted_peers_traceparent_only() -> None:
    tracing, exporter = in_memory()
    incoming = [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    tracing.server_span("proxy GET", incoming, True, {}).end()
    tracing.server_span("proxy GET", incoming, False, {}).end()
    trusted, untrusted = exporter.get_finished_spans()
    assert trusted.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert trusted.parent is not None
    assert trusted.parent.span_id == 0xB7AD6B7169203331
    assert untrusted.context.trace_id != 0x0AF7651916CD43DD8448EB211C80319C
    assert untrusted.parent is None


def test_the_service_name_defaults_to_the_gateways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = tracer_provider({}, InMemorySpanExporter())
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "kalami-gateway"
    provider.shutdown()

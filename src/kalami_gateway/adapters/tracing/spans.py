"""The gateway's spans on OpenTelemetry's SDK: ``OtelTracing`` is the domain's ``Tracing`` port
(sessions and turns) and what the adapters call for theirs (a proxied request, a backend call,
a WebSocket connection).

Made only when tracing is on: with it off the container hands every user ``None``, and each
checks that once per request, connection, session or turn, never per frame.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode

from kalami_gateway.adapters.tracing.traceparent import (
    HEADER,
    format_traceparent,
    parse_traceparent,
)
from kalami_gateway.domain.ports import TraceSpan, TraceValue, Tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# The attribute every span of a request or connection carries: the X-Request-ID the edge set.
REQUEST_ID: Final = "kalami.request_id"
CONNECTION_ID: Final = "kalami.connection_id"
SESSION_ID: Final = "kalami.session_id"


class OtelSpan(TraceSpan):
    """An SDK span as the port's ``TraceSpan``; ended once, then forgotten by its owner, and
    unchanged by anything asked of it after (a turn's cancellation may be seen twice)."""

    __slots__ = ("_owner", "_tracing", "span")

    def __init__(self, span: Span, tracing: OtelTracing | None, owner: str | None) -> None:
        self.span = span
        self._tracing = tracing
        self._owner = owner

    def disown(self) -> None:
        """No longer filed under its owner (``OtelTracing.take``)."""
        self._owner = None

    def set_attribute(self, key: str, value: TraceValue) -> None:
        if self.span.is_recording():  # once ended, nothing changes (the SDK would warn)
            self.span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        if self.span.is_recording():
            self.span.set_status(Status(StatusCode.ERROR, description))

    def end(self) -> None:
        if not self.span.is_recording():
            return
        self.span.end()
        if self._tracing is not None and self._owner is not None:
            self._tracing.forget(self._owner, self)


class OtelTracing(Tracing):
    """Spans from one tracer of the gateway's own provider (``setup.tracer_provider``)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("kalami_gateway")
        # The open spans filed under a connection id, by name (its session's, while open).
        self._owned: dict[str, dict[str, OtelSpan]] = {}

    def now(self) -> int:
        return time.time_ns()

    def start(
        self,
        name: str,
        *,
        parent: TraceSpan | None = None,
        owner: str | None = None,
        start_time: int | None = None,
        attributes: Mapping[str, TraceValue] | None = None,
    ) -> TraceSpan:
        context = trace.set_span_in_context(parent.span) if isinstance(parent, OtelSpan) else None
        span = self._tracer.start_span(name, context, attributes=attributes, start_time=start_time)
        wrapped = OtelSpan(span, self, owner)
        if owner is not None:
            self._owned.setdefault(owner, {})[name] = wrapped
        return wrapped

    def owned(self, owner: str, name: str) -> TraceSpan | None:
        return self._owned.get(owner, {}).get(name)

    def take(self, owner: str, name: str) -> TraceSpan | None:
        span = self._owned.get(owner, {}).get(name)
        if span is not None:
            self.forget(owner, span)
            span.disown()
        return span

    def forget(self, owner: str, span: OtelSpan) -> None:
        spans = self._owned.get(owner)
        if spans is None:
            return
        for name, held in list(spans.items()):
            if held is span:
                del spans[name]
        if not spans:
            del self._owned[owner]

    def release(self, owner: str) -> None:
        """End whatever ``owner`` (a connection that is over) still holds open."""
        for span in list(self._owned.pop(owner, {}).values()):
            span.end()

    @contextlib.contextmanager
    def current(self, span: TraceSpan) -> Iterator[None]:
        if not isinstance(span, OtelSpan):
            yield
            return
        token = otel_context.attach(trace.set_span_in_context(span.span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def connection_span(self, attributes: Mapping[str, TraceValue]) -> Span:
        """A WebSocket connection's span (a new trace: a browser sends no traceparent)."""
        return self._tracer.start_span("ws connection", kind=SpanKind.SERVER, attributes=attributes)

    def server_span(
        self,
        name: str,
        headers: Iterable[tuple[bytes, bytes]],
        trusted: bool,
        attributes: Mapping[str, TraceValue],
    ) -> Span:
        """A proxied request's span: the incoming traceparent's child when the peer is in
        TRUSTED_PROXIES, else the root of a new trace (a client's claim is not believed)."""
        context = None
        if trusted:
            for header, value in headers:
                if header == HEADER:
                    remote = parse_traceparent(value)
                    if remote is not None:
                        context = trace.set_span_in_context(NonRecordingSpan(remote))
                    break
        return self._tracer.start_span(name, context, kind=SpanKind.SERVER, attributes=attributes)

    def client_span(self, name: str, attributes: Mapping[str, TraceValue]) -> Span:
        """A call to the backend: a child of the current span (a turn's, a session's)."""
        return self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    def shutdown(self) -> None:
        """Export what is still batched, then stop (the app's shutdown)."""
        self.provider.shutdown()


def traceparent_of(span: Span) -> bytes:
    """The traceparent that makes the backend's spans children of ``span``."""
    return format_traceparent(span.get_span_context())

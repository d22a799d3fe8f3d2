"""A proxied request traced (issue 25): the request as a span of its own (``traced``), and
the headers the backend is sent carrying that span's traceparent (``with_traceparent``).
Used only with tracing on: with it off the relay never calls either."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from opentelemetry.trace import Span, Status, StatusCode

from kalami_gateway.adapters.asgi import Message, Receive, Scope, Send
from kalami_gateway.adapters.http.checks import TrustedPeers
from kalami_gateway.adapters.tracing import (
    HEADER as TRACEPARENT,
)
from kalami_gateway.adapters.tracing import (
    REQUEST_ID,
    STATE_HEADER,
    OtelTracing,
    traceparent_of,
)

# The relay's forwarding of one request, under the span given.
Forward = Callable[[Scope, Receive, Send, str, Span], Awaitable[None]]


async def traced(
    forward: Forward,
    scope: Scope,
    receive: Receive,
    send: Send,
    request_id: str,
    tracing: OtelTracing,
    trusted: TrustedPeers,
) -> None:
    """The request as a span: named by its method, with the request id and the status
    sent (a 5xx, or none sent at all, marks it failed); the incoming traceparent continued
    only from a peer in ``trusted``."""
    client = scope.get("client")
    method: str = scope["method"]
    span = tracing.server_span(
        f"proxy {method}",
        scope["headers"],
        client is not None and client[0] in trusted,
        {
            REQUEST_ID: request_id,
            "http.request.method": method,
            "url.path": scope["path"],
        },
    )
    status = 0

    async def send_seen(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    try:
        await forward(scope, receive, send_seen, request_id, span)
    finally:
        if status:
            span.set_attribute("http.response.status_code", status)
        if status >= 500 or not status:
            span.set_status(Status(StatusCode.ERROR, str(status or "no response")))
        span.end()


def with_traceparent(
    headers: list[tuple[bytes, bytes]], span: Span, trusted: bool
) -> list[tuple[bytes, bytes]]:
    """The client's headers with its traceparent replaced by ``span``'s, and its tracestate
    kept only from a trusted peer (it belongs to the trace that peer's traceparent continued)."""
    dropped = (TRACEPARENT,) if trusted else (TRACEPARENT, STATE_HEADER)
    kept = [header for header in headers if header[0] not in dropped]
    kept.append((TRACEPARENT, traceparent_of(span)))
    return kept

"""Traces with OpenTelemetry, off unless the standard ``OTEL_*`` variables turn them on
(``setup.py`` states the rule): ``OtelTracing`` (``spans.py``) is the domain's ``Tracing`` port
for sessions and turns and makes the adapters' own spans (a proxied request, a backend call, a
WebSocket connection); ``traceparent.py`` reads and writes W3C's ``traceparent``, sent to the
backend on every traced call and continued on ``/api`` only from a peer in TRUSTED_PROXIES."""

from kalami_gateway.adapters.tracing.setup import (
    DEFAULT_SERVICE_NAME,
    TracingConfigError,
    exporter_from,
    tracer_provider,
    tracing_enabled,
)
from kalami_gateway.adapters.tracing.spans import (
    CONNECTION_ID,
    REQUEST_ID,
    SESSION_ID,
    OtelSpan,
    OtelTracing,
    traceparent_of,
)
from kalami_gateway.adapters.tracing.traceparent import (
    HEADER,
    STATE_HEADER,
    format_traceparent,
    parse_traceparent,
)

__all__ = [
    "CONNECTION_ID",
    "DEFAULT_SERVICE_NAME",
    "HEADER",
    "REQUEST_ID",
    "SESSION_ID",
    "STATE_HEADER",
    "OtelSpan",
    "OtelTracing",
    "TracingConfigError",
    "exporter_from",
    "format_traceparent",
    "parse_traceparent",
    "traceparent_of",
    "tracer_provider",
    "tracing_enabled",
]

"""Whether tracing is on, and its tracer provider, from the standard ``OTEL_*`` variables.

The rule: tracing is off unless one of ``OTEL_TRACES_EXPORTER`` (not ``none``),
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (non-empty);
``OTEL_SDK_DISABLED=true`` turns it off whatever else says. When on, the SDK reads the rest
itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (the service name defaults to
``kalami-gateway``), ``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_BSP_*`` (the batching), and the
OTLP exporter's ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout, compression). Exporters:
``otlp`` (the default; OTLP over HTTP/protobuf, to ``http://localhost:4318/v1/traces`` unless
an endpoint says otherwise) and ``console``; another name is refused at start.

The provider is the gateway's own, not the global one: nothing else in the process (a
library's instrumentation) starts exporting because the gateway traces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # the SDK is imported only when tracing is on (~40 ms and its memory, per
    # worker, at every start otherwise)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

DEFAULT_SERVICE_NAME: Final = "kalami-gateway"
_TURNS_ON: Final = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


class TracingConfigError(ValueError):
    """OTEL_TRACES_EXPORTER names an exporter the gateway does not ship."""


def tracing_enabled(environ: Mapping[str, str]) -> bool:
    """The rule above, on ``environ`` (``os.environ`` in the app)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name, "").strip() for name in _TURNS_ON)


def exporter_from(environ: Mapping[str, str]) -> SpanExporter:
    """The exporter OTEL_TRACES_EXPORTER names (otlp when only an endpoint is set)."""
    name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if name == "otlp":
        # Imported only when used: requests and protobuf cost nothing with tracing off.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()  # the endpoint and the rest: from OTEL_EXPORTER_OTLP_*
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise TracingConfigError(f"OTEL_TRACES_EXPORTER={name!r}: the gateway exports otlp or console")


def tracer_provider(
    environ: Mapping[str, str], exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """The provider when tracing is on (None: off); ``exporter`` replaces the configured one
    (tests hand the SDK's in-memory exporter). Spans leave in batches (``OTEL_BSP_*``), never
    on the request's path; at shutdown the last batch gets at most ``FINAL_EXPORT_SECONDS``
    (``final_export.py``)."""
    if exporter is None and not tracing_enabled(environ):
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    from kalami_gateway.adapters.tracing.final_export import BoundedBatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BoundedBatchSpanProcessor(exporter or exporter_from(environ)))
    return provider

"""The last export at shutdown: everything batched is sent to a collector that takes it; one
that never does (its retries backing off) is cut short, so the shutdown returns."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kalami_gateway.adapters.tracing.final_export import BoundedBatchSpanProcessor


class RetryingExporter(SpanExporter):
    """An exporter whose collector never answers: each export backs off until shut down
    (what the OTLP exporter does against a 503 or an absent collector)."""

    def __init__(self) -> None:
        self.shut = threading.Event()
        self.attempted: list[str] = []
        self.shutdowns = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.attempted += [span.name for span in spans]
        self.shut.wait()  # the backoff, woken only by shutdown
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.shut.set()


def provider_on(processor: BoundedBatchSpanProcessor) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider


def test_a_collector_that_takes_the_batch_gets_everything_at_shutdown() -> None:
    exporter = InMemorySpanExporter()
    provider = provider_on(BoundedBatchSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for name in ("a", "b", "c"):
        tracer.start_span(name).end()
    provider.shutdown()
    assert sorted(span.name for span in exporter.get_finished_spans()) == ["a", "b", "c"]


def test_a_collector_that_never_takes_it_is_cut_short_and_the_shutdown_returns() -> None:
    exporter = RetryingExporter()
    provider = provider_on(BoundedBatchSpanProcessor(exporter, final_export=0.05))
    provider.get_tracer("test").start_span("last").end()
    provider.shutdown()  # without the bound: never returns
    assert exporter.attempted == ["last"]
    assert exporter.shutdowns == 1  # the cut, and the processor's own ask changed nothing

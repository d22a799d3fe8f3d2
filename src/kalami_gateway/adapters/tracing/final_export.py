"""The batch span processor with a bounded last export: at shutdown, what is still batched
is sent, but for at most ``FINAL_EXPORT_SECONDS``; past that the exporter is shut down, which
cuts its retries short, and what the collector did not take is dropped.

Why: the OTLP exporter retries a collector that refuses (429, 502-504) or is away with
backoff until its own deadline (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s), and the SDK's shutdown
waits for a batch in flight and then exports the rest the same way: measured, a SIGTERMed
gateway whose collector answered 503 or was down took 14 s to exit after its drain, eating the
process manager's stop budget (2 x SHUTDOWN_TIMEOUT + 5 s). A collector that answers takes the
last batch in milliseconds.

Imported only when tracing is on (it imports the SDK)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

# Within the 5 s the process manager's stop timeout leaves beyond the drain and uvicorn's own.
FINAL_EXPORT_SECONDS: Final = 3.0
# After the cut, how long the export thread is given to end (a request to a collector that
# accepted the connection but never answers runs on: a daemon thread, it does not hold the exit).
_AFTER_CUT_SECONDS: Final = 0.5


class _ShutOnce(SpanExporter):
    """The exporter, shut down by whichever asks first (the processor's own shutdown, or the
    bound cutting it short); a second ask changes nothing."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self._lock = threading.Lock()
        self._shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut:
            return SpanExportResult.FAILURE
        return self._exporter.export(spans)

    def shutdown(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class BoundedBatchSpanProcessor(BatchSpanProcessor):
    """``BatchSpanProcessor`` (batching from ``OTEL_BSP_*``) whose shutdown returns within
    ``final_export`` seconds and half a second."""

    def __init__(self, exporter: SpanExporter, final_export: float = FINAL_EXPORT_SECONDS) -> None:
        self._shut_once = _ShutOnce(exporter)
        self._final_export = final_export
        super().__init__(self._shut_once)

    def shutdown(self) -> None:
        stopping = threading.Thread(
            target=super().shutdown, name="kalami-otel-final-export", daemon=True
        )
        stopping.start()
        stopping.join(self._final_export)
        if stopping.is_alive():
            self._shut_once.shutdown()  # wakes a retry's backoff; later exports fail at once
            stopping.join(_AFTER_CUT_SECONDS)

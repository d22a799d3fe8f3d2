"""A real OTLP/HTTP trace receiver for the tests: ``POST /v1/traces`` with a protobuf
``ExportTraceServiceRequest`` (plain, gzip or deflate), decoded with opentelemetry-proto and
answered as a collector answers (200 and an empty ``ExportTraceServiceResponse``), or with the
status the test sets (a collector that is overloaded: 503). What it decoded is kept, span by
span, with the resource each came under."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # no types-protobuf in the dev set
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

PROTOBUF = "application/x-protobuf"
# OTLP's span kinds and status codes, as the wire numbers them.
KIND_SERVER = Span.SPAN_KIND_SERVER
KIND_CLIENT = Span.SPAN_KIND_CLIENT
KIND_INTERNAL = Span.SPAN_KIND_INTERNAL
STATUS_UNSET = Status.STATUS_CODE_UNSET
STATUS_ERROR = Status.STATUS_CODE_ERROR

Value = str | bool | int | float | bytes | list["Value"] | dict[str, "Value"] | None


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the exporter sent it, its ids as integers (as the SDK and traceparent
    parsing hold them)."""

    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    kind: int
    attributes: dict[str, Value]
    status_code: int
    status_message: str
    resource: dict[str, Value]
    scope: str
    start_ns: int
    end_ns: int


@dataclass
class OtlpReceiver:
    """``status``: what every export is answered with (200: accepted). ``exports``: the
    requests answered 200; ``refused``: the others; ``malformed``: bodies that did not
    decode (answered 400)."""

    status: int = 200
    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0
    refused: int = 0
    malformed: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415)
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            export = ExportTraceServiceRequest.FromString(body)
        except (DecodeError, OSError, zlib.error):
            self.malformed += 1
            return web.Response(status=400)
        if self.status != 200:
            self.refused += 1
            return web.Response(status=self.status)
        self.exports += 1
        self.spans += decoded(export)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF
        )


def decoded(export: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in export.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=int.from_bytes(span.trace_id, "big"),
                        span_id=int.from_bytes(span.span_id, "big"),
                        parent_span_id=(
                            int.from_bytes(span.parent_span_id, "big")
                            if span.parent_span_id
                            else None
                        ),
                        kind=span.kind,
                        attributes=attributes_of(span.attributes),
                        status_code=span.status.code,
                        status_message=span.status.message,
                        resource=resource,
                        scope=scope_spans.scope.name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return spans


def attributes_of(pairs: Iterable[KeyValue]) -> dict[str, Value]:
    return {pair.key: value_of(pair.value) for pair in pairs}


def value_of(value: AnyValue) -> Value:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    held: Value = getattr(value, kind)
    return held

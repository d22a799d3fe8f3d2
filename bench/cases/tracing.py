"""The cost of tracing (issue 25): ``wrk`` on the ``/api`` GET through three gateways — tracing
off (the default), tracing on with every request sampled (``always_on``, the worst case) and
on with one request in ten (``parentbased_traceidratio`` 0.1, what a busy deployment runs) —
the traced ones exporting over OTLP/HTTP to a local sink that takes and discards each batch
(``OtlpSink``: the collector's cost is not the gateway's). They are measured in turn, twice
round, and each figure is the mean of its two runs. After the runs the traced gateways are
stopped (their last batches flushed) and the sink says how many spans arrived per proxied
request (1.0 and 0.1: none dropped by the SDK's queue).

Alone (it starts its own nginx backend stand-in):
``.venv/bin/python -c "from bench.cases.tracing import main; main()" [--smoke]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from statistics import mean

from bench import wrk
from bench.report import Row, table
from bench.sizes import FULL, SMOKE, Sizes
from bench.targets import (
    GatewayProcess,
    LocalServer,
    Nginx,
    cpu_seconds,
    ensure_tools,
    wait_for_http,
)

PATH = "/api/users/me"
ROUNDS = 2


@dataclass
class OtlpSink(LocalServer):
    """A collector stand-in in a process of its own: 200 and an empty body (an empty
    ExportTraceServiceResponse) to every POST; the bodies kept, undecoded, until ``GET
    /stats`` decodes them and counts the spans (after the measuring, so it costs nothing
    then)."""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SINK_MAIN, str(self.port)], stdout=subprocess.DEVNULL
        )
        wait_for_http(f"{self.http}/stats")

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.http}/stats", timeout=60) as answer:  # noqa: S310  # loopback
            counts: dict[str, int] = json.load(answer)
            return counts


_SINK_MAIN = "import sys; from bench.cases.tracing import run_sink; run_sink(int(sys.argv[1]))"


@dataclass
class _Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    sent: int  # every /api request, the warm-up's too


@dataclass
class _Mode:
    key: str
    label: str
    env: dict[str, str]
    runs: list[_Run] = field(default_factory=list)


def _measure(gateway: GatewayProcess, sizes: Sizes) -> _Run:
    url = f"{gateway.http}{PATH}"
    warm_up = wrk.run(url, sizes.wrk_connections, 1)  # the upstream pool's connections open
    cpu_before = cpu_seconds(gateway.pid)
    run = wrk.run(url, sizes.wrk_connections, sizes.wrk_seconds)
    if run.errors or warm_up.errors:
        raise RuntimeError(f"proxy GET with tracing: {run.errors + warm_up.errors} errors")
    cpu_us = (cpu_seconds(gateway.pid) - cpu_before) / max(1, run.requests) * 1e6
    sent = warm_up.requests + run.requests
    return _Run(run.requests_per_second, run.p50_ms, run.p99_ms, cpu_us, sent)


def case_tracing(backend_url: str, sizes: Sizes) -> list[Row]:
    exported = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_SERVICE_NAME": "kalami-gateway-bench"}
    modes = [
        _Mode("off", "tracing off", {"OTEL_SDK_DISABLED": "true"}),
        _Mode("on", "tracing on, every request", {"OTEL_TRACES_SAMPLER": "always_on"}),
        _Mode(
            "sampled",
            "tracing on, 1 in 10",
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
        ),
    ]
    sinks = {mode.key: OtlpSink() for mode in modes if mode.key != "off"}
    gateways = {}
    for mode in modes:
        env = dict(mode.env)
        if mode.key in sinks:
            env |= exported | {"OTEL_EXPORTER_OTLP_ENDPOINT": sinks[mode.key].http}
        gateways[mode.key] = GatewayProcess(backend_url=backend_url, extra_env=env)
    spans: dict[str, int] = {}
    try:
        for sink in sinks.values():
            sink.start()
        for gateway in gateways.values():
            gateway.start()
        for _ in range(ROUNDS):
            for mode in modes:
                mode.runs.append(_measure(gateways[mode.key], sizes))
        for key, sink in sinks.items():
            gateways[key].stop()  # SIGTERM: what is still batched is exported before it exits
            spans[key] = sink.stats()["spans"]
    finally:
        for gateway in gateways.values():
            gateway.stop()
        for sink in sinks.values():
            sink.stop()
    rows = []
    for mode in modes:
        runs = mode.runs
        rows += [
            Row(
                f"proxy GET, {mode.label}, -c{sizes.wrk_connections}",
                f"tracing_{mode.key}_proxy_get_rps",
                mean(run.rps for run in runs),
                unit="req/s",
            ),
            Row(
                f"proxy GET p50, {mode.label}",
                f"tracing_{mode.key}_proxy_get_p50_ms",
                mean(run.p50_ms for run in runs),
                unit="ms",
            ),
            Row(
                f"proxy GET p99, {mode.label}",
                f"tracing_{mode.key}_proxy_get_p99_ms",
                mean(run.p99_ms for run in runs),
                unit="ms",
            ),
            Row(
                f"gateway CPU per proxied GET, {mode.label}",
                f"tracing_{mode.key}_proxy_get_cpu_us",
                mean(run.cpu_us for run in runs),
                unit="µs",
            ),
        ]
        if mode.key in spans:  # every /api request the gateway served is one span, if sampled
            rows.append(
                Row(
                    f"spans exported per proxied GET, {mode.label}",
                    f"tracing_{mode.key}_spans_per_request",
                    spans[mode.key] / max(1, sum(run.sent for run in runs)),
                )
            )
    return rows


# The sink: plain asyncio, HTTP/1.1 keep-alive, Content-Length bodies (what the exporter's
# requests session sends).


class _SinkState:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.posts = 0
        self.bytes = 0

    def stats(self) -> bytes:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        spans = 0
        for body in self.bodies:
            export = ExportTraceServiceRequest.FromString(body)
            spans += sum(
                len(scope.spans)
                for resource in export.resource_spans
                for scope in resource.scope_spans
            )
        return json.dumps({"posts": self.posts, "bytes": self.bytes, "spans": spans}).encode()


async def _serve_sink(port: int) -> None:
    state = _SinkState()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                answer = b""
                if method == "POST":
                    state.posts += 1
                    state.bytes += len(body)
                    state.bodies.append(body)
                elif target == "/stats":
                    answer = state.stats()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def run_sink(port: int) -> None:
    """The sink's process (``OtlpSink`` starts it)."""
    asyncio.run(_serve_sink(port))


def main(argv: list[str] | None = None) -> int:
    """This case alone, against an nginx backend stand-in of its own; its table printed."""
    parser = argparse.ArgumentParser(prog="bench.cases.tracing", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny counts")
    args = parser.parse_args(argv)
    ensure_tools()
    nginx = Nginx()
    try:
        nginx.start()
        rows = case_tracing(f"http://127.0.0.1:{nginx.backend_port}", SMOKE if args.smoke else FULL)
    finally:
        nginx.stop()
    print(table(rows, judged=False))
    return 0

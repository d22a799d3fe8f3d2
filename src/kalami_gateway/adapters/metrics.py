"""Prometheus metrics (prometheus-client), every name prefixed ``kalami_``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kalami_gateway.domain.instance import InstanceConnections
from kalami_gateway.domain.ports import BackendErrorKind, DirectoryCounts, Metrics

# Litestar appends "; charset=utf-8" to a text/* media type itself: naming it here too
# sent it twice.
CONTENT_TYPE: Final = "text/plain; version=0.0.4"
_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
_TURN_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60)


class _InstanceCollector(Collector):
    """Reads this instance's connections at scrape time, so the gauges can never drift."""

    def __init__(self, connections: InstanceConnections) -> None:
        self._connections = connections

    def collect(self) -> Iterator[Metric]:
        stats = self._connections.stats()
        yield GaugeMetricFamily(
            "kalami_websocket_connections", "Open WebSocket connections.", value=stats.connections
        )
        yield GaugeMetricFamily(
            "kalami_websocket_users", "Distinct users with an open connection.", value=stats.users
        )
        yield CounterMetricFamily(
            "kalami_websocket_connections_accepted",
            "Authenticated WebSocket connections accepted since start.",
            value=stats.accepted_total,
        )


class _MessageTallies(Collector):
    """The counters bumped on every WebSocket message, as plain integers read at scrape
    time: a prometheus-client Counter takes a lock on every increment, 1.4 µs of a ~32 µs
    audio frame and 0.75 µs of a ping here (bench/README.md, "What one ping costs"). Only
    the event loop's thread increments them."""

    def __init__(self) -> None:
        self.messages: dict[str, int] = {}
        self.audio_bytes = 0

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "kalami_websocket_messages", "WebSocket messages received by type.", labels=["type"]
        )
        for message_type, count in sorted(self.messages.items()):
            messages.add_metric([message_type], count)
        yield messages
        yield CounterMetricFamily(
            "kalami_audio_received_bytes",
            "Bytes of utterance audio received.",
            value=self.audio_bytes,
        )


class PrometheusMetrics(Metrics):
    """The gateway's metrics in their own registry (one per app, so tests do not share)."""

    def __init__(self, connections: InstanceConnections) -> None:
        # The *_created series double the exposition for nothing a dashboard uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._http = Counter(
            "kalami_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self._proxy_latency = Histogram(
            "kalami_proxy_request_duration_seconds",
            "Time from request to upstream response headers on /api.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._backend_errors = Counter(
            "kalami_backend_errors", "Failed backend calls by kind.", ["kind"], registry=r
        )
        self._tallies = _MessageTallies()
        r.register(self._tallies)
        self._closed = Counter(
            "kalami_websocket_closed",
            "WebSocket connections closed, by reason.",
            ["reason"],
            registry=r,
        )
        self._turns = Counter(
            "kalami_voice_turns", "Voice turns by outcome.", ["outcome"], registry=r
        )
        self._turn_latency = Histogram(
            "kalami_voice_turn_duration_seconds",
            "Time the backend took for one voice turn.",
            buckets=_TURN_BUCKETS,
            registry=r,
        )
        r.register(_InstanceCollector(connections))
        self._cleanup = Counter(
            "kalami_backend_session_cleanup",
            "Background end calls for sessions no client owns: retry (an attempt), ended, "
            "gave_up (the retry window ran out).",
            ["outcome"],
            registry=r,
        )
        self._parking = Counter(
            "kalami_resumable_sessions",
            "Resumable sessions by event: parked (its connection went away), resumed, expired "
            "(ended after the grace, counted by the instance that ended it).",
            ["event"],
            registry=r,
        )
        self._cluster_instances = Gauge(
            "kalami_cluster_instances", "Live gateway instances in the cluster.", registry=r
        )
        self._cluster_connections = Gauge(
            "kalami_cluster_connections",
            "Open WebSocket connections across the cluster.",
            registry=r,
        )
        self._cluster_users = Gauge(
            "kalami_cluster_users",
            "Distinct users with an open connection across the cluster.",
            registry=r,
        )
        self._http_children: dict[tuple[str, int], Counter] = {}

    def http_request(self, route: str, status: int) -> None:
        # labels() builds a key and takes a lock on every call; the children are cached here.
        key = (route, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self._http.labels(route, str(status))
        child.inc()

    def proxy_latency(self, seconds: float) -> None:
        self._proxy_latency.observe(seconds)

    def message_received(self, message_type: str) -> None:
        tallies = self._tallies.messages
        tallies[message_type] = tallies.get(message_type, 0) + 1

    def audio_received(self, size: int) -> None:
        self._tallies.audio_bytes += size

    def turn_finished(self, outcome: str, seconds: float) -> None:
        self._turns.labels(outcome).inc()
        self._turn_latency.observe(seconds)

    def backend_error(self, kind: BackendErrorKind) -> None:
        self._backend_errors.labels(kind.value).inc()

    def connection_closed(self, reason: str) -> None:
        self._closed.labels(reason).inc()

    def session_cleanup(self, outcome: str) -> None:
        self._cleanup.labels(outcome).inc()

    def session_parking(self, event: str) -> None:
        self._parking.labels(event).inc()

    def cluster(self, counts: DirectoryCounts) -> None:
        """The cluster figures, read from the directory just before a scrape."""
        self._cluster_instances.set(counts.instances)
        self._cluster_connections.set(counts.connections)
        self._cluster_users.set(counts.users)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""``PrometheusMetrics``: the Metrics port on prometheus-client, and ``GET /metrics``' text.

One exposition under any process layout. One process keeps its metrics in a registry of its
own (one per app, so tests do not share) and reads its tallies and connections at scrape time
(``tallies.py``). The workers of ``serve --workers N`` share a directory
(``PROMETHEUS_MULTIPROC_DIR``; ``shared.py``), so whichever answers a scrape answers for the
whole group, counters monotonic across scrapes whoever answers. Either way the names, labels
and types are the same, with the ``process_*`` figures of each serving process and
``kalami_build_info`` beside them (``processes.py``), and each one's sockets against its
connection ceiling (``process_load.py``; also what ``/stats`` lists: ``serving_processes``).
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics, generate_latest

from kalami_gateway.adapters.capacity import SocketCapacity
from kalami_gateway.adapters.clock import run_every
from kalami_gateway.adapters.metrics.families import (
    BACKEND_ERRORS,
    CLEANUP,
    CLOSED,
    CLUSTER_CONNECTIONS,
    CLUSTER_INSTANCES,
    CLUSTER_REACHABLE,
    CLUSTER_USERS,
    LATENCY_BUCKETS,
    PARKING,
    PROXY_LATENCY,
    TURN_BUCKETS,
    TURN_LATENCY,
    TURNS,
    Family,
    counter,
    histogram,
)
from kalami_gateway.adapters.metrics.process_load import (
    LoadCollector,
    ProcessLoad,
    ServingProcess,
    SharedLoad,
    load_of,
    loads_in,
)
from kalami_gateway.adapters.metrics.processes import BuildInfo, ProcessFigures, open_files
from kalami_gateway.adapters.metrics.shared import (
    FLUSH_SECONDS,
    SharedFigures,
    shared_directory,
    shared_registry,
    worker_pids,
)
from kalami_gateway.adapters.metrics.tallies import InstanceCollector, Tallies, TallyCollector
from kalami_gateway.domain.instance import InstanceConnections
from kalami_gateway.domain.ports import BackendErrorKind, DirectoryCounts, Metrics

# Litestar appends "; charset=utf-8" to a text/* media type itself: naming it here too
# sent it twice.
CONTENT_TYPE: Final = "text/plain; version=0.0.4"


def _cluster_gauge(family: Family, registry: CollectorRegistry | None) -> Gauge:
    # Set by the process answering a scrape just before it renders; shared, the most recent
    # setting is the group's figure (and a dead worker's is dropped with it).
    return Gauge(family.name, family.help, multiprocess_mode="livemostrecent", registry=registry)


class PrometheusMetrics(Metrics):
    """The gateway's metrics, in this process's registry or the workers' shared directory."""

    def __init__(
        self,
        connections: InstanceConnections,
        capacity: SocketCapacity,
        *,
        pid: int | None = None,
    ) -> None:
        """``pid``: the process these figures are of, when not this one (tests that play
        several workers in one process)."""
        # The *_created series double the exposition for nothing a dashboard uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self._tallies = Tallies()
        self._connections = connections
        self._capacity = capacity
        self._pid = pid
        directory = self.shared_dir = shared_directory()
        own = CollectorRegistry(auto_describe=True)
        # Shared, every metric lives in this process's files and the registry reads the
        # group's; else the metrics are registered with this process's own.
        record_in = own if directory is None else None
        self._proxy_latency = histogram(PROXY_LATENCY, LATENCY_BUCKETS, record_in)
        self._backend_errors = counter(BACKEND_ERRORS, record_in)
        self._closed = counter(CLOSED, record_in)
        self._turns = counter(TURNS, record_in)
        self._turn_latency = histogram(TURN_LATENCY, TURN_BUCKETS, record_in)
        self._cleanup = counter(CLEANUP, record_in)
        self._parking = counter(PARKING, record_in)
        self._cluster_instances = _cluster_gauge(CLUSTER_INSTANCES, record_in)
        self._cluster_connections = _cluster_gauge(CLUSTER_CONNECTIONS, record_in)
        self._cluster_users = _cluster_gauge(CLUSTER_USERS, record_in)
        self._cluster_reachable = _cluster_gauge(CLUSTER_REACHABLE, record_in)
        self._shared: tuple[SharedFigures, SharedLoad] | None = None
        if directory is None:
            own.register(TallyCollector(self._tallies))
            own.register(InstanceCollector(connections))
            own.register(LoadCollector(capacity, connections, self.pid))
            own.register(ProcessFigures(lambda: (self.pid(),)))
            self.registry = own
        else:
            self._shared = (
                SharedFigures(self._tallies, connections),
                SharedLoad(capacity, connections, self.pid),
            )
            self.registry = shared_registry(directory)
            self.registry.register(ProcessFigures(lambda: worker_pids(directory) | {self.pid()}))
        self.registry.register(BuildInfo())

    def http_request(self, route: str, status: int) -> None:
        key = (route, status)
        tallies = self._tallies.http
        tallies[key] = tallies.get(key, 0) + 1

    def proxy_latency(self, seconds: float) -> None:
        # A Histogram, once per /api request: 1.0 µs in one process, 2.2 µs shared (the sum
        # and a bucket written to the worker's file).
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

    def cluster(self, counts: DirectoryCounts, reachable: bool = True) -> None:
        """The cluster figures, read from the directory just before a scrape."""
        self._cluster_reachable.set(1 if reachable else 0)
        self._cluster_instances.set(counts.instances)
        self._cluster_connections.set(counts.connections)
        self._cluster_users.set(counts.users)

    def pid(self) -> int:
        """The process these figures are of."""
        return self._pid or os.getpid()

    def flush(self) -> None:
        """Shared: copy this process's tallies, connection figures and load into its files
        (else nothing to do: they are read at scrape time)."""
        if self._shared is not None:
            figures, load = self._shared
            figures.flush()
            load.flush()

    async def keep_flushed(self) -> None:
        """Shared: ``flush`` every ``FLUSH_SECONDS`` until cancelled (a failure is logged)."""

        async def flush() -> None:
            self.flush()

        await run_every(FLUSH_SECONDS, flush)

    def render(self) -> bytes:
        self.flush()  # this process's own figures as they stand
        return generate_latest(self.registry)

    def process_loads(self) -> list[ProcessLoad]:
        """Each serving process's load, by pid: this process's as it stands; shared, every
        live worker's as it last flushed (at most ``FLUSH_SECONDS`` old), this one's
        flushed first; this one's alone when the files cannot be read (a process out of file
        descriptors cannot open them: ``/stats`` still answers)."""
        own = load_of(self.pid(), self._capacity, self._connections)
        if self.shared_dir is None:
            return [own]
        self.flush()
        try:
            return loads_in(self.shared_dir)
        except OSError:
            return [own]

    def serving_processes(self) -> list[ServingProcess]:
        """``process_loads``, each with its open files against its limit (``/proc``)."""
        return [ServingProcess(load, *open_files(load.pid)) for load in self.process_loads()]

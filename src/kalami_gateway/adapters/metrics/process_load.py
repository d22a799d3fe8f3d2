"""Each serving process's sockets against its ceiling, and what was refused at the limit.

The figures an operator compares per process (the open-file limit and the ceiling are a
process's own: ``adapters/capacity.py``) and ``/stats`` lists: its client sockets, its
ceiling, its open WebSockets (their spread over a group's workers) and the handshakes it
answered 503 at the ceiling, each labelled with its pid; beside them two counters summed over
a group, the refusals by reason and the accepts that failed for lack of files by errno.

Read from ``SocketCapacity`` and the instance's connections when a scrape renders (one
process: ``LoadCollector``) or on every flush (the workers of ``serve --workers N``:
``SharedLoad``, into the worker's slot's files), never on a request's path. Shared, the
per-process gauges are *live* ones: when the supervisor marks a dead worker's slot
(``mark_process_dead``) its series leave the scrapes, and ``/stats``, at once.

Their pid label is ``worker_pid`` in the files, renamed ``pid`` as a scrape reads them
(``shared.shared_registry``): prometheus-client's merge takes ``pid`` for its own (the file's
name, here a slot) and drops every label of that name from a ``livesum`` gauge (all workers in
one series) or overwrites it with the slot (``liveall``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Final, NamedTuple

from prometheus_client import Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from kalami_gateway.adapters.capacity import SocketCapacity
from kalami_gateway.adapters.metrics.families import (
    ACCEPT_ERRNOS,
    ACCEPT_ERRORS,
    PROCESS_CEILING,
    PROCESS_CLIENT_SOCKETS,
    PROCESS_CONNECTIONS,
    PROCESS_REFUSED,
    REFUSAL_REASONS,
    REFUSED,
    Family,
    counter,
)
from kalami_gateway.domain.instance import InstanceConnections

# The per-process gauges' pid label as the workers' files hold it (see above).
PID_IN_FILES: Final = "worker_pid"


class ProcessLoad(NamedTuple):
    """One serving process's figures (``refused``: WebSocket handshakes answered 503 at its
    ceiling since it started)."""

    pid: int
    websocket_connections: int
    client_sockets: int
    ceiling: int
    refused: int


class ServingProcess(NamedTuple):
    """What ``/stats`` lists of one serving process: its load, and its open files against
    its open-file limit (from ``/proc``; None where they cannot be read)."""

    load: ProcessLoad
    open_files: int | None
    open_files_limit: int | None


# Each per-process gauge and the field of ProcessLoad it shows.
_GAUGES: Final = (
    (PROCESS_CONNECTIONS, "websocket_connections"),
    (PROCESS_CLIENT_SOCKETS, "client_sockets"),
    (PROCESS_CEILING, "ceiling"),
    (PROCESS_REFUSED, "refused"),
)


def load_of(pid: int, capacity: SocketCapacity, connections: InstanceConnections) -> ProcessLoad:
    return ProcessLoad(
        pid,
        connections.stats().connections,
        capacity.client_sockets(),
        capacity.ceiling,
        capacity.refused,
    )


def _accept_errors(capacity: SocketCapacity) -> dict[str, int]:
    return {**dict.fromkeys(ACCEPT_ERRNOS, 0), **capacity.accept_errors}


def spread(websocket_connections: Sequence[int]) -> float:
    """How far the busiest process is above the mean, in percent (0 with one process, or none
    connected)."""
    total = sum(websocket_connections)
    if len(websocket_connections) < 2 or total == 0:
        return 0.0
    mean = total / len(websocket_connections)
    return round((max(websocket_connections) / mean - 1) * 100, 1)


class LoadCollector(Collector):
    """One process: its load and refusals, read at scrape time."""

    def __init__(
        self, capacity: SocketCapacity, connections: InstanceConnections, pid: Callable[[], int]
    ) -> None:
        self._capacity = capacity
        self._connections = connections
        self._pid = pid

    def collect(self) -> Iterator[Metric]:
        load = load_of(self._pid(), self._capacity, self._connections)
        for family, field in _GAUGES:
            gauge = GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
            gauge.add_metric([str(load.pid)], getattr(load, field))
            yield gauge
        refused = CounterMetricFamily(REFUSED.name, REFUSED.help, labels=list(REFUSED.labels))
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], self._capacity.refused)
        yield refused
        errors = CounterMetricFamily(
            ACCEPT_ERRORS.name, ACCEPT_ERRORS.help, labels=list(ACCEPT_ERRORS.labels)
        )
        for name, count in sorted(_accept_errors(self._capacity).items()):
            errors.add_metric([name], count)
        yield errors


def _live_gauge(family: Family) -> Gauge:
    # Each worker writes only its own pid's series: "livesum" adds nothing to it, and drops
    # the series with the worker's slot.
    return Gauge(
        family.name,
        family.help,
        (PID_IN_FILES,),
        multiprocess_mode="livesum",
        registry=None,
    )


class SharedLoad:
    """A worker's load and refusals, copied into its files on ``flush`` (the gauges as they
    stand, the counters by their increase since the last copy)."""

    def __init__(
        self, capacity: SocketCapacity, connections: InstanceConnections, pid: Callable[[], int]
    ) -> None:
        self._capacity = capacity
        self._connections = connections
        self._pid = pid
        self._gauges = [(_live_gauge(family), field) for family, field in _GAUGES]
        self._refused = counter(REFUSED, None)
        self._accept_errors = counter(ACCEPT_ERRORS, None)
        for reason in REFUSAL_REASONS:  # each child is in the files, at 0, once made
            self._refused.labels(reason)
        for name in ACCEPT_ERRNOS:
            self._accept_errors.labels(name)
        self._copied_refused = 0
        self._copied_errors: dict[str, int] = {}

    def flush(self) -> None:
        load = load_of(self._pid(), self._capacity, self._connections)
        pid = str(load.pid)
        for gauge, field in self._gauges:
            gauge.labels(pid).set(getattr(load, field))
        if load.refused != self._copied_refused:
            self._refused.labels("ceiling").inc(load.refused - self._copied_refused)
            self._copied_refused = load.refused
        for name, count in self._capacity.accept_errors.items():
            increase = count - self._copied_errors.get(name, 0)
            if increase:
                self._accept_errors.labels(name).inc(increase)
                self._copied_errors[name] = count


def loads_in(directory: str) -> list[ProcessLoad]:
    """Every live worker's load as it last flushed, by pid (a worker that has not yet flushed
    all of its figures is left out)."""
    fields = {family.name: field for family, field in _GAUGES}
    found: dict[int, dict[str, int]] = {}
    files = glob.glob(os.path.join(directory, "gauge_live*.db"))
    for metric in MultiProcessCollector.merge(files):  # type: ignore[no-untyped-call]  # unannotated upstream
        field = fields.get(metric.name)
        if field is None:
            continue
        for sample in metric.samples:
            pid = sample.labels.get(PID_IN_FILES, "")
            if pid.isdigit():
                found.setdefault(int(pid), {})[field] = int(sample.value)
    return [
        ProcessLoad(pid=pid, **figures)
        for pid, figures in sorted(found.items())
        if len(figures) == len(fields)
    ]

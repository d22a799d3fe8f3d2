"""The workers' layout: every worker of ``serve --workers N`` answers a scrape for the group.

prometheus-client's multiprocess mode. With ``PROMETHEUS_MULTIPROC_DIR`` set before
prometheus_client is first imported (the supervisor sets it before it spawns the workers:
``group.py``), every Counter, Gauge and Histogram keeps its value in a memory-mapped file in
that directory, and a scrape merges every file (``MultiProcessCollector``): counters and
histograms summed, each gauge as its mode says.

The files are a worker's *slot*'s, not its pid's (``use_worker_slot``): a worker that dies is
replaced in its slot, and the replacement opens the same files and counts on from what they
hold, so no counter goes backwards and the directory holds N workers' files however many have
died (named by pid, each dead worker's files stayed, and every scrape read them: ~0.17 ms more
per scrape for each). Before the replacement starts, the supervisor removes the slot's live
gauges (``mark_process_dead``), so a dead worker's connections leave the sums at once.

The tallies and the connection figures are not prometheus-client metrics (``tallies.py`` says
why): each worker copies them into its files every ``FLUSH_SECONDS`` (a counter by its
increase since the last copy, a gauge as it stands), and the worker answering a scrape copies
its own first. A scrape therefore shows another worker's tallies, connections and users as of
at most ``FLUSH_SECONDS`` ago; a worker that is killed loses what it counted since its last
copy (never exposed, so nothing goes backwards). Each worker's load against its ceiling is
copied the same way, its per-process gauges labelled with its real pid (``process_load.py``;
the scrape names the label: ``GroupFiles``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Gauge, values
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from kalami_gateway.adapters.metrics.families import (
    ACCEPTED,
    AUDIO_BYTES,
    CONNECTIONS,
    HTTP_REQUESTS,
    MESSAGES,
    USERS,
    counter,
)
from kalami_gateway.adapters.metrics.process_load import PID_IN_FILES
from kalami_gateway.adapters.metrics.tallies import Tallies
from kalami_gateway.domain.instance import InstanceConnections

MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# How stale another worker's tallies and connection figures may be in a scrape.
FLUSH_SECONDS: Final = 1.0
# The live workers' pids, one a line, kept by the supervisor (group.py): whose process
# figures a scrape reads.
WORKERS_FILE: Final = "workers"


def shared_directory() -> str | None:
    """The directory this process shares its metrics in (``PROMETHEUS_MULTIPROC_DIR``), or
    None: one process, keeping its own."""
    path = os.environ.get(MULTIPROCESS_ENV)
    if not path:
        return None
    # prometheus-client picks where values live once, when it is first imported.
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(
            f"{MULTIPROCESS_ENV} was set after prometheus_client was imported: this process's "
            "metrics would not reach the shared directory"
        )
    return path


def use_worker_slot(slot: int) -> None:
    """In a worker, before any metric exists: keep this process's values in its slot's files.

    prometheus-client names them by pid unless told otherwise, and asks of the name only that
    no two processes running at once share it: the supervisor runs one worker per slot, and
    starts a slot's replacement only once its worker has exited."""
    values.ValueClass = values.MultiProcessValue(lambda: slot)  # type: ignore[no-untyped-call]


def shared_registry(directory: str) -> CollectorRegistry:
    """A registry that reads every process's files in ``directory``."""
    registry = CollectorRegistry()
    registry.register(GroupFiles(directory))
    return registry


class GroupFiles(Collector):
    """Every process's files merged (``MultiProcessCollector``), with the per-process gauges'
    ``worker_pid`` label named ``pid`` (``process_load.py`` says why it is not in the files)."""

    def __init__(self, directory: str) -> None:
        self._files = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for metric in self._files.collect():  # type: ignore[no-untyped-call]  # unannotated upstream
            if metric.samples and PID_IN_FILES in metric.samples[0].labels:
                metric.samples = [
                    sample._replace(labels=_pid_named(sample.labels)) for sample in metric.samples
                ]
            yield metric


def _pid_named(labels: dict[str, str]) -> dict[str, str]:
    return {("pid" if name == PID_IN_FILES else name): value for name, value in labels.items()}


def worker_pids(directory: str) -> set[int]:
    """The live workers' pids as the supervisor last wrote them (none: not supervised)."""
    try:
        with open(os.path.join(directory, WORKERS_FILE), encoding="ascii") as listed:
            return {int(line) for line in listed if line.strip().isdigit()}
    except FileNotFoundError:
        return set()


class SharedFigures:
    """This worker's tallies and connection figures, copied into its files on ``flush``."""

    def __init__(self, tallies: Tallies, connections: InstanceConnections) -> None:
        self._tallies = tallies
        self._connections = connections
        self._http = counter(HTTP_REQUESTS, None)
        self._messages = counter(MESSAGES, None)
        self._audio = counter(AUDIO_BYTES, None)
        self._accepted = counter(ACCEPTED, None)
        # The group's figure is the sum over its live workers.
        self._open = Gauge(
            CONNECTIONS.name, CONNECTIONS.help, multiprocess_mode="livesum", registry=None
        )
        self._users = Gauge(USERS.name, USERS.help, multiprocess_mode="livesum", registry=None)
        self._copied_http: dict[tuple[str, int], int] = {}
        self._copied_messages: dict[str, int] = {}
        self._copied_audio = 0
        self._copied_accepted = 0

    def flush(self) -> None:
        """Copy what changed since the last flush (on the event loop's thread, as the tallies
        are bumped there)."""
        tallies = self._tallies
        for key, count in tallies.http.items():
            increase = count - self._copied_http.get(key, 0)
            if increase:
                route, status = key
                self._http.labels(route, str(status)).inc(increase)
                self._copied_http[key] = count
        for message_type, count in tallies.messages.items():
            increase = count - self._copied_messages.get(message_type, 0)
            if increase:
                self._messages.labels(message_type).inc(increase)
                self._copied_messages[message_type] = count
        if tallies.audio_bytes != self._copied_audio:
            self._audio.inc(tallies.audio_bytes - self._copied_audio)
            self._copied_audio = tallies.audio_bytes
        stats = self._connections.stats()
        if stats.accepted_total != self._copied_accepted:
            self._accepted.inc(stats.accepted_total - self._copied_accepted)
            self._copied_accepted = stats.accepted_total
        self._open.set(stats.connections)
        self._users.set(stats.users)

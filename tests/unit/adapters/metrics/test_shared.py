"""The workers' layout: any worker's scrape answers for the group, with the same names, labels
and types as one process's; counters never go backwards; a dead worker's counts stay, in its
slot, for its replacement to go on from."""

from __future__ import annotations

import os
from functools import partial

import pytest

from kalami_gateway import __version__
from kalami_gateway.adapters.metrics import PrometheusMetrics, SharedMetricsDir
from kalami_gateway.domain.instance import InstanceConnections
from kalami_gateway.domain.ports import BackendErrorKind, DirectoryCounts
from tests.unit.adapters.metrics.fakes import (
    NO_SUCH_PID,
    ClientSockets,
    FakeWorker,
    samples,
    shape,
)

HEALTH = 'kalami_http_requests_total{route="/health",status="200"}'
PINGS = 'kalami_websocket_messages_total{type="ping"}'


def traffic(
    metrics: PrometheusMetrics, connections: InstanceConnections, sockets: ClientSockets, tag: str
) -> None:
    """One of everything the gateway records."""
    metrics.http_request("/health", 200)
    metrics.http_request("/api/{path}", 502)
    metrics.proxy_latency(0.004)
    metrics.message_received("ping")
    metrics.audio_received(4096)
    metrics.turn_finished("ok", 1.5)
    metrics.backend_error(BackendErrorKind.TIMEOUT)
    metrics.connection_closed("normal")
    metrics.session_cleanup("gave_up")
    metrics.session_parking("expired")
    connections.add(f"{tag}-1", f"{tag}-user")
    metrics.cluster(DirectoryCounts(instances=2, connections=2, users=2))
    sockets.past_the_ceiling(handshakes=1)
    sockets.capacity.accept_failed("EMFILE")


def test_the_exposition_has_the_same_names_labels_and_types_in_both_layouts(
    shared_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = FakeWorker(0)
    worker.act(partial(traffic, worker.metrics, worker.connections, worker.sockets, "w"))
    shared = worker.act(worker.metrics.render)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    connections, sockets = InstanceConnections(), ClientSockets()
    alone = PrometheusMetrics(connections, sockets.capacity)
    traffic(alone, connections, sockets, "a")
    own = alone.render()
    assert worker.metrics.shared_dir == shared_dir
    assert alone.shared_dir is None
    assert shape(shared) == shape(own)
    assert set(samples(shared)) == set(samples(own))  # every series, labels and all


def test_one_scrape_sums_every_worker(shared_dir: str) -> None:
    first, second = FakeWorker(0), FakeWorker(1)
    for worker in (first, second):
        worker.act(
            partial(traffic, worker.metrics, worker.connections, worker.sockets, str(worker.slot))
        )
    second.act(second.metrics.flush)

    for scraped in (first.scrape(), second.scrape()):
        assert scraped[HEALTH] == 2
        assert scraped[PINGS] == 2
        assert scraped["kalami_audio_received_bytes_total"] == 8192
        assert scraped["kalami_proxy_request_duration_seconds_count"] == 2
        assert scraped['kalami_proxy_request_duration_seconds_bucket{le="0.005"}'] == 2
        assert scraped["kalami_voice_turn_duration_seconds_count"] == 2
        assert scraped['kalami_backend_errors_total{kind="timeout"}'] == 2
        assert scraped['kalami_websocket_closed_total{reason="normal"}'] == 2
        assert scraped['kalami_backend_session_cleanup_total{outcome="gave_up"}'] == 2
        assert scraped["kalami_websocket_connections"] == 2
        assert scraped["kalami_websocket_users"] == 2
        assert scraped["kalami_websocket_connections_accepted_total"] == 2
        assert scraped["kalami_cluster_instances"] == 2
        assert scraped[f'kalami_build_info{{version="{__version__}"}}'] == 1


def test_another_workers_tallies_arrive_with_its_flush_and_nothing_goes_backwards(
    shared_dir: str,
) -> None:
    scraper, other = FakeWorker(0), FakeWorker(1)
    other.act(partial(other.metrics.http_request, "/health", 200))
    other.act(partial(other.metrics.message_received, "ping"))
    other.act(partial(other.metrics.connection_closed, "normal"))  # a Counter: written at once
    other.connections.add("c1", "alice")
    before = scraper.scrape()
    assert HEALTH not in before
    assert before['kalami_websocket_closed_total{reason="normal"}'] == 1
    assert before["kalami_websocket_connections"] == 0

    other.act(other.metrics.flush)
    other.act(other.metrics.flush)  # nothing new: nothing added
    after = scraper.scrape()
    assert after[HEALTH] == 1
    assert after[PINGS] == 1
    assert after["kalami_websocket_connections"] == 1
    assert after["kalami_websocket_connections_accepted_total"] == 1

    other.connections.remove("c1")
    other.act(partial(other.metrics.http_request, "/health", 200))
    other.act(other.metrics.flush)
    last = scraper.scrape()
    assert last[HEALTH] == 2
    assert last["kalami_websocket_connections"] == 0
    assert last["kalami_websocket_connections_accepted_total"] == 1


def test_a_dead_workers_connections_go_and_its_replacement_counts_on(shared_dir: str) -> None:
    survivor, victim = FakeWorker(0), FakeWorker(1)
    for worker in (survivor, victim):
        worker.connections.add(f"c{worker.slot}", f"u{worker.slot}")
        worker.act(partial(worker.metrics.http_request, "/health", 200))
        worker.act(partial(worker.metrics.proxy_latency, 0.004))
        worker.act(worker.metrics.flush)
    assert survivor.scrape()["kalami_websocket_connections"] == 2

    SharedMetricsDir(shared_dir).worker_gone(victim.slot)

    scraped = survivor.scrape()
    assert scraped[HEALTH] == 2
    assert scraped["kalami_proxy_request_duration_seconds_count"] == 2
    assert scraped["kalami_websocket_connections_accepted_total"] == 2
    assert scraped["kalami_websocket_connections"] == 1

    replacement = FakeWorker(victim.slot)  # opens the dead one's files
    files = sorted(os.listdir(shared_dir))
    replacement.connections.add("c9", "u9")
    replacement.act(partial(replacement.metrics.http_request, "/health", 200))
    replacement.act(partial(replacement.metrics.proxy_latency, 0.004))
    replacement.act(replacement.metrics.flush)
    scraped = survivor.scrape()
    assert scraped[HEALTH] == 3
    assert scraped["kalami_proxy_request_duration_seconds_count"] == 3
    assert scraped["kalami_websocket_connections_accepted_total"] == 3
    assert scraped["kalami_websocket_connections"] == 2
    assert sorted(os.listdir(shared_dir)) == files  # the slot's files, no new ones


def test_a_scrape_reads_the_listed_workers_process_figures_and_skips_the_gone(
    shared_dir: str,
) -> None:
    worker = FakeWorker(0)
    SharedMetricsDir(shared_dir).workers_are([os.getppid(), NO_SUCH_PID])
    scraped = worker.scrape()
    for pid in (os.getpid(), os.getppid()):  # the scraping process is always among them
        assert f'process_open_fds{{pid="{pid}"}}' in scraped
    assert not [key for key in scraped if f'pid="{NO_SUCH_PID}"' in key]

    SharedMetricsDir(shared_dir).workers_are([os.getpid()])
    assert not [key for key in worker.scrape() if f'pid="{os.getppid()}"' in key]


def test_a_directory_named_after_prometheus_client_was_imported_is_refused(
    shared_dir: str,
) -> None:
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR: its
    # values are kept in memory and would never reach the directory.
    with pytest.raises(RuntimeError, match="set after prometheus_client was imported"):
        PrometheusMetrics(InstanceConnections(), ClientSockets().capacity)


def per_process(scraped: dict[str, float], family: str) -> dict[str, float]:
    """A per-process family's values by the pid label."""
    prefix = f'{family}{{pid="'
    return {k[len(prefix) : -2]: v for k, v in scraped.items() if k.startswith(prefix)}


def test_each_workers_load_is_labelled_with_its_real_pid_and_the_refusals_summed(
    shared_dir: str,
) -> None:
    first, second = FakeWorker(0, os.getpid()), FakeWorker(1, os.getppid())
    for worker, opened in ((first, 3), (second, 1)):
        for n in range(opened):
            worker.connections.add(f"{worker.slot}-{n}", f"{worker.slot}-u{n}")
        worker.sockets.past_the_ceiling(handshakes=worker.slot + 1)
        worker.sockets.capacity.accept_failed("EMFILE")
    second.sockets.capacity.accept_failed("ENFILE")
    second.act(second.metrics.flush)

    for scraped in (first.scrape(), second.scrape()):
        mine, other = str(first.pid), str(second.pid)
        connections = per_process(scraped, "kalami_process_websocket_connections")
        assert connections == {mine: 3, other: 1}
        assert sum(connections.values()) == scraped["kalami_websocket_connections"]
        assert per_process(scraped, "kalami_process_client_sockets") == {mine: 101, other: 101}
        assert per_process(scraped, "kalami_process_connection_ceiling") == {
            mine: 100,
            other: 100,
        }
        assert per_process(scraped, "kalami_process_websocket_refused") == {mine: 1, other: 2}
        assert scraped['kalami_websocket_refused_total{reason="ceiling"}'] == 3
        assert scraped['kalami_accept_errors_total{errno="EMFILE"}'] == 2
        assert scraped['kalami_accept_errors_total{errno="ENFILE"}'] == 1
        assert not [key for key in scraped if "worker_pid" in key]


def test_stats_reads_every_live_worker_as_it_last_flushed(shared_dir: str) -> None:
    scraper, other = FakeWorker(0, os.getpid()), FakeWorker(1, os.getppid())
    scraper.connections.add("a", "alice")
    other.connections.add("b", "bob")
    other.connections.add("c", "carol")
    assert [p.load.pid for p in scraper.act(scraper.metrics.serving_processes)] == [scraper.pid]

    other.act(other.metrics.flush)
    scraper.connections.add("d", "dan")  # its own figures are as they stand
    processes = scraper.act(scraper.metrics.serving_processes)

    assert [p.load for p in processes] == sorted(
        [(scraper.pid, 2, 0, 100, 0), (other.pid, 2, 0, 100, 0)]
    )
    for process in processes:  # both real processes: their /proc entries read
        assert process.open_files is not None
        assert process.open_files_limit is not None
        assert 0 < process.open_files <= process.open_files_limit

    other.connections.remove("b")
    loads = {load.pid: load for load in scraper.act(scraper.metrics.process_loads)}
    assert loads[other.pid].websocket_connections == 2  # not flushed yet: as it last was
    other.act(other.metrics.flush)
    by_pid = {p.pid: p for p in scraper.act(scraper.metrics.process_loads)}
    assert by_pid[other.pid].websocket_connections == 1


def test_a_dead_workers_load_goes_with_it_and_its_refusals_stay(shared_dir: str) -> None:
    survivor, victim = FakeWorker(0, os.getpid()), FakeWorker(1, os.getppid())
    for worker in (survivor, victim):
        worker.connections.add(f"c{worker.slot}", f"u{worker.slot}")
        worker.sockets.past_the_ceiling(handshakes=2)
        worker.act(worker.metrics.flush)
    assert len(per_process(survivor.scrape(), "kalami_process_client_sockets")) == 2

    SharedMetricsDir(shared_dir).worker_gone(victim.slot)

    scraped = survivor.scrape()
    for family in (
        "kalami_process_client_sockets",
        "kalami_process_connection_ceiling",
        "kalami_process_websocket_connections",
        "kalami_process_websocket_refused",
    ):
        assert per_process(scraped, family).keys() == {str(survivor.pid)}
    assert scraped['kalami_websocket_refused_total{reason="ceiling"}'] == 4
    assert [p.pid for p in survivor.act(survivor.metrics.process_loads)] == [survivor.pid]

    replacement = FakeWorker(victim.slot, NO_SUCH_PID)  # the slot's files, a new pid
    replacement.sockets.past_the_ceiling(handshakes=1)
    replacement.act(replacement.metrics.flush)
    scraped = survivor.scrape()
    assert per_process(scraped, "kalami_process_websocket_refused") == {
        str(survivor.pid): 2,
        str(NO_SUCH_PID): 1,
    }
    assert scraped['kalami_websocket_refused_total{reason="ceiling"}'] == 5
    # A pid with no /proc entry: listed, its open files unknown.
    [unread] = [
        p for p in survivor.act(survivor.metrics.serving_processes) if p.load.pid != survivor.pid
    ]
    assert (unread.load.pid, unread.open_files, unread.open_files_limit) == (
        NO_SUCH_PID,
        None,
        None,
    )


def test_stats_lists_this_worker_alone_when_the_files_cannot_be_read(shared_dir: str) -> None:
    scraper, other = FakeWorker(0, os.getpid()), FakeWorker(1, os.getppid())
    other.act(other.metrics.flush)
    # A file that cannot be opened, as none can by a process out of file descriptors.
    os.mkdir(os.path.join(shared_dir, "gauge_livesum_7.db"))
    assert [p.pid for p in scraper.act(scraper.metrics.process_loads)] == [scraper.pid]

"""One process: its metrics, its tallies, its connections and its sockets against its ceiling
read at scrape time, its own process figures, and the build."""

from __future__ import annotations

import os

from kalami_gateway import __version__
from kalami_gateway.adapters.metrics import PrometheusMetrics, spread
from kalami_gateway.domain.instance import InstanceConnections
from kalami_gateway.domain.ports import BackendErrorKind, DirectoryCounts
from tests.unit.adapters.metrics.fakes import ClientSockets, samples


def test_a_scrape_reads_the_tallies_and_connections_as_they_stand() -> None:
    connections = InstanceConnections()
    metrics = PrometheusMetrics(connections, ClientSockets().capacity)
    for _ in range(3):
        metrics.http_request("/health", 200)
    metrics.http_request("/api/{path}", 502)
    metrics.message_received("ping")
    metrics.message_received("ping")
    metrics.audio_received(4096)
    metrics.proxy_latency(0.004)
    metrics.backend_error(BackendErrorKind.TIMEOUT)
    connections.add("c1", "alice")
    connections.add("c2", "alice")
    metrics.cluster(DirectoryCounts(instances=3, connections=7, users=5))

    scraped = samples(metrics.render())

    assert scraped['kalami_http_requests_total{route="/health",status="200"}'] == 3
    assert scraped['kalami_http_requests_total{route="/api/{path}",status="502"}'] == 1
    assert scraped['kalami_websocket_messages_total{type="ping"}'] == 2
    assert scraped["kalami_audio_received_bytes_total"] == 4096
    assert scraped["kalami_proxy_request_duration_seconds_count"] == 1
    assert scraped['kalami_backend_errors_total{kind="timeout"}'] == 1
    assert scraped["kalami_websocket_connections"] == 2
    assert scraped["kalami_websocket_users"] == 1
    assert scraped["kalami_websocket_connections_accepted_total"] == 2
    assert scraped["kalami_cluster_instances"] == 3
    assert scraped["kalami_cluster_connections"] == 7
    assert scraped["kalami_cluster_users"] == 5
    assert scraped[f'kalami_build_info{{version="{__version__}"}}'] == 1

    connections.remove("c1")
    metrics.http_request("/health", 200)
    again = samples(metrics.render())
    assert again["kalami_websocket_connections"] == 1
    assert again['kalami_http_requests_total{route="/health",status="200"}'] == 4


def test_its_process_figures_carry_its_pid() -> None:
    scraped = samples(PrometheusMetrics(InstanceConnections(), ClientSockets().capacity).render())
    pid = f'{{pid="{os.getpid()}"}}'
    for name in (
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
    ):
        assert f"{name}{pid}" in scraped
    assert scraped[f"process_open_fds{pid}"] > 0
    assert scraped[f"process_max_fds{pid}"] >= scraped[f"process_open_fds{pid}"]
    assert scraped[f"process_resident_memory_bytes{pid}"] > 1_000_000


def test_the_apps_of_one_process_do_not_share_metrics() -> None:
    first = PrometheusMetrics(InstanceConnections(), ClientSockets().capacity)
    second = PrometheusMetrics(InstanceConnections(), ClientSockets().capacity)
    first.http_request("/health", 200)
    first.connection_closed("normal")
    scraped = samples(second.render())
    assert 'kalami_http_requests_total{route="/health",status="200"}' not in scraped
    assert 'kalami_websocket_closed_total{reason="normal"}' not in scraped


def test_its_sockets_against_its_ceiling_and_the_refusals_are_read_at_scrape_time() -> None:
    connections = InstanceConnections()
    sockets = ClientSockets(ceiling=3)
    metrics = PrometheusMetrics(connections, sockets.capacity)
    pid = f'pid="{os.getpid()}"'
    before = samples(metrics.render())
    assert before['kalami_websocket_refused_total{reason="ceiling"}'] == 0
    assert before['kalami_accept_errors_total{errno="EMFILE"}'] == 0
    assert before['kalami_accept_errors_total{errno="ENFILE"}'] == 0
    assert before[f"kalami_process_client_sockets{{{pid}}}"] == 0
    assert before[f"kalami_process_websocket_refused{{{pid}}}"] == 0

    connections.add("c1", "alice")
    connections.add("c2", "bob")
    sockets.past_the_ceiling(handshakes=2)
    sockets.capacity.accept_failed("EMFILE")
    scraped = samples(metrics.render())

    assert scraped[f"kalami_process_client_sockets{{{pid}}}"] == 4
    assert scraped[f"kalami_process_connection_ceiling{{{pid}}}"] == 3
    assert scraped[f"kalami_process_websocket_connections{{{pid}}}"] == 2
    assert scraped[f"kalami_process_websocket_refused{{{pid}}}"] == 2
    assert scraped['kalami_websocket_refused_total{reason="ceiling"}'] == 2
    assert scraped['kalami_accept_errors_total{errno="EMFILE"}'] == 1
    assert scraped['kalami_accept_errors_total{errno="ENFILE"}'] == 0


def test_stats_lists_this_process_alone_with_its_open_files() -> None:
    connections = InstanceConnections()
    sockets = ClientSockets(ceiling=7)
    metrics = PrometheusMetrics(connections, sockets.capacity)
    connections.add("c1", "alice")
    sockets.open = 5
    sockets.capacity.accept_failed("ENFILE")  # counted in /metrics, not in /stats

    [process] = metrics.serving_processes()

    assert process.load == (os.getpid(), 1, 5, 7, 0)
    assert process.open_files is not None
    assert process.open_files_limit is not None
    assert 0 < process.open_files <= process.open_files_limit


def test_the_spread_is_the_busiest_process_above_the_mean_in_percent() -> None:
    assert spread([]) == 0
    assert spread([40]) == 0  # one process: nothing to spread
    assert spread([0, 0]) == 0
    assert spread([10, 10]) == 0
    assert spread([12, 8]) == 20.0
    assert spread([3, 1, 1]) == 80.0
    assert spread([103, 100, 100]) == 2.0

"""One process: its metrics, its tallies and its connections read at scrape time, its own
process figures, and the build."""

from __future__ import annotations

import os

from kalami_gateway import __version__
from kalami_gateway.adapters.metrics import PrometheusMetrics
from kalami_gateway.domain.instance import InstanceConnections
from kalami_gateway.domain.ports import BackendErrorKind, DirectoryCounts
from tests.unit.adapters.metrics.fakes import samples


def test_a_scrape_reads_the_tallies_and_connections_as_they_stand() -> None:
    connections = InstanceConnections()
    metrics = PrometheusMetrics(connections)
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
    scraped = samples(PrometheusMetrics(InstanceConnections()).render())
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
    first = PrometheusMetrics(InstanceConnections())
    second = PrometheusMetrics(InstanceConnections())
    first.http_request("/health", 200)
    first.connection_closed("normal")
    scraped = samples(second.render())
    assert 'kalami_http_requests_total{route="/health",status="200"}' not in scraped
    assert 'kalami_websocket_closed_total{reason="normal"}' not in scraped

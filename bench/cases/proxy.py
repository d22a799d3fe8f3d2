"""The proxy case: ``wrk`` on ``/api`` GET and a 1 KB JSON POST through the gateway, nginx's
proxy (the baseline) and the Node stack."""

from __future__ import annotations

from bench import wrk
from bench.report import Row
from bench.sizes import Sizes
from bench.targets import GatewayProcess, Nginx, NodeAnchor, cpu_seconds


def case_proxy(
    gateway: GatewayProcess, nginx: Nginx, sizes: Sizes, node: NodeAnchor | None = None
) -> list[Row]:
    rows = []
    for post, path, label in (
        (False, "/api/users/me", "GET"),
        (True, "/api/conversations/sessions", "POST 1 KB JSON"),
    ):
        cpu_before = cpu_seconds(gateway.pid)
        ours = wrk.run(f"{gateway.http}{path}", sizes.wrk_connections, sizes.wrk_seconds, post=post)
        cpu_per_request = (cpu_seconds(gateway.pid) - cpu_before) / max(1, ours.requests) * 1e6
        theirs = wrk.run(
            f"http://127.0.0.1:{nginx.proxy_port}{path}",
            sizes.wrk_connections,
            sizes.wrk_seconds,
            post=post,
        )
        if ours.errors:
            raise RuntimeError(f"{label} through the gateway: {ours.errors} errors")
        node_run = None
        if node is not None:
            node_run = wrk.run(
                f"{node.http}{path}", sizes.wrk_connections, sizes.wrk_seconds, post=post
            )
        key = "proxy_post" if post else "proxy_get"
        rows += [
            Row(
                f"proxy {label}, -c{sizes.wrk_connections}",
                f"{key}_rps",
                ours.requests_per_second,
                theirs.requests_per_second,
                "req/s",
                node_run.requests_per_second if node_run else None,
            ),
            Row(
                f"proxy {label} p50",
                f"{key}_p50_ms",
                ours.p50_ms,
                theirs.p50_ms,
                "ms",
                node_run.p50_ms if node_run else None,
            ),
            Row(
                f"proxy {label} p99",
                f"{key}_p99_ms",
                ours.p99_ms,
                theirs.p99_ms,
                "ms",
                node_run.p99_ms if node_run else None,
            ),
            Row(f"gateway CPU per proxied {label}", f"{key}_cpu_us", cpu_per_request, unit="µs"),
        ]
    return rows

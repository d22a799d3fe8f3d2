"""The HTTP surface over real sockets: own routes, readiness, metrics, CORS and the /api proxy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket

import httpx
import pytest

from kalami_gateway import __version__
from tests.integration.backend_server import BackendServer, pattern
from tests.integration.conftest import Gateway, eventually, make_settings, running_gateway


def free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_index_health_and_stats(gateway: Gateway, client: httpx.AsyncClient) -> None:
    index = (await client.get(f"{gateway.http}/")).json()
    assert index["name"] == "kalami-gateway"
    assert index["endpoints"]["websocket"].startswith("/ws")
    health = await client.get(f"{gateway.http}/health")
    assert health.json() == {
        "status": "healthy",
        "service": "kalami-gateway",
        "version": __version__,
    }
    stats = (await client.get(f"{gateway.http}/stats")).json()
    assert stats["websocket"]["connections"] == 0
    assert stats["websocket"]["users"] == 0
    # One process: itself alone, its client sockets this request's connection at least.
    [process] = stats["processes"]
    assert process["pid"] == stats["websocket"]["pid"]
    assert process["ceiling"] == gateway.app.capacity.ceiling
    assert (process["connections"], process["refused"]) == (0, 0)
    assert process["clientSockets"] >= 1
    assert 0 < process["openFiles"] <= process["openFilesLimit"]
    assert stats["spread"] == 0


async def test_readiness_when_the_backend_is_healthy(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    ready = await client.get(f"{gateway.http}/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "backend": "connected"})


async def test_readiness_when_the_backend_is_unhealthy(
    gateway: Gateway, backend: BackendServer, client: httpx.AsyncClient
) -> None:
    backend.health_status = 500
    ready = await client.get(f"{gateway.http}/health/ready")
    assert (ready.status_code, ready.json()) == (
        503,
        {"status": "degraded", "backend": "unhealthy"},
    )


async def test_readiness_when_the_backend_is_unreachable(client: httpx.AsyncClient) -> None:
    async with running_gateway(make_settings(free_port_url())) as gw:
        ready = await client.get(f"{gw.http}/health/ready")
    assert (ready.status_code, ready.json()) == (
        503,
        {"status": "not ready", "backend": "unreachable"},
    )


@pytest.mark.parametrize(
    ("path", "upstream_path", "query"),
    [
        ("/api/users/me", "/users/me", ""),
        ("/api/users/me?page=2&sort=-name", "/users/me", "page=2&sort=-name"),
        ("/api", "/", ""),
        ("/api/", "/", ""),
        ("/api/files/a%2Fb/", "/files/a%2Fb/", ""),
        ("/api/search?q=caf%C3%A9+au+lait&x=%26", "/search", "q=caf%C3%A9+au+lait&x=%26"),
    ],
)
async def test_the_prefix_is_stripped_and_path_and_query_are_forwarded_raw(
    gateway: Gateway,
    backend: BackendServer,
    client: httpx.AsyncClient,
    path: str,
    upstream_path: str,
    query: str,
) -> None:
    response = await client.get(f"{gateway.http}{path}")
    assert response.status_code == 200
    assert response.json()["path"] == upstream_path
    assert backend.requests[-1].raw_path == upstream_path
    assert backend.requests[-1].query_string == query


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_forwarded(
    gateway: Gateway, backend: BackendServer, client: httpx.AsyncClient, method: str
) -> None:
    body = b'{"a":1}' if method in ("POST", "PUT", "PATCH") else None
    response = await client.request(method, f"{gateway.http}/api/things/1", content=body)
    assert response.status_code == 200
    assert response.json()["method"] == method
    seen = backend.requests[-1]
    assert seen.method == method
    assert seen.body == (body or b"")
    if body is None:
        # No body, no framing: a GET must not turn into a chunked upload.
        assert seen.header("Transfer-Encoding") is None


async def test_head_is_forwarded_without_a_body(
    gateway: Gateway, backend: BackendServer, client: httpx.AsyncClient
) -> None:
    response = await client.head(f"{gateway.http}/api/things/1")
    assert response.status_code == 200
    assert response.content == b""
    assert backend.requests[-1].method == "HEAD"


async def test_a_post_is_answered_with_the_upstream_status_not_201(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    response = await client.post(f"{gateway.http}/api/status/200", json={"x": 1})
    assert response.status_code == 200


@pytest.mark.parametrize("status", [201, 204, 404, 422, 500])
async def test_upstream_status_is_passed_through(
    gateway: Gateway, client: httpx.AsyncClient, status: int
) -> None:
    response = await client.post(f"{gateway.http}/api/status/{status}", json={})
    assert response.status_code == status


async def test_a_large_binary_body_goes_up_byte_for_byte(
    gateway: Gateway, backend: BackendServer, client: httpx.AsyncClient
) -> None:
    upload = pattern(0, 3 * 1024 * 1024 + 17)
    response = await client.post(
        f"{gateway.http}/api/echo-body",
        content=upload,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(upload).digest()
    assert backend.requests[-1].body == upload
    assert backend.requests[-1].header("Content-Length") == str(len(upload))


async def test_a_chunked_upload_streams_through(
    gateway: Gateway, backend: BackendServer, client: httpx.AsyncClient
) -> None:
    parts = [pattern(i * 100_000, 100_000) for i in range(30)]

    async def chunks() -> object:
        for part in parts:
            yield part

    response = await client.post(f"{gateway.http}/api/echo-body", content=chunks())  # type: ignore[arg-type]
    assert response.status_code == 200
    assert response.content == b"".join(parts)


async def test_a_large_download_streams_down_byte_for_byte(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    size = 5 * 1024 * 1024 + 3
    response = await client.get(f"{gateway.http}/api/bytes/{size}")
    assert response.status_code == 200
    assert response.content == b"".join(
        pattern(o, min(65536, size - o)) for o in range(0, size, 65536)
    )


async def test_backend_down_is_502(client: httpx.AsyncClient) -> None:
    async with running_gateway(make_settings(free_port_url())) as gw:
        response = await client.get(f"{gw.http}/api/users/me")
        metrics = (await client.get(f"{gw.http}/metrics")).text
    assert response.status_code == 502
    assert response.json() == {
        "error": "Backend service unavailable",
        "code": "backend_unavailable",
    }
    assert 'kalami_backend_errors_total{kind="unreachable"} 1.0' in metrics


async def test_a_slow_backend_is_504(backend: BackendServer, client: httpx.AsyncClient) -> None:
    backend.slow_seconds = 2.0
    async with running_gateway(make_settings(backend.url, backend_timeout_ms=300)) as gw:
        response = await client.get(f"{gw.http}/api/slow")
        metrics = (await client.get(f"{gw.http}/metrics")).text
    assert 'kalami_backend_errors_total{kind="timeout"} 1.0' in metrics
    assert response.status_code == 504
    assert response.json() == {"error": "Backend timed out", "code": "backend_timeout"}


async def test_request_id_is_kept_or_generated_sent_upstream_and_echoed(
    gateway: Gateway, backend: BackendServer, client: httpx.AsyncClient
) -> None:
    kept = await client.get(f"{gateway.http}/api/a", headers={"X-Request-ID": "req-123"})
    assert kept.headers["x-request-id"] == "req-123"
    assert backend.requests[-1].headers_named("X-Request-ID") == ["req-123"]
    made = await client.get(f"{gateway.http}/api/a")
    generated = made.headers["x-request-id"]
    assert len(generated) == 32
    assert backend.requests[-1].header("X-Request-ID") == generated
    own = await client.get(f"{gateway.http}/health")
    assert own.headers["x-request-id"]


async def test_forwarded_headers_from_an_untrusted_client_are_replaced(
    gateway: Gateway, backend: BackendServer, client: httpx.AsyncClient
) -> None:
    await client.get(
        f"{gateway.http}/api/a",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "evil.test",
            "X-Forwarded-Proto": "https",
        },
    )
    seen = backend.requests[-1]
    assert seen.headers_named("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.headers_named("X-Forwarded-Proto") == ["http"]
    assert seen.headers_named("X-Forwarded-Host") == [f"127.0.0.1:{gateway.port}"]


async def test_forwarded_headers_from_a_trusted_proxy_are_extended(
    backend: BackendServer, client: httpx.AsyncClient
) -> None:
    async with running_gateway(make_settings(backend.url, trusted_proxies=("127.0.0.1",))) as gw:
        await client.get(
            f"{gw.http}/api/a",
            headers={
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Host": "app.test",
                "X-Forwarded-Proto": "https",
            },
        )
    seen = backend.requests[-1]
    assert seen.headers_named("X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert seen.headers_named("X-Forwarded-Proto") == ["https"]
    assert seen.headers_named("X-Forwarded-Host") == ["app.test"]


async def test_hop_by_hop_headers_are_dropped_both_ways(
    gateway: Gateway, backend: BackendServer, client: httpx.AsyncClient
) -> None:
    response = await client.get(
        f"{gateway.http}/api/hop-by-hop",
        headers={
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "TE": "trailers",
            "Proxy-Authorization": "x",
        },
    )
    seen = backend.requests[-1]
    for name in ("X-Drop-Me", "TE", "Proxy-Authorization"):
        assert seen.header(name) is None, name
    for name in ("x-private", "keep-alive", "proxy-authenticate"):
        assert name not in response.headers, name
    assert response.json() == {"ok": True}


async def test_client_headers_are_forwarded_and_nothing_is_added(
    gateway: Gateway, backend: BackendServer
) -> None:
    # A bare request: the gateway must not add Accept-Encoding or a User-Agent of its own.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /api/plain HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer abc\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    seen = backend.requests[-1]
    assert seen.header("Authorization") == "Bearer abc"
    assert seen.header("Accept-Encoding") is None
    assert seen.header("User-Agent") is None


async def test_cookies_pass_through_but_are_never_stored(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    first = await client.get(f"{gateway.http}/api/cookies")
    assert first.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    async with httpx.AsyncClient() as other_user:
        second = await other_user.get(f"{gateway.http}/api/cookies")
    assert second.json() == {"cookies": {}}


async def test_upstream_date_and_server_are_not_duplicated(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    response = await client.get(f"{gateway.http}/api/a")
    assert len(response.headers.get_list("date")) == 1
    assert len(response.headers.get_list("server")) <= 1


async def test_a_client_leaving_mid_download_releases_the_upstream(
    gateway: Gateway, backend: BackendServer, client: httpx.AsyncClient
) -> None:
    async with client.stream("GET", f"{gateway.http}/api/bytes/{200 * 1024 * 1024}") as response:
        async for _ in response.aiter_bytes():
            break
    await eventually(backend.stream_aborted.is_set, within=10)
    after = await client.get(f"{gateway.http}/api/a")
    assert after.status_code == 200


async def test_cors_preflight_and_simple_requests(
    backend: BackendServer, client: httpx.AsyncClient
) -> None:
    async with running_gateway(
        make_settings(backend.url, cors_origins=("https://app.test",))
    ) as gw:
        preflight = await client.options(
            f"{gw.http}/api/users/me",
            headers={
                "Origin": "https://app.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        denied = await client.options(
            f"{gw.http}/api/users/me",
            headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"},
        )
        simple = await client.get(f"{gw.http}/health", headers={"Origin": "https://app.test"})
        foreign = await client.get(f"{gw.http}/api/a", headers={"Origin": "https://evil.test"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.test"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    assert not any(r.method == "OPTIONS" for r in backend.requests)
    assert denied.status_code == 403
    assert simple.headers["access-control-allow-origin"] == "https://app.test"
    assert simple.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in foreign.headers


async def test_cors_any_origin(gateway: Gateway, client: httpx.AsyncClient) -> None:
    response = await client.get(f"{gateway.http}/api/a", headers={"Origin": "https://x.test"})
    assert response.headers["access-control-allow-origin"] == "*"


async def test_metrics_after_traffic(gateway: Gateway, client: httpx.AsyncClient) -> None:
    await client.get(f"{gateway.http}/api/a")
    await client.get(f"{gateway.http}/api/status/404")
    await client.get(f"{gateway.http}/health")
    response = await client.get(f"{gateway.http}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    assert 'kalami_http_requests_total{route="/api/{path}",status="200"} 1.0' in text
    assert 'kalami_http_requests_total{route="/api/{path}",status="404"} 1.0' in text
    assert 'kalami_http_requests_total{route="/health",status="200"} 1.0' in text
    assert "kalami_proxy_request_duration_seconds_count 2.0" in text
    assert "kalami_websocket_connections 0.0" in text


async def test_connections_are_reused_and_a_closed_idle_one_is_replaced(
    client: httpx.AsyncClient,
) -> None:
    backend = BackendServer(keepalive_timeout=0.2)
    await backend.start()
    try:
        async with running_gateway(make_settings(backend.url)) as gw:
            for _ in range(5):
                assert (await client.get(f"{gw.http}/api/a")).status_code == 200
            pool = gw.app.container.proxy().pool
            assert pool is not None
            assert pool.open_connections == 1
            await asyncio.sleep(0.6)  # the backend closes the idle connection
            for _ in range(3):
                assert (await client.get(f"{gw.http}/api/b")).status_code == 200
                await asyncio.sleep(0.3)
    finally:
        await backend.stop()
    assert [r.raw_path for r in backend.requests].count("/b") == 3


async def test_head_and_no_content_responses_complete(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    for _ in range(3):
        head = await client.head(f"{gateway.http}/api/a")
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) > 0
        empty = await client.post(f"{gateway.http}/api/status/204")
        assert (empty.status_code, empty.content) == (204, b"")


async def test_a_body_delimited_by_the_connection_closing(client: httpx.AsyncClient) -> None:
    async def old_style_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        writer.write(b"hello, " * 1000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(old_style_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_gateway(make_settings(f"http://127.0.0.1:{port}")) as gw:
            for _ in range(2):
                response = await client.get(f"{gw.http}/api/old")
                assert response.status_code == 200
                assert response.content == b"hello, " * 1000
    finally:
        server.close()
        await server.wait_closed()


async def test_client_errors_are_one_info_line_not_an_error_with_a_traceback(
    backend: BackendServer, client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_gateway(make_settings(backend.url, log_level="info")) as gw:
        missing = await client.get(f"{gw.http}/no-such-route")
        wrong_method = await client.post(f"{gw.http}/health")
    assert (missing.status_code, wrong_method.status_code) == (404, 405)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    requests = [line for line in lines if line.get("event") == "http_request"]
    assert [(r["status"], r["level"]) for r in requests] == [(404, "info"), (405, "info")]
    assert not [line for line in lines if line["level"] == "error"]
    assert not any("color_message" in line for line in lines)

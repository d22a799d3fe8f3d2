"""The /api proxy as an attacker uses it (issue 16): raw sockets on both sides, a backend that
records every byte of every upstream connection, and the pool invariant checked after each
attack — no request the gateway did not forward is ever parsed by the backend, and every
client gets its own response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from dependency_injector import providers

from kalami_gateway.adapters.proxy.relay import ApiProxy
from kalami_gateway.app.container import Container
from kalami_gateway.app.settings import Settings
from tests.integration.conftest import Gateway, eventually, make_settings, running_gateway
from tests.integration.raw_backend import RawBackend, UpstreamRecord
from tests.integration.raw_client import connect, exchange, read_response

# Bytes an attacker hides in a body, hoping the backend parses them as a request of their own.
SMUGGLED = (
    b"GET /ok/admin HTTP/1.1\r\nhost: x\r\nx-tag: smuggled\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
)


def proxy_with(settings: Settings, **overrides: Any) -> Container:
    """The real container with the upstream proxy built from ``settings`` and ``overrides``
    (a smaller pool, another idle limit) for a test to reach its edges."""
    container = Container(settings=settings)
    container.proxy.override(
        providers.Singleton(
            ApiProxy,
            backend_url=settings.backend_url,
            timeout_seconds=settings.backend_timeout,
            trusted_proxies=settings.trusted_proxies,
            observe_latency=container.metrics.provided.proxy_latency,
            record_error=container.metrics.provided.backend_error,
            connections_per_client=settings.api_connections_per_client,
            body_min_rate=settings.api_body_min_rate,
            body_rate_grace=settings.api_body_rate_grace,
            **overrides,
        )
    )
    return container


def small_pool(settings: Settings, size: int) -> Container:
    """The real container with a smaller upstream pool, so that a test can fill it."""
    return proxy_with(settings, pool_size=size)


@asynccontextmanager
async def gateway_on(
    raw: RawBackend, pool_size: int = 8, base_path: str = "", **overrides: Any
) -> AsyncIterator[Gateway]:
    settings = make_settings(raw.url + base_path, backend_timeout_ms=1000, **overrides)
    async with running_gateway(settings, small_pool(settings, pool_size)) as gw:
        yield gw


def record_of(raw: RawBackend, tag: str) -> UpstreamRecord:
    return next(c for c in raw.connections if any(r.tag == tag for r in c.requests))


def assert_nothing_smuggled(raw: RawBackend) -> None:
    assert [r.tag for r in raw.requests if r.tag == "smuggled"] == []
    assert all(c.parse_error is None for c in raw.connections)


async def victim(gw: Gateway, tag: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"{gw.http}/api/ok/{tag}", headers={"x-tag": tag})


def content_length_upload(path: str, tag: str, size: int, method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nhost: gw\r\nx-tag: {tag}\r\ncontent-length: {size}\r\n\r\n"
    ).encode()


def chunked_upload(path: str, tag: str, method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nhost: gw\r\nx-tag: {tag}\r\n"
        "transfer-encoding: chunked\r\n\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


# -- V1: an early answer, then the client leaves mid-body -------------------------------------


@pytest.mark.parametrize("method", ["POST", "HEAD"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_early_answer_then_an_abort_mid_body_never_poisons_the_pool(
    raw: RawBackend, method: str, framing: str
) -> None:
    async with gateway_on(raw) as gw:
        reader, writer = await connect(gw.port)
        if framing == "chunked":
            writer.write(chunked_upload("/api/early/x", "attacker", method))
            writer.write(chunk(b"a" * 100_000 + SMUGGLED))
        else:
            writer.write(content_length_upload("/api/early/x", "attacker", 600_000, method))
            writer.write(b"a" * 100_000 + SMUGGLED)
        await writer.drain()
        early = await read_response(reader, method)
        writer.close()  # mid-body: the head promised more
        assert early.status == 401

        for n in range(3):
            response = await victim(gw, f"victim-{n}")
            assert (response.status_code, response.text) == (200, f"tag=victim-{n}")

        attacker = record_of(raw, "attacker")
        await eventually(lambda: attacker.closed_by_gateway)
        assert [r.tag for r in attacker.requests] == ["attacker"]
    assert_nothing_smuggled(raw)


async def test_an_early_answer_while_the_client_keeps_sending_is_relayed_at_once(
    raw: RawBackend,
) -> None:
    async with gateway_on(raw) as gw:
        reader, writer = await connect(gw.port)
        writer.write(chunked_upload("/api/early/x", "early"))
        writer.write(chunk(b"b" * 1000))
        await writer.drain()
        early = await read_response(reader)  # before the body is finished
        assert early.status == 401
        writer.write(chunk(b"b" * 1000) + b"0\r\n\r\n")
        await writer.drain()
        writer.close()
        response = await victim(gw, "after-early")
        assert (response.status_code, response.text) == (200, "tag=after-early")
    assert_nothing_smuggled(raw)


async def test_a_complete_large_upload_keeps_its_connection(raw: RawBackend) -> None:
    async with gateway_on(raw) as gw, httpx.AsyncClient(timeout=10) as client:
        big = await client.post(
            f"{gw.http}/api/ok/big", content=b"c" * 600_000, headers={"x-tag": "big"}
        )
        small = await client.get(f"{gw.http}/api/ok/next", headers={"x-tag": "next"})
    assert (big.status_code, big.text, small.text) == (200, "tag=big", "tag=next")
    assert len(raw.requests[0].body) == 600_000
    # One upstream connection carried both: a complete exchange is pooled.
    assert [[r.tag for r in c.requests] for c in raw.connections] == [["big", "next"]]


# -- V2: slots held by slow or stalled uploads -------------------------------------------------


async def test_a_full_pool_answers_503_within_the_timeout_instead_of_waiting_forever(
    raw: RawBackend,
) -> None:
    async with gateway_on(raw, pool_size=2) as gw:
        held = [await connect(gw.port) for _ in range(2)]
        for n, (_, writer) in enumerate(held):
            writer.write(chunked_upload("/api/ok/x", f"trickle-{n}") + chunk(b"t"))
            await writer.drain()
        stop = asyncio.Event()

        async def trickle() -> None:  # a byte well within every stall limit: not stalled
            while not stop.is_set():
                for _, writer in held:
                    writer.write(chunk(b"t"))
                await asyncio.sleep(0.2)

        trickling = asyncio.create_task(trickle())
        await eventually(lambda: len(raw.connections) == 2)
        async with httpx.AsyncClient(timeout=10) as client:
            refused = await client.get(f"{gw.http}/api/ok/waiting")
        assert refused.status_code == 503
        assert refused.json() == {
            "error": "Backend busy: no connection free",
            "code": "backend_busy",
        }
        stop.set()
        await trickling
        for n, (reader, writer) in enumerate(held):
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            finished = await read_response(reader, "POST")
            assert (finished.status, finished.body) == (200, f"tag=trickle-{n}".encode())
            writer.close()
        response = await victim(gw, "later")
        assert response.status_code == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_stalled_upload_is_aborted_with_408_and_frees_its_slot(
    raw: RawBackend, framing: str
) -> None:
    async with gateway_on(raw, pool_size=1) as gw:
        reader, writer = await connect(gw.port)
        if framing == "chunked":
            writer.write(chunked_upload("/api/ok/x", "stalled") + chunk(b"s" * 10))
        else:
            writer.write(content_length_upload("/api/ok/x", "stalled", 500_000) + b"s" * 10)
        await writer.drain()
        stalled = await read_response(reader, "POST")
        assert stalled.status == 408
        assert stalled.header("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the gateway hangs up
        writer.close()
        response = await victim(gw, "after-stall")
        assert (response.status_code, response.text) == (200, "tag=after-stall")
        assert record_of(raw, "stalled").closed_by_gateway
    assert not any(r.complete for r in raw.requests if r.tag == "stalled")


async def test_a_small_body_that_stalls_gets_408(raw: RawBackend) -> None:
    async with gateway_on(raw) as gw:
        reader, writer = await connect(gw.port)
        writer.write(content_length_upload("/api/ok/x", "slow-small", 100) + b"s" * 10)
        await writer.drain()
        assert (await read_response(reader, "POST")).status == 408
        writer.close()
    assert raw.requests == []  # a small body is read whole before the backend is bothered


# -- V3: nothing is sent twice unless that is harmless ----------------------------------------


async def _warm(gw: Gateway) -> None:
    assert (await victim(gw, "warm")).status_code == 200


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "reused"])
async def test_a_post_the_backend_dropped_is_never_sent_again(raw: RawBackend, warm: bool) -> None:
    async with gateway_on(raw) as gw:
        if warm:
            await _warm(gw)
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{gw.http}/api/drop/pay", content=b"{}", headers={"x-tag": "pay"}
            )
    assert response.status_code == 502
    assert [r.method for r in raw.requests if r.tag == "pay"] == ["POST"]


async def test_a_get_is_retried_once_only_after_a_reused_connection_closed(
    raw: RawBackend,
) -> None:
    async with gateway_on(raw) as gw, httpx.AsyncClient(timeout=10) as client:
        fresh = await client.get(f"{gw.http}/api/drop/a", headers={"x-tag": "fresh"})
        await _warm(gw)
        reused = await client.get(f"{gw.http}/api/drop/b", headers={"x-tag": "reused"})
    assert (fresh.status_code, reused.status_code) == (502, 502)
    assert [r.tag for r in raw.requests if r.tag in ("fresh", "reused")] == [
        "fresh",
        "reused",
        "reused",
    ]


# -- forwarding headers, paths, CORS, Host -----------------------------------------------------

CLAIMS = {
    "forwarded": "for=10.0.0.1;proto=https",
    "x-real-ip": "10.0.0.1",
    "x-forwarded-prefix": "/admin",
    "x-forwarded-port": "443",
    "x-forwarded-ssl": "on",
    "x-original-url": "/admin",
    "true-client-ip": "10.0.0.1",
}


@pytest.mark.parametrize("trusted", [False, True])
async def test_forwarding_claims_are_believed_only_from_a_trusted_proxy(
    raw: RawBackend, trusted: bool
) -> None:
    proxies = ("127.0.0.1",) if trusted else ()
    async with (
        gateway_on(raw, trusted_proxies=proxies) as gw,
        httpx.AsyncClient(timeout=10) as client,
    ):
        response = await client.get(
            f"{gw.http}/api/ok/claims", headers={"x-tag": "claims", **CLAIMS}
        )
    assert response.status_code == 200
    (parsed,) = raw.requests
    for name, value in CLAIMS.items():
        assert parsed.header(name) == (value if trusted else None)
    assert parsed.header("x-forwarded-for") == "127.0.0.1"


async def test_routing_reads_the_raw_path(raw: RawBackend) -> None:
    async with gateway_on(raw) as gw:
        encoded = await exchange(gw.port, b"GET /%61pi/ok/x HTTP/1.1\r\nhost: gw\r\n\r\n")
        plain = await exchange(gw.port, b"GET /api/ok/y HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert encoded.status == 404  # not /api as sent: the gateway's own (unknown) route
    assert plain.status == 200
    assert [r.target for r in raw.requests] == ["/ok/y"]


@pytest.mark.parametrize(
    "path",
    [
        b"/api/../admin",
        b"/api/ok/../../admin",
        b"/api/%2e%2e/admin",
        b"/api/.%2E/admin",
        b"/api/ok/..%2f..%2fadmin",
        b"/api/ok%5c..%5c..%5cadmin",
        b"/api/..",
    ],
)
async def test_dot_segments_that_climb_out_of_the_base_path_are_refused(
    raw: RawBackend, path: bytes
) -> None:
    async with gateway_on(raw, base_path="/v1") as gw:
        response = await exchange(gw.port, b"GET " + path + b" HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert response.status == 400
    assert b"climbs out" in response.body
    assert raw.requests == []


async def test_dot_segments_that_stay_inside_are_forwarded_as_sent(raw: RawBackend) -> None:
    async with gateway_on(raw, base_path="/v1") as gw:
        response = await exchange(gw.port, b"GET /api/ok/a/../b HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert response.status == 200
    assert [r.target for r in raw.requests] == ["/v1/ok/a/../b"]


async def test_cors_is_answered_by_the_gateway_alone(raw: RawBackend) -> None:
    async with (
        gateway_on(raw, cors_origins=("https://app.test",)) as gw,
        httpx.AsyncClient(timeout=10) as client,
    ):
        allowed = await client.get(f"{gw.http}/api/cors/a", headers={"origin": "https://app.test"})
        foreign = await client.get(f"{gw.http}/api/cors/b", headers={"origin": "https://evil.test"})
    assert allowed.headers.get_list("access-control-allow-origin") == ["https://app.test"]
    assert len(allowed.headers.get_list("access-control-allow-credentials")) == 1
    assert "access-control-allow-origin" not in foreign.headers
    assert "access-control-allow-credentials" not in foreign.headers
    for response in (allowed, foreign):
        assert "Origin" in response.headers.get_list("vary")
        assert "Accept-Encoding" in response.headers.get_list("vary")  # the backend's, kept


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET /api/ok/a HTTP/1.1\r\nhost: gw\r\nhost: evil.test\r\n\r\n", 400),
        (b"GET /api/ok/a HTTP/1.1\r\n\r\n", 400),
        (b"GET /api/ok/a HTTP/1.1\r\nhost: evil.test/admin?\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
        (b"GET /api/ok/a HTTP/1.0\r\n\r\n", 200),
        (b"GET /api/ok/a HTTP/1.1\r\nhost: [::1]:3000\r\n\r\n", 200),
    ],
)
async def test_host_must_be_one_well_formed_header(
    raw: RawBackend, request_bytes: bytes, expected: int
) -> None:
    async with gateway_on(raw) as gw:
        response = await exchange(gw.port, request_bytes)
    assert response.status == expected
    if expected == 400:
        assert raw.requests == []


# -- what the backend sends that its framing does not account for ------------------------------


@pytest.mark.parametrize(
    ("path", "method"),
    [("/api/extra/a", "GET"), ("/api/switch/a", "GET"), ("/api/head-body/a", "HEAD")],
)
async def test_a_response_with_unaccounted_bytes_is_502_and_its_connection_closed(
    raw: RawBackend, path: str, method: str
) -> None:
    async with gateway_on(raw) as gw, httpx.AsyncClient(timeout=10) as client:
        bad = await client.request(method, f"{gw.http}{path}", headers={"x-tag": "bad"})
        after = await client.get(f"{gw.http}/api/ok/after", headers={"x-tag": "after"})
    assert bad.status_code == 502
    assert "injected" not in str(after.headers)
    assert (after.status_code, after.text) == (200, "tag=after")
    await eventually(lambda: record_of(raw, "bad").closed_by_gateway)
    assert [r.tag for r in record_of(raw, "bad").requests] == ["bad"]


async def test_a_204_with_a_content_length_reaches_the_client_intact(raw: RawBackend) -> None:
    async with gateway_on(raw) as gw, httpx.AsyncClient(timeout=10) as client:
        for n in range(2):
            empty = await client.get(f"{gw.http}/api/nocontent/{n}")
            assert (empty.status_code, empty.content) == (204, b"")
            assert "content-length" not in empty.headers
        after = await client.get(f"{gw.http}/api/ok/after", headers={"x-tag": "after"})
    assert after.text == "tag=after"


# -- a client that leaves is a 499, not a 500 --------------------------------------------------


async def test_a_client_that_leaves_before_its_answer_is_counted_as_499(
    raw: RawBackend,
) -> None:
    async with gateway_on(raw) as gw:
        _, writer = await connect(gw.port)
        writer.write(content_length_upload("/api/ok/x", "leaver", 100) + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()

        async def counted() -> bool:
            async with httpx.AsyncClient(timeout=10) as client:
                text = (await client.get(f"{gw.http}/metrics")).text
            return 'kalami_http_requests_total{route="/api/{path}",status="499"} 1.0' in text

        await eventually(counted)
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"{gw.http}/metrics")).text
    assert 'status="500"' not in text

"""The /api pool against backends that close connections under it (issue 22, item 4).

A FastAPI route that raises gets Starlette's 500 with no ``Connection: close``, and uvicorn
closes the socket a moment later (after logging the traceback). Before the fix the pool took
that connection back, and a POST sent right after the 500 was written onto it and died there:
502, never retried (8 of 20 in the report; here, on uvloop, 104 to 163 of 200). Now a connection
that answered 5xx is never reused, an idle one is not handed out past the idle limit, and every
POST reaches the backend exactly once.

The FastAPI tests run the gateway on uvloop, as ``kalami-gateway serve`` does: on asyncio's own
loop the in-test gateway answers a kept-alive client connection ~40 ms late, which hides the
race (2 of 200). The rest use the raw-socket backend, which shows what happened on every
upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest
import uvloop

from kalami_gateway.adapters.backend.http import HttpxBackend, build_client
from kalami_gateway.app.container import Container
from kalami_gateway.app.settings import Settings
from kalami_gateway.domain.ports import BackendError
from tests.integration.conftest import Gateway, eventually, make_settings, running_gateway
from tests.integration.failing_backend import started_backend
from tests.integration.raw_backend import RawBackend
from tests.integration.test_proxy_attacks import (
    assert_nothing_smuggled,
    gateway_on,
    proxy_with,
    record_of,
)

ROUNDS = 200
WORKERS = 8


async def seen_by_backend(backend_url: str) -> Counter[str]:
    async with httpx.AsyncClient() as client:
        tags: list[str] = (await client.get(f"{backend_url}/seen")).json()
    return Counter(tags)


async def boom_then_post(client: httpx.AsyncClient, gw: Gateway, tag: str) -> tuple[int, int]:
    """A POST whose route raises, then at once a POST to a healthy route: both statuses."""
    failed = await client.post(f"{gw.http}/api/boom/{tag}-boom", json={"n": tag})
    after = await client.post(f"{gw.http}/api/echo/{tag}", json={"n": tag})
    if after.status_code == 200:
        assert after.json() == {"tag": tag, "body": {"n": tag}}
    return failed.status_code, after.status_code


def with_idle_limit(settings: Settings, seconds: float) -> Container:
    """The real container with another idle limit for the upstream pool."""
    return proxy_with(settings, idle_limit=seconds)


def on_fastapi(
    scenario: Callable[[Gateway], Awaitable[list[str]]],
    keepalive: int = 5,
    idle_limit: float | None = None,
) -> tuple[list[str], Counter[str]]:
    """Run ``scenario`` on uvloop against the gateway in front of a fresh FastAPI backend:
    the tags it sent, and how often each reached the backend's application."""

    async def run() -> tuple[list[str], Counter[str]]:
        async with started_backend(keepalive) as url:
            settings = make_settings(url, backend_timeout_ms=5000)
            container = None if idle_limit is None else with_idle_limit(settings, idle_limit)
            async with running_gateway(settings, container) as gw:
                tags = await scenario(gw)
            return tags, await seen_by_backend(url)

    return uvloop.run(run())


def test_a_post_right_after_a_500_reaches_the_backend() -> None:
    outcomes: list[tuple[int, int]] = []

    async def scenario(gw: Gateway) -> list[str]:
        tags = [f"s{n}" for n in range(ROUNDS)]
        async with httpx.AsyncClient(timeout=10) as client:
            outcomes.extend([await boom_then_post(client, gw, tag) for tag in tags])
        return tags

    tags, seen = on_fastapi(scenario)
    assert Counter(outcomes) == Counter({(500, 200): ROUNDS})
    assert seen == Counter(tags) + Counter(f"{t}-boom" for t in tags)  # each once, none twice


def test_concurrent_posts_after_500s_reach_the_backend() -> None:
    outcomes: list[tuple[int, int]] = []

    async def worker(gw: Gateway, tags: list[str]) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            outcomes.extend([await boom_then_post(client, gw, tag) for tag in tags])

    async def scenario(gw: Gateway) -> list[str]:
        tags = [[f"c{w}-{n}" for n in range(ROUNDS // WORKERS)] for w in range(WORKERS)]
        await asyncio.gather(*(worker(gw, mine) for mine in tags))
        return [tag for mine in tags for tag in mine]

    tags, seen = on_fastapi(scenario)
    assert Counter(outcomes) == Counter({(500, 200): ROUNDS})
    assert seen == Counter(tags) + Counter(f"{t}-boom" for t in tags)


@pytest.mark.parametrize(
    ("idle_limit", "pauses"),
    [
        # The pool's default limit (4 s) is above this backend's 1 s: every connection has
        # been closed by the backend, and seen to be, when the next POSTs come.
        (None, [1.3, 1.3, 1.3]),
        # Under it: pauses right at the backend's timeout, where its close and the next
        # request cross, find connections past the limit and open fresh ones.
        (0.8, [0.5, 0.95, 1.0, 1.0, 1.05]),
    ],
)
def test_a_backend_closing_idle_connections_never_fails_the_next_post(
    idle_limit: float | None, pauses: list[float]
) -> None:
    # uvicorn closes a connection idle for its keep-alive timeout (1 s here); the pool holds
    # several such connections when the next POSTs come.
    statuses: list[int] = []

    async def scenario(gw: Gateway) -> list[str]:
        tags: list[str] = []
        async with httpx.AsyncClient(timeout=10) as client:

            async def post(tag: str) -> None:
                tags.append(tag)
                response = await client.post(f"{gw.http}/api/echo/{tag}", json={"n": tag})
                statuses.append(response.status_code)

            for burst, pause in enumerate(pauses):
                await asyncio.gather(*(post(f"i{burst}-{n}") for n in range(6)))
                await asyncio.sleep(pause)
                await asyncio.gather(*(post(f"i{burst}-after-{n}") for n in range(3)))
        return tags

    tags, seen = on_fastapi(scenario, keepalive=1, idle_limit=idle_limit)
    assert statuses == [200] * len(tags)
    assert seen == Counter(tags)


# -- On the raw-socket backend: what happened on each upstream connection ---------------------


async def test_a_connection_that_answered_5xx_carries_nothing_more(raw: RawBackend) -> None:
    # This backend keeps the connection open after its 500: the gateway closes it after the
    # grace, and never writes on it again.
    async with gateway_on(raw) as gw, httpx.AsyncClient(timeout=10) as client:
        failed = await client.post(f"{gw.http}/api/fail/x", headers={"x-tag": "failed"}, json={})
        assert (failed.status_code, failed.text) == (500, "tag=failed")
        for n in range(3):
            ok = await client.post(f"{gw.http}/api/ok/x", headers={"x-tag": f"ok{n}"}, json={})
            assert (ok.status_code, ok.text) == (200, f"tag=ok{n}")
        retired = record_of(raw, "failed")
        assert not retired.closed_by_gateway  # left for the backend to close first
        await eventually(lambda: retired.closed_by_gateway, within=3)
        assert [r.tag for r in retired.requests] == ["failed"]
        assert record_of(raw, "ok0") is not retired
    assert_nothing_smuggled(raw)
    assert sorted(r.tag for r in raw.requests) == ["failed", "ok0", "ok1", "ok2"]


async def test_retiring_connections_are_bounded_and_closed_at_shutdown(raw: RawBackend) -> None:
    # A pool of 1 retires at most 1 connection at once; the next 5xx connection is closed at
    # once, and shutting down closes the one still retiring.
    async with gateway_on(raw, pool_size=1) as gw, httpx.AsyncClient(timeout=10) as client:
        for tag in ("first", "second"):
            response = await client.post(f"{gw.http}/api/fail/x", headers={"x-tag": tag})
            assert response.status_code == 500
        await eventually(lambda: record_of(raw, "second").closed_by_gateway, within=0.5)
        assert not record_of(raw, "first").closed_by_gateway
    await eventually(lambda: record_of(raw, "first").closed_by_gateway, within=0.5)
    assert len(raw.connections) == 2


async def test_an_idle_connection_past_the_limit_is_not_handed_out(raw: RawBackend) -> None:
    settings = make_settings(raw.url, backend_timeout_ms=1000)
    async with (
        running_gateway(settings, with_idle_limit(settings, 0.2)) as gw,
        httpx.AsyncClient(timeout=10) as client,
    ):
        for tag, pause in (("a", 0.0), ("b", 0.05), ("c", 0.3)):
            await asyncio.sleep(pause)
            response = await client.post(f"{gw.http}/api/ok/x", headers={"x-tag": tag}, json={})
            assert (response.status_code, response.text) == (200, f"tag={tag}")
        assert record_of(raw, "b") is record_of(raw, "a")  # reused within the limit
        assert record_of(raw, "c") is not record_of(raw, "a")  # past it: a fresh connection
        await eventually(lambda: record_of(raw, "a").closed_by_gateway)


async def test_the_backend_adapters_next_call_after_a_500_reaches_the_backend() -> None:
    """The session and turn calls' own client (httpx on aiohttp's pool): a call right after
    another learner's call got a 500 from an unhandled exception must not die on the
    connection uvicorn is closing."""
    async with started_backend() as url:
        client = build_client(url, 5.0)
        backend = HttpxBackend(client)
        try:
            failures = 0
            for n in range(50):
                with contextlib.suppress(BackendError):
                    await backend.end_session("token", f"boom-{n}")
                try:
                    await backend.end_session("token", f"ok-{n}")
                except BackendError:
                    failures += 1
            assert failures == 0
            async with httpx.AsyncClient() as plain:
                seen = (await plain.get(f"{url}/seen")).json()
            assert [tag for tag in seen if tag.startswith("ok-")] == [f"ok-{n}" for n in range(50)]
        finally:
            await client.aclose()

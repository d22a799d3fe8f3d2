"""The deadlines the HTTP backend client makes of BACKEND_TIMEOUT, by name: it bounds only the
connect; the call, the upload's writes and the readiness probe are the caller's."""

from __future__ import annotations

import httpx

from kalami_gateway.adapters.backend import BackendDeadlines, build_client


def test_only_the_connect_is_bounded_by_the_client() -> None:
    assert BackendDeadlines.from_backend_timeout(30.0) == BackendDeadlines(
        connect=30.0, pool=None, read=None, write=None
    )


async def test_the_client_carries_them() -> None:
    client = build_client("http://backend.test", 7.5)
    try:
        assert client.timeout == httpx.Timeout(None, connect=7.5)
    finally:
        await client.aclose()

"""The real gateway under uvicorn on a free port, against a real local backend server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from kalami_gateway.adapters.jwt_decoder import mint_token
from kalami_gateway.app import GatewayApp, create_app
from kalami_gateway.app.container import Container
from kalami_gateway.app.server import GatewayServer, uvicorn_config
from kalami_gateway.app.settings import Settings
from tests.integration.backend_server import BackendServer
from tests.integration.raw_backend import RawBackend
from tests.integration.ws_engines import engine_under_test

SECRET = "integration-secret-" + "0123456789abcdef" * 3
# The WebSocket engine of every gateway the suites start (tests/integration/ws_engines.py):
# KALAMI_TEST_WS_ENGINE, else the settings' default. The gateways started in-process get it
# from make_settings; those started as processes of their own inherit WS_ENGINE from this
# environment, written here even when it is the default, so that a WS_ENGINE of the shell
# running the tests (or of a .env) cannot put those on another engine than the rest.
WS_ENGINE = engine_under_test()
os.environ["WS_ENGINE"] = WS_ENGINE


def token_for(user: str, ttl: float = 3600) -> str:
    return mint_token(SECRET, user, time.time() + ttl)


@dataclass
class Gateway:
    app: GatewayApp
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, token: str | None = None) -> str:
        return f"ws://127.0.0.1:{self.port}/ws" + (f"?token={token}" if token is not None else "")


def make_settings(backend_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "backend_url": backend_url,
        "jwt_leeway_ms": 0,
        "log_level": "warning",
        "log_format": "json",
        "shutdown_timeout_ms": 3000,
        "ws_engine": WS_ENGINE,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_gateway(
    settings: Settings, container: Container | None = None
) -> AsyncIterator[Gateway]:
    app = create_app(settings, container)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = GatewayServer(uvicorn_config(app, settings), app, settings.shutdown_timeout)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise AssertionError("the gateway did not start within 30 s")
        await asyncio.sleep(0.01)
    try:
        yield Gateway(app, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def backend() -> AsyncIterator[BackendServer]:
    server = BackendServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def raw() -> AsyncIterator[RawBackend]:
    """A raw-socket backend that records every upstream connection (the proxy attack tests)."""
    backend = RawBackend()
    await backend.start()
    yield backend
    await backend.stop()


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def gateway(backend: BackendServer) -> AsyncIterator[Gateway]:
    async with running_gateway(make_settings(backend.url)) as gw:
        yield gw


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def recv_json(ws: ClientConnection, within: float = 10.0) -> dict[str, Any]:
    """The next message, as JSON."""
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within))
    return message


async def closed_with(ws: ClientConnection, within: float = 10.0) -> tuple[int | None, str]:
    """Read until the server closes; the close code and reason the client saw."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), within)
    except ConnectionClosed:
        return ws.close_code, ws.close_reason or ""


async def eventually(check: Callable[[], Any], within: float = 5.0) -> None:
    """Poll until ``check()`` is truthy (bounded): for effects that land after a reply."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


# The real Redis, isolated per test by key prefix (fixtures for the cluster tests).
from tests.integration.redis_fixtures import prefix, redis  # noqa: E402, F401

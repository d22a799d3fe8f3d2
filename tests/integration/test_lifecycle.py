"""The gateway as a process: start-up errors, graceful shutdown with clients, plain-uvicorn mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import SECRET, closed_with, token_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def gateway_env(backend_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "JWT_SECRET": SECRET,
        "BACKEND_URL": backend_url,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
    }
    env.update(extra)
    return env


@asynccontextmanager
async def process(
    args: Sequence[str], env: dict[str, str], port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The gateway as a process of its own (and its workers), stopped whatever happens.

    Its output goes to a file, not a pipe: a pipe nobody reads fills up and freezes the
    gateway mid-log, and a pipe that orphaned workers hold open keeps ``wait()`` from ever
    returning. It runs in a session of its own, so its workers are killed with it."""
    with tempfile.TemporaryFile() as output:
        proc = await asyncio.create_subprocess_exec(
            *args, env=env, stdout=output, stderr=asyncio.subprocess.STDOUT, start_new_session=True
        )
        try:
            async with httpx.AsyncClient() as client:
                for _ in range(300):
                    try:
                        if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the gateway did not start")
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and any worker left
            await asyncio.wait_for(proc.wait(), 10)


async def open_session(port: int, user: str) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token_for(user)}")
    assert json.loads(await ws.recv())["type"] == "connected"
    await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p"}}))
    assert json.loads(await ws.recv())["type"] == "session_started"
    return ws


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_drains_websockets_with_1001_and_exits_0(
    backend: BackendServer, sig: signal.Signals
) -> None:
    port = free_port()
    args = [sys.executable, "-m", "kalami_gateway", "serve"]
    async with process(args, gateway_env(backend.url, port), port) as proc:
        clients = [await open_session(port, f"user{n}") for n in range(3)]
        idle = await connect(f"ws://127.0.0.1:{port}/ws?token={token_for('idle')}")
        await idle.recv()
        proc.send_signal(sig)
        for ws in [*clients, idle]:
            assert await closed_with(ws) == (1001, "Server shutting down")
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    assert sorted(sid for sid, _ in backend.ended) == ["sess-1", "sess-2", "sess-3"]


async def test_plain_uvicorn_on_the_factory(backend: BackendServer) -> None:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "kalami_gateway.app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ws",
        "websockets-sansio",
        "--no-proxy-headers",
        "--timeout-graceful-shutdown",
        "5",
    ]
    async with process(args, gateway_env(backend.url, port), port) as proc:
        ws = await open_session(port, "plain")
        await ws.send('{"type":"ping"}')
        assert json.loads(await ws.recv())["type"] == "pong"
        proc.send_signal(signal.SIGTERM)
        # uvicorn closes sockets itself (1012) before the app's shutdown; the app still ends
        # the session at the backend. `kalami-gateway serve` sends 1001 instead.
        code, _ = await closed_with(ws)
        assert code == 1012
        # uvicorn.run re-raises the signal after its shutdown: the process ends by SIGTERM.
        assert await asyncio.wait_for(proc.wait(), 15) == -signal.SIGTERM
    assert [sid for sid, _ in backend.ended] == ["sess-1"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"GATEWAY_PORT": "abc"},
            "GATEWAY_PORT: expected a whole number from 0 to 65535, got 'abc'",
        ),
        ({"BACKEND_MODE": "grpc"}, "BACKEND_MODE: expected one of http, stub, got 'grpc'"),
        ({"JWT_SECRET": ""}, "JWT_SECRET is not set"),
        ({"TRUSTED_PROXIES": "notanip"}, "TRUSTED_PROXIES: 'notanip' is not an IP address"),
        ({"GATEWAY_HOST": "999.1.1.1"}, "GATEWAY_HOST: cannot resolve '999.1.1.1'"),
        ({"GATEWAY_HOST": "192.0.2.1"}, "GATEWAY_HOST/GATEWAY_PORT: cannot listen on 192.0.2.1"),
        ({"REDIS_URL": "redis://:hunter2@cache:port"}, "REDIS_URL: the port is not a number"),
    ],
)
async def test_a_bad_setting_stops_start_up_with_one_line(
    env: dict[str, str], message: str
) -> None:
    line = await refused_start(gateway_env("http://127.0.0.1:9", free_port(), **env))
    assert message in line
    assert "hunter2" not in line


async def refused_start(env: dict[str, str]) -> str:
    """Run ``serve`` with a bad setting: exit 2, one line on stderr, no traceback; the line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kalami_gateway",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert "Traceback" not in err.decode()
    return lines[0]


async def test_a_port_in_use_is_one_line_naming_the_variables() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = await refused_start(gateway_env("http://127.0.0.1:9", port))
    assert f"GATEWAY_HOST/GATEWAY_PORT: cannot listen on 127.0.0.1:{port}" in line


async def test_serve_help_lists_every_environment_variable() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kalami_gateway", "serve", "--help", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    for name in ("JWT_SECRET", "BACKEND_TIMEOUT", "END_RETRY_WINDOW", "REDIS_URL", "WORKERS"):
        assert f"  {name} " in text


async def test_the_token_command_mints_a_token_the_gateway_accepts() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kalami_gateway",
        "token",
        "--sub",
        "me",
        "--ttl",
        "60",
        env=gateway_env("http://127.0.0.1:9", 3000),
        stdout=asyncio.subprocess.PIPE,
    )
    minted, _ = await proc.communicate()
    assert proc.returncode == 0
    from kalami_gateway.adapters.jwt_decoder import PyJwtDecoder

    claims = PyJwtDecoder(SECRET).decode(minted.decode().strip())
    assert claims["sub"] == "me"

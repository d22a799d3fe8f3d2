"""The cluster on the real Redis: instances that share one directory, one cap and one push
channel (two gateways on two ports, in this process or as processes of their own)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    Gateway,
    closed_with,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.redis_fixtures import REDIS_URL, delete_prefix
from tests.integration.test_lifecycle import free_port, gateway_env, process, refused_start

PUSH_KEY = "push-key-for-tests-0123456789"


@asynccontextmanager
async def cluster(
    backend: BackendServer, prefix: str, size: int = 2, **overrides: Any
) -> AsyncIterator[list[Gateway]]:
    settings = make_settings(
        backend.url,
        redis_url=REDIS_URL,
        redis_key_prefix=prefix,
        push_api_key=PUSH_KEY,
        **overrides,
    )
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_gateway(settings)) for _ in range(size)]


async def device(gateway: Gateway, user: str) -> ClientConnection:
    ws = await connect(gateway.ws(token_for(user)))
    assert (await recv_json(ws))["type"] == "connected"
    return ws


async def stats_of(gateway: Gateway) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        body: dict[str, Any] = (await client.get(f"{gateway.http}/stats")).json()
        return body


async def push(
    gateway: Gateway, body: Any, key: str | None = PUSH_KEY, **kw: Any
) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=10) as client:
        if isinstance(body, bytes):
            return await client.post(
                f"{gateway.http}/internal/push",
                content=body,
                headers={**headers, "content-type": "application/json"},
            )
        return await client.post(f"{gateway.http}/internal/push", json=body, headers=headers)


async def test_every_instance_gives_the_same_cluster_figures(
    backend: BackendServer, prefix: str
) -> None:
    async with cluster(backend, prefix) as (a, b):
        sockets = [await device(a, "alice"), await device(a, "bob"), await device(b, "alice")]
        sa, sb = await stats_of(a), await stats_of(b)
        assert sa["cluster"] == sb["cluster"] == {"instances": 2, "connections": 3, "users": 2}
        assert (sa["websocket"]["connections"], sb["websocket"]["connections"]) == (2, 1)
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{a.http}/metrics")).text
        assert "kalami_cluster_instances 2.0" in text
        assert "\nkalami_cluster_reachable 1.0\n" in text
        assert "kalami_cluster_connections 3.0" in text
        assert "kalami_websocket_connections 2.0" in text
        for ws in sockets:
            await ws.close()
        await eventually(lambda: _cluster_connections(a, 0))


async def _cluster_connections(gateway: Gateway, expected: int) -> bool:
    return bool((await stats_of(gateway))["cluster"]["connections"] == expected)


async def test_a_push_through_one_instance_reaches_the_users_devices_on_every_instance(
    backend: BackendServer, prefix: str
) -> None:
    async with cluster(backend, prefix) as (a, b):
        phone, laptop, other = (
            await device(a, "alice"),
            await device(b, "alice"),
            await device(b, "bob"),
        )
        response = await push(a, {"userId": "alice", "payload": {"kind": "streak", "days": 3}})
        assert response.status_code == 202
        assert response.json() == {"userId": "alice", "connections": 2}
        for ws in (phone, laptop):
            assert await recv_json(ws) == {
                "type": "push",
                "payload": {"kind": "streak", "days": 3},
            }
        await other.send('{"type":"ping"}')
        assert (await recv_json(other))["type"] == "pong"  # bob got nothing before it
        nobody = await push(b, {"userId": "nobody", "payload": {}})
        assert nobody.json() == {"userId": "nobody", "connections": 0}


@pytest.mark.parametrize(
    ("body", "key", "status", "words"),
    [
        ({"userId": "a", "payload": {}}, None, 401, "key"),
        ({"userId": "a", "payload": {}}, "wrong-key-of-the-same-size-xx", 401, "key"),
        (b"{not json", PUSH_KEY, 422, "Invalid push"),
        ({"payload": {}}, PUSH_KEY, 422, "userId"),
        ({"userId": "", "payload": {}}, PUSH_KEY, 422, "userId"),
        ({"userId": "a", "payload": [1, 2]}, PUSH_KEY, 422, "payload"),
        ({"userId": "a", "payload": "text"}, PUSH_KEY, 422, "payload"),
        ({"userId": "a", "payload": {"blob": "x" * 70_000}}, PUSH_KEY, 413, ""),
    ],
)
async def test_the_push_api_refuses_what_it_must(
    backend: BackendServer,
    prefix: str,
    body: Any,
    key: str | None,
    status: int,
    words: str,
) -> None:
    async with cluster(backend, prefix, size=1) as (a,):
        response = await push(a, body, key)
    assert response.status_code == status
    assert words in response.json()["error"]


async def test_the_push_api_is_off_without_a_key_documented_with_one_and_not_under_api(
    backend: BackendServer, prefix: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        async with running_gateway(make_settings(backend.url)) as plain:
            off = await client.post(f"{plain.http}/internal/push", json={})
            schema_without = (await client.get(f"{plain.http}/schema/openapi.json")).json()
        async with cluster(backend, prefix, size=1) as (a,):
            schema = (await client.get(f"{a.http}/schema/openapi.json")).json()
            proxied = await client.post(
                f"{a.http}/api/internal/push",
                json={"userId": "a", "payload": {}},
                headers={"Authorization": f"Bearer {PUSH_KEY}"},
            )
    assert off.status_code == 404
    assert "/internal/push" not in schema_without["paths"]
    assert "post" in schema["paths"]["/internal/push"]
    assert proxied.json()["path"] == "/internal/push"  # the backend's echo, not a push
    assert backend.requests[-1].raw_path == "/internal/push"


async def test_the_cap_holds_across_instances_under_concurrent_connects(
    backend: BackendServer, prefix: str
) -> None:
    async with cluster(backend, prefix, max_connections_per_user=3) as (a, b):

        async def attempt(gateway: Gateway) -> str:
            ws = await connect(gateway.ws(token_for("alice")))
            try:
                message = await recv_json(ws)
                return str(message["type"])
            except Exception:  # closed before anything was sent
                code, reason = await closed_with(ws)
                return f"{code} {reason}"

        outcomes = await asyncio.gather(*(attempt(g) for _ in range(6) for g in (a, b)))
        assert outcomes.count("connected") == 3
        assert outcomes.count("4004 Too many connections") == 9
        assert (await stats_of(a))["cluster"]["connections"] == 3


async def test_figures_recover_after_redis_connections_are_killed_and_after_data_loss(
    backend: BackendServer, prefix: str, redis: Redis
) -> None:
    async with cluster(backend, prefix) as (a, b):
        sockets = [await device(a, "alice"), await device(b, "bob"), await device(b, "carol")]
        await redis.client_kill_filter(_type="normal", skipme=True)
        assert (await stats_of(a))["cluster"] == {"instances": 2, "connections": 3, "users": 3}
        await delete_prefix(redis, prefix)  # Redis restarted, nothing kept
        # Within one renewal (3 s) every instance writes its connections back.
        await eventually(
            lambda: _cluster_is(a, {"instances": 2, "connections": 3, "users": 3}), within=8
        )
        for ws in sockets:
            await ws.close()


async def _cluster_is(gateway: Gateway, expected: dict[str, int]) -> bool:
    return bool((await stats_of(gateway))["cluster"] == expected)


async def test_an_unreachable_redis_is_survived_and_reported(
    backend: BackendServer, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(backend.url, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with running_gateway(settings) as gw:
        ws = await device(gw, "alice")
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"
        async with httpx.AsyncClient(timeout=10) as client:
            ready = await client.get(f"{gw.http}/health/ready")
            metrics = (await client.get(f"{gw.http}/metrics")).text
        assert ready.status_code == 503
        assert ready.json()["redis"] == "unreachable"
        assert "\nkalami_cluster_reachable 0.0\n" in metrics
        stats = await stats_of(gw)
        assert stats["cluster"] == {"instances": 1, "connections": 1, "users": 1}
        await asyncio.sleep(3.5)  # at least one more failed renewal
    assert capsys.readouterr().out.count('"redis_unreachable"') == 1  # once per outage


async def test_a_killed_instance_leaves_the_directory_within_the_lease(
    backend: BackendServer, prefix: str
) -> None:
    port = free_port()
    env = gateway_env(backend.url, port, REDIS_URL=REDIS_URL, REDIS_KEY_PREFIX=prefix)
    args = [sys.executable, "-m", "kalami_gateway", "serve"]
    async with cluster(backend, prefix, size=1) as (a,), process(args, env, port) as doomed:
        await device(a, "alice")
        for user in ("alice", "bob"):
            ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token_for(user)}")
            assert json.loads(await ws.recv())["type"] == "connected"
        assert (await stats_of(a))["cluster"] == {"instances": 2, "connections": 3, "users": 2}
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        await eventually(
            lambda: _cluster_is(a, {"instances": 1, "connections": 1, "users": 1}), within=15
        )


@pytest.mark.parametrize(
    ("grace", "close"),
    [
        ("30000", (1012, "Service restart")),  # sessions parked in Redis: reconnect, resume
        ("0", (1001, "Server shutting down")),  # nothing to resume
    ],
)
async def test_serve_with_two_workers_serves_counts_and_drains(
    backend: BackendServer, prefix: str, grace: str, close: tuple[int, str]
) -> None:
    port = free_port()
    env = gateway_env(
        backend.url, port, REDIS_URL=REDIS_URL, REDIS_KEY_PREFIX=prefix, RESUME_GRACE=grace
    )
    args = [sys.executable, "-m", "kalami_gateway", "serve", "--workers", "2"]
    async with process(args, env, port) as proc:
        sockets = []
        for n in range(8):
            ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token_for(f'u{n}')}")
            assert json.loads(await ws.recv())["type"] == "connected"
            sockets.append(ws)
        async with httpx.AsyncClient() as client:

            async def both_workers_counted() -> bool:
                body = (await client.get(f"http://127.0.0.1:{port}/stats")).json()
                return bool(body["cluster"] == {"instances": 2, "connections": 8, "users": 8})

            await eventually(both_workers_counted)
        proc.send_signal(signal.SIGTERM)
        for ws in sockets:
            assert await closed_with(ws) == close
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_workers_without_redis_refuse_to_start() -> None:
    env = gateway_env("http://127.0.0.1:9", free_port(), WORKERS="3")
    assert "WORKERS=3 needs REDIS_URL" in await refused_start(env)


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == str(pid):
                found.add(int(entry.name))
    return found


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (spawn also starts a resource tracker: not a worker)."""
    return {pid for pid in children_of(supervisor) if "spawn_main" in cmdline(pid)}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def test_a_worker_that_dies_is_replaced(
    backend: BackendServer, prefix: str, redis: Redis
) -> None:
    port = free_port()
    env = gateway_env(backend.url, port, REDIS_URL=REDIS_URL, REDIS_KEY_PREFIX=prefix)
    args = [sys.executable, "-m", "kalami_gateway", "serve", "--workers", "2"]
    async with process(args, env, port) as proc, httpx.AsyncClient() as client:
        await eventually(lambda: len(worker_pids(proc.pid)) == 2)
        victim = min(worker_pids(proc.pid))
        os.kill(victim, signal.SIGKILL)
        await eventually(
            lambda: victim not in (now := worker_pids(proc.pid)) and len(now) == 2, within=10
        )

        async def directory_is_the_live_workers() -> bool:
            # Instance ids are host:pid:random; the dead one's lease lapses, the new one joins.
            members = await redis.zrange(f"{prefix}instances", 0, -1)
            ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
            pids = {int(member.split(":")[1]) for member in ids}
            stats = (await client.get(f"http://127.0.0.1:{port}/stats")).json()
            return pids == worker_pids(proc.pid) and stats["cluster"]["instances"] == 2

        await eventually(directory_is_the_live_workers, within=25)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0

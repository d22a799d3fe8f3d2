"""What every socket case does around its measurement: mint tokens, open many clients at a
bounded concurrency, start their sessions, close them, and wait until the target's
``/stats`` says they are gone; ``bounded`` keeps every case under its deadline."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable
from typing import Any, TypeVar

from bench.targets import SECRET, FloorServer, GatewayProcess, NodeAnchor
from bench.wsload import TEXT, WsClient, client_frame, open_client
from kalami_gateway.adapters.jwt_decoder import mint_token

T = TypeVar("T")
CASE_DEADLINE_S = 120.0  # no case may run longer than this, whatever the counts
Target = GatewayProcess | NodeAnchor | FloorServer


async def bounded(coro: Awaitable[T]) -> T:
    return await asyncio.wait_for(coro, CASE_DEADLINE_S)


def token(user: str) -> str:
    return mint_token(SECRET, user, time.time() + 3600)


def stats(gateway: Target) -> dict[str, Any]:
    with urllib.request.urlopen(f"{gateway.http}/stats", timeout=5) as response:  # noqa: S310
        body: dict[str, Any] = json.loads(response.read())
        return body


async def connect_many(port: int, count: int, concurrency: int) -> list[WsClient]:
    # Tokens are minted before the clock starts: signing is the client's cost, not the gateway's.
    tokens = [token(f"user-{n}") for n in range(min(count, 500))]
    return await connect_with(port, [tokens[n % len(tokens)] for n in range(count)], concurrency)


async def connect_with(port: int, tokens: list[str], concurrency: int) -> list[WsClient]:
    gate = asyncio.Semaphore(concurrency)

    async def one(user_token: str) -> WsClient:
        async with gate:
            return await open_client(port, user_token)

    return list(await asyncio.gather(*(one(t) for t in tokens)))


def close_all(clients: list[WsClient]) -> None:
    for client in clients:
        client.close()


def open_connections(target: Target) -> int:
    """What /stats says: the cluster's figure (the gateway), or the process's (Node)."""
    body = stats(target)
    count: int = (body.get("cluster") or body["websocket"])["connections"]
    return count


async def until_zero(gateway: Target) -> None:
    for _ in range(200):
        if open_connections(gateway) == 0:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("connections did not drain after the clients closed")


async def start_session(client: WsClient, expect: bytes = b'"session_started"') -> None:
    client.send(client_frame(TEXT, b'{"type":"start_session","payload":{"profileId":"bench"}}'))
    reply = await client.recv()
    if expect not in reply:
        raise RuntimeError(f"start_session failed: {reply[:120]!r}")

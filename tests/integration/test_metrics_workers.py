"""``GET /metrics`` on ``serve --workers 2``, over real sockets: whichever worker answers, one
scrape is the whole group's — every counter monotonic across scrapes and equal to the traffic
made, the connections summed over the workers, each worker's process figures and load against
its ceiling by its real pid, which ``/stats`` lists too — and a worker that dies takes its
connections, process figures and load with it, not its counts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any, Final

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from kalami_gateway import __version__
from tests.integration.conftest import eventually, recv_json, token_for
from tests.integration.redis_fixtures import REDIS_URL
from tests.integration.test_cluster import worker_pids
from tests.integration.test_lifecycle import free_port, gateway_env, process

SERVE: Final = [sys.executable, "-m", "kalami_gateway", "serve", "--workers", "2"]
SLOTS: Final = (0, 1)
INDEX: Final = 'kalami_http_requests_total{route="/",status="200"}'
PINGS: Final = 'kalami_websocket_messages_total{type="ping"}'
PINGS_EACH: Final = 3
PROCESS_FIGURES: Final = (
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_cpu_seconds_total",
)
PER_PROCESS: Final = (
    "kalami_process_websocket_connections",
    "kalami_process_client_sockets",
    "kalami_process_connection_ceiling",
    "kalami_process_websocket_refused",
)
# At least this much traffic, and more until each worker has had some (bounded).
MIN_SOCKETS: Final = 6
MAX_SOCKETS: Final = 60
MIN_REQUESTS: Final = 40
MAX_REQUESTS: Final = 400


def key(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if inner else name


class Scrapes:
    """Every scrape of one gateway, each on a connection of its own (so any worker may answer),
    checked against the one before: no counter or histogram series goes backwards or goes
    away (a dead process's own ``process_*`` series aside)."""

    def __init__(self, port: int) -> None:
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._counters: dict[str, float] = {}
        self.count = 0

    async def scrape(self) -> dict[str, float]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(self._url)
        assert response.status_code == 200
        values: dict[str, float] = {}
        counters: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                name = key(sample.name, sample.labels)
                values[name] = sample.value
                if family.type in ("counter", "histogram"):
                    counters[name] = sample.value
        for name, before in self._counters.items():
            if name.startswith("process_") and name not in counters:
                continue  # that process has gone
            assert name in counters, f"{name} went away (scrape {self.count})"
            assert counters[name] >= before, f"{name} went back from {before} to {counters[name]}"
        self._counters = counters
        self.count += 1
        return values

    async def until(self, *checks: tuple[str, float]) -> dict[str, float]:
        """Scrape until every (series, value) holds: other workers' figures arrive within
        their flush interval (one second)."""
        found: dict[str, float] = {}

        async def holds() -> bool:
            nonlocal found
            found = await self.scrape()
            return all(found.get(name) == value for name, value in checks)

        try:
            await eventually(holds, within=15)
        except AssertionError:
            wrong = {name: found.get(name) for name, value in checks if found.get(name) != value}
            raise AssertionError(f"after {self.count} scrapes, still {wrong}") from None
        return found


def metrics_dir(worker: int) -> str:
    """The shared directory a worker was given, from its environment."""
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return entry.split(b"=", 1)[1].decode()
    raise AssertionError(f"worker {worker} has no PROMETHEUS_MULTIPROC_DIR")


def own_count(directory: str, slot: int, series: str) -> float:
    """What the worker in ``slot`` alone has written of ``series`` (its counter file)."""
    path = os.path.join(directory, f"counter_{slot}.db")
    if not os.path.exists(path):
        return 0.0
    for family in MultiProcessCollector.merge([path]):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            if key(sample.name, sample.labels) == series:
                return float(sample.value)
    return 0.0


async def held_by(redis: Redis, prefix: str) -> dict[int, int]:
    """Open connections by worker pid, from the cluster's directory (ids are host:pid:…)."""
    held = {}
    for member in await redis.zrange(f"{prefix}instances", 0, -1):
        instance = member.decode() if isinstance(member, bytes) else str(member)
        held[int(instance.split(":")[1])] = int(await redis.hlen(f"{prefix}instance:{instance}"))
    return held


@contextlib.asynccontextmanager
async def sockets_on_every_worker(
    port: int, redis: Redis, prefix: str, workers: set[int]
) -> AsyncIterator[list[ClientConnection]]:
    """Connections opened one at a time, ``MIN_SOCKETS`` and more until each worker holds
    at least one."""
    opened: list[ClientConnection] = []
    try:
        while True:
            ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token_for(f'u{len(opened)}')}")
            opened.append(ws)
            assert (await recv_json(ws))["type"] == "connected"
            held = await held_by(redis, prefix)
            if len(opened) >= MIN_SOCKETS and all(held.get(pid, 0) > 0 for pid in workers):
                break
            assert len(opened) < MAX_SOCKETS, f"every connection went to one worker: {held}"
        yield opened
    finally:
        for ws in opened:
            await ws.close()


def all_flushed(directory: str, sent: int) -> bool:
    return sum(own_count(directory, slot, INDEX) for slot in SLOTS) == sent


def listing(directory: str) -> list[str]:
    return sorted(os.listdir(directory))


def removed(path: str) -> bool:
    return not os.path.exists(path)


async def index_requests_on_every_worker(port: int, directory: str) -> int:
    """``GET /`` in batches, each on a connection of its own, ``MIN_REQUESTS`` and more until
    each worker has answered some (seen in its own file once it has flushed); how many were
    sent."""
    sent = 0
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        while True:
            batch = await asyncio.gather(
                *(client.get(f"http://127.0.0.1:{port}/") for _ in range(10))
            )
            assert all(response.status_code == 200 for response in batch)
            sent += len(batch)
            await eventually(partial(all_flushed, directory, sent), within=10)
            if sent >= MIN_REQUESTS and all(own_count(directory, slot, INDEX) for slot in SLOTS):
                return sent
            assert sent < MAX_REQUESTS, "every request went to one worker"


def by_pid(scraped: dict[str, float], family: str) -> dict[int, float]:
    """A per-process family's values by their pid label."""
    prefix = f'{family}{{pid="'
    return {int(k[len(prefix) : -2]): v for k, v in scraped.items() if k.startswith(prefix)}


async def loads_of(scrapes: Scrapes, workers: set[int], opened: int) -> dict[str, float]:
    """Scrape until the per-process gauges name exactly ``workers`` and their WebSockets sum
    to the group's ``kalami_websocket_connections``, ``opened`` (each worker's as it last
    flushed, within a second)."""
    found: dict[str, float] = {}

    async def named() -> bool:
        nonlocal found
        found = await scrapes.scrape()
        each = by_pid(found, PER_PROCESS[0])
        group = found["kalami_websocket_connections"]
        return set(each) == workers and sum(each.values()) == group == opened

    await eventually(named, within=15)
    return found


async def stats_of(port: int, workers: set[int], opened: int) -> dict[str, Any]:
    """``GET /stats`` until its ``processes`` are ``workers``' and hold ``opened`` WebSockets
    between them (whichever worker answers: each on a connection of its own)."""
    found: dict[str, Any] = {}

    async def listed() -> bool:
        nonlocal found
        async with httpx.AsyncClient(timeout=10) as client:
            found = (await client.get(f"http://127.0.0.1:{port}/stats")).json()
        processes = found["processes"]
        return {p["pid"] for p in processes} == workers and sum(
            p["connections"] for p in processes
        ) == opened

    await eventually(listed, within=15)
    return found


async def ping(ws: ClientConnection) -> None:
    await ws.send('{"type":"ping"}')
    assert (await recv_json(ws))["type"] == "pong"


async def after_death(
    scrapes: Scrapes, requests: int, opened: int, lost: int, replacement: int
) -> dict[str, float]:
    """Scrape until the dead worker's connections have left the gauges and its replacement's
    process figures are in; its counts are still in the counters throughout."""
    found: dict[str, float] = {}

    async def settled() -> bool:
        nonlocal found
        found = await scrapes.scrape()
        assert found[INDEX] == requests
        assert found[PINGS] == opened * PINGS_EACH
        assert found["kalami_websocket_connections_accepted_total"] == opened
        return (
            found["kalami_websocket_connections"] == opened - lost
            and f'process_open_fds{{pid="{replacement}"}}' in found
        )

    await eventually(settled, within=15)
    return found


async def test_one_scrape_is_the_whole_groups_and_a_dead_workers_counts_stay(
    prefix: str, redis: Redis
) -> None:
    port = free_port()
    env = gateway_env(
        "http://127.0.0.1:9",
        port,
        BACKEND_MODE="stub",
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
        LOG_LEVEL="warning",
    )
    async with process(SERVE, env, port) as supervisor:
        await eventually(lambda: len(worker_pids(supervisor.pid)) == 2, within=30)
        workers = worker_pids(supervisor.pid)
        directory = metrics_dir(min(workers))
        assert metrics_dir(max(workers)) == directory
        scrapes = Scrapes(port)

        requests = await index_requests_on_every_worker(port, directory)
        async with sockets_on_every_worker(port, redis, prefix, workers) as sockets:
            for ws in sockets:
                for _ in range(PINGS_EACH):
                    await ping(ws)
            opened = len(sockets)
            scraped = await scrapes.until(
                (INDEX, requests),
                (PINGS, opened * PINGS_EACH),
                ("kalami_websocket_connections", opened),
                ("kalami_websocket_users", opened),
                ("kalami_websocket_connections_accepted_total", opened),
                ("kalami_cluster_instances", 2),
                ("kalami_cluster_connections", opened),
                (f'kalami_build_info{{version="{__version__}"}}', 1),
            )
            for pid in workers:
                for name in PROCESS_FIGURES:
                    assert f'{name}{{pid="{pid}"}}' in scraped
                assert scraped[f'process_open_fds{{pid="{pid}"}}'] > 0
            assert f'process_open_fds{{pid="{supervisor.pid}"}}' not in scraped
            loads = await loads_of(scrapes, workers, opened)
            for family in PER_PROCESS:
                assert set(by_pid(loads, family)) == workers
            for pid in workers:
                connections = by_pid(loads, PER_PROCESS[0])[pid]
                assert by_pid(loads, "kalami_process_client_sockets")[pid] >= connections
                assert by_pid(loads, "kalami_process_connection_ceiling")[pid] > 0
            assert loads['kalami_websocket_refused_total{reason="ceiling"}'] == 0
            assert loads['kalami_accept_errors_total{errno="EMFILE"}'] == 0

            stats = await stats_of(port, workers, opened)
            assert stats["processes"] == sorted(stats["processes"], key=lambda p: p["pid"])
            for each in stats["processes"]:
                assert each["ceiling"] > 0
                assert each["clientSockets"] >= each["connections"]
                assert 0 < each["openFiles"] <= each["openFilesLimit"]
                assert each["refused"] == 0
            spread_of = [p["connections"] for p in stats["processes"]]
            mean = sum(spread_of) / len(spread_of)
            assert stats["spread"] == round((max(spread_of) / mean - 1) * 100, 1)
            for _ in range(20):  # whoever answers, the same totals
                again = await scrapes.scrape()
                assert again[INDEX] == requests
                assert again["kalami_websocket_connections"] == opened

            held = await held_by(redis, prefix)
            files = listing(directory)
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            await eventually(
                lambda: victim not in (now := worker_pids(supervisor.pid)) and len(now) == 2,
                within=15,
            )
            replacement = (worker_pids(supervisor.pid) - workers).pop()
            after = await after_death(scrapes, requests, opened, held[victim], replacement)
            assert not [name for name in after if f'pid="{victim}"' in name]
            survivors = {max(workers), replacement}
            await loads_of(scrapes, survivors, opened - held[victim])
            await stats_of(port, survivors, opened - held[victim])
            # The replacement took over its slot's files: the directory does not grow.
            await eventually(lambda: listing(directory) == files, within=15)
            for _ in range(10):
                again = await scrapes.scrape()
                assert again[INDEX] == requests

        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(supervisor.wait(), 20) == 0
        assert removed(directory)

"""The limit of sockets a process may hold, met loudly (issue 29), on real processes.

Past its ceiling (``MAX_CLIENT_SOCKETS``, or the open-file limit less what the process keeps
for itself) a gateway answers every WebSocket handshake 503 with ``Retry-After`` — none is
reset or closed unanswered — while the health probes, ``/stats`` and ``/metrics`` still
answer; the burst is logged once. With its open-file limit reached even so (a ceiling set
above it), each accept that fails is counted, logged once, and its client still answered
503. With ``--workers`` every worker gets its share of new connections (a listening socket
each, ``SO_REUSEPORT``), and a second ``serve`` on the same port fails to start.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.integration.conftest import eventually, token_for
from tests.integration.raw_websocket import handshake
from tests.integration.redis_fixtures import REDIS_URL
from tests.integration.test_cluster import worker_pids
from tests.integration.test_lifecycle import free_port, gateway_env

SERVE = [sys.executable, "-m", "kalami_gateway", "serve"]


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    def events(self, name: str) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        found = [json.loads(line) for line in lines if f'"{name}"' in line]
        return [event for event in found if event.get("event") == name]


@asynccontextmanager
async def serving(
    env: dict[str, str], port: int, args: Sequence[str] = (), open_files: int | None = None
) -> AsyncIterator[Served]:
    """``kalami-gateway serve`` as a process of its own (its log in a file), stopped whatever
    happens; ``open_files``: its open-file limit."""

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "gateway.log"
        with log.open("wb") as output:
            proc = await asyncio.create_subprocess_exec(
                *SERVE,
                *args,
                env=env,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=limit_files,
            )
        try:
            async with httpx.AsyncClient() as client:

                async def healthy() -> bool:
                    try:
                        return (await client.get(f"http://127.0.0.1:{port}/health")).is_success
                    except httpx.TransportError:
                        return False

                for _ in range(600):
                    if await healthy():
                        break
                    if proc.returncode is not None:
                        raise AssertionError(f"the gateway exited: {log.read_text()[-2000:]}")
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the gateway did not start")
            yield Served(proc, port, log)
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()


@dataclass
class Handshake:
    """One client's handshake: its answer's status line (or how the connection ended) and,
    while it is open, its streams."""

    outcome: str
    retry_after: str | None
    writer: asyncio.StreamWriter | None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def attempt(port: int, user: str) -> Handshake:
    """A WebSocket handshake on a raw socket: ``101``, ``503`` (any status), or ``reset``,
    ``closed`` (no answer) or ``timeout``."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return Handshake(f"connect failed: {exc}", None, None)
    try:
        writer.write(handshake(token_for(user)))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    except asyncio.IncompleteReadError:
        writer.close()
        return Handshake("closed", None, None)
    except ConnectionResetError:
        writer.close()
        return Handshake("reset", None, None)
    except TimeoutError:
        writer.close()
        return Handshake("timeout", None, None)
    status = head.split(b" ", 2)[1].decode()
    retry = re.search(rb"\r\nretry-after: *(\d+)", head, re.IGNORECASE)
    if status != "101":
        writer.close()
        return Handshake(status, retry.group(1).decode() if retry else None, None)
    return Handshake(status, None, writer)


def metric(text: str, name: str, labels: str = "") -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_past_the_ceiling_every_handshake_gets_503_and_the_rest_still_answers() -> None:
    port = free_port()
    env = gateway_env("http://127.0.0.1:9", port, BACKEND_MODE="stub", MAX_CLIENT_SOCKETS="20")
    async with serving(env, port) as gateway:
        held = [await attempt(port, f"user-{n}") for n in range(20)]
        assert Counter(h.outcome for h in held) == {"101": 20}

        over = await asyncio.gather(*(attempt(port, f"over-{n}") for n in range(30)))
        assert Counter(h.outcome for h in over) == {"503": 30}
        assert {h.retry_after for h in over} == {"5"}

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/health")).status_code == 200
            stats = (await client.get("/stats")).json()
            assert stats["websocket"]["connections"] == 20
            scrape = (await client.get("/metrics")).text
        assert metric(scrape, "kalami_websocket_refused_total", 'reason="ceiling"') == 30
        assert metric(scrape, "kalami_process_connection_ceiling") == 20
        assert len(gateway.events("ws_ceiling_reached")) == 1  # once for the burst

        for h in held[:5]:
            h.close()
        await eventually(lambda: len(gateway.events("ws_disconnected")) == 5)
        again = await attempt(port, "again")
        assert again.outcome == "101"
        again.close()
        [cleared] = gateway.events("ws_ceiling_cleared")
        assert cleared["refused"] == 30
        for h in held[5:]:
            h.close()


async def test_an_accept_out_of_files_is_answered_503_and_counted() -> None:
    """A ceiling set above what the open-file limit allows: the accepts fail (EMFILE) and every
    client is still answered, 101 or 503 — none reset or closed without an answer."""
    port = free_port()
    env = gateway_env("http://127.0.0.1:9", port, BACKEND_MODE="stub", MAX_CLIENT_SOCKETS="100000")
    async with serving(env, port, open_files=160) as gateway:
        tries = await asyncio.gather(*(attempt(port, f"user-{n}") for n in range(300)))
        outcomes = Counter(h.outcome for h in tries)
        assert set(outcomes) == {"101", "503"}, outcomes
        assert outcomes["503"] >= 140  # 160 files cannot hold 300 sockets
        assert {h.retry_after for h in tries if h.outcome == "503"} == {"5"}
        for h in tries:
            h.close()

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await eventually(
                lambda: len(gateway.events("ws_disconnected")) == outcomes["101"], within=10
            )
            assert (await client.get("/health")).status_code == 200
            scrape = (await client.get("/metrics")).text
        assert metric(scrape, "kalami_accept_errors_total", 'errno="EMFILE"') == outcomes["503"]
        [failed] = gateway.events("accept_out_of_files")  # once for the burst
        assert failed["errno"] == "EMFILE"
        [recovered] = gateway.events("accept_recovered")
        assert recovered["failed"] == outcomes["503"]


def sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


async def test_every_worker_gets_its_share_of_new_connections(prefix: str) -> None:
    port = free_port()
    env = gateway_env(
        "http://127.0.0.1:9",
        port,
        BACKEND_MODE="stub",
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
        LOG_LEVEL="warning",
        MAX_CONNECTIONS_PER_USER="0",
    )
    async with serving(env, port, ["--workers", "4"]) as gateway:
        await eventually(lambda: len(worker_pids(gateway.proc.pid)) == 4, within=30)
        workers = sorted(worker_pids(gateway.proc.pid))
        before = {pid: sockets_of(pid) for pid in workers}
        held: list[Handshake] = []
        for start in range(0, 2000, 200):
            held += await asyncio.gather(
                *(attempt(port, f"user-{n}") for n in range(start, start + 200))
            )
        assert Counter(h.outcome for h in held) == {"101": 2000}
        share: Callable[[int], int] = lambda pid: sockets_of(pid) - before[pid]  # noqa: E731
        # (each worker may also have opened Redis connections meanwhile)
        await eventually(lambda: sum(share(pid) for pid in workers) >= 2000)
        # 500 each on average; the kernel's hash spreads them binomially (sd ~19): a worker
        # with fewer than 400 is a spread that is not the hash's. On one shared socket the
        # first worker to wake took most of each burst.
        assert min(share(pid) for pid in workers) >= 400, {pid: share(pid) for pid in workers}
        for h in held:
            h.close()


async def test_a_second_serve_on_the_same_port_fails_to_start(prefix: str) -> None:
    port = free_port()
    env = gateway_env(
        "http://127.0.0.1:9",
        port,
        BACKEND_MODE="stub",
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
    )
    async with serving(env, port, ["--workers", "2"]):
        second = await asyncio.create_subprocess_exec(
            *SERVE,
            "--workers",
            "2",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode != 0
        assert f"GATEWAY_HOST/GATEWAY_PORT: cannot listen on 127.0.0.1:{port}" in out.decode()

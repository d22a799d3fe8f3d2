"""``serve --workers N`` as real processes: workers do not outlive their supervisor. Killed
outright (SIGKILL: no chance to pass anything on), the supervisor leaves no worker serving,
none holding the port, and a new ``serve`` starts on it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

from websockets.asyncio.client import connect

from tests.integration.conftest import closed_with, eventually, token_for
from tests.integration.redis_fixtures import REDIS_URL
from tests.integration.test_cluster import worker_pids
from tests.integration.test_lifecycle import free_port, gateway_env, process

SERVE = [sys.executable, "-m", "kalami_gateway", "serve", "--workers", "2"]


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has: it waits only for
    whoever adopted it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_workers_exit_when_their_supervisor_is_killed(prefix: str) -> None:
    port = free_port()
    env = gateway_env(
        "http://127.0.0.1:9",
        port,
        BACKEND_MODE="stub",
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
    )
    async with process(SERVE, env, port) as supervisor:
        await eventually(lambda: len(worker_pids(supervisor.pid)) == 2, within=30)
        workers = worker_pids(supervisor.pid)
        ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token_for('alice')}")
        assert json.loads(await ws.recv())["type"] == "connected"

        supervisor.send_signal(signal.SIGKILL)
        await asyncio.wait_for(supervisor.wait(), 10)
        # Within a second or so in practice; the bound is slack for a loaded machine.
        await eventually(
            lambda: not any(running(pid) for pid in workers) and not listening(port), within=5
        )
        code, _ = await closed_with(ws)
        assert code in (1012, 1006)  # drained as on SIGTERM, or cut off if that took too long

    async with process(SERVE, env, port) as successor:
        await eventually(lambda: len(worker_pids(successor.pid)) == 2, within=30)
        successor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(successor.wait(), 20) == 0


async def test_a_worker_whose_drain_hangs_is_gone_soon_after_its_supervisor(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "ready"
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.stubborn_worker",
        str(ready),
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
        cwd=Path(__file__).parents[2],  # where ``tests`` is importable
    )
    try:
        assert supervisor.stdout is not None
        worker = int(await asyncio.wait_for(supervisor.stdout.readline(), 30))
        await eventually(ready.exists, within=30)
        supervisor.send_signal(signal.SIGKILL)
        await asyncio.wait_for(supervisor.wait(), 10)
        # ORPHAN_GRACE_SECONDS after its supervisor went; the bound is slack for a loaded machine.
        await eventually(lambda: not running(worker), within=5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)
        await asyncio.wait_for(supervisor.wait(), 10)

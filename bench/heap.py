"""What one idle connection holds, by allocation site (issue 15): ``tracemalloc`` in a server
process, tracing started just before ``--connections`` idle sockets are opened, a snapshot
taken after them; the difference, per connection, grouped by the innermost frame of each
allocation that is still alive.

    .venv/bin/python -m bench.heap                     # the gateway (BACKEND_MODE=stub)
    .venv/bin/python -m bench.heap --target raw        # the empty ASGI app (bench/floor.py)
    .venv/bin/python -m bench.heap --target litestar-accept --top 40

Tracing slows the process and adds its own bookkeeping to RSS, so this says where the bytes
are, not how many RSS grows by: `make bench` measures that.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import uvloop

from bench.floor import KINDS
from bench.targets import BENCH_DIR, FloorServer, GatewayProcess, LocalServer
from bench.workers import token
from bench.wsload import WsClient, open_client

HOOK_DIR = BENCH_DIR / "heap_hook"


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no heap snapshot at {path} after {timeout} s")
        time.sleep(0.1)


async def _open(port: int, count: int) -> list[WsClient]:
    gate = asyncio.Semaphore(100)

    async def one(n: int) -> WsClient:
        async with gate:
            return await open_client(port, token(f"heap-{n % 500}"))

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.heap", description=__doc__)
    parser.add_argument("--target", default="gateway", choices=("gateway", *KINDS))
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "heap.snapshot"
        path = os.pathsep.join(filter(None, (str(HOOK_DIR), os.environ.get("PYTHONPATH"))))
        env = {"PYTHONPATH": path, "KALAMI_HEAP_SNAPSHOT": str(snapshot)}
        server: GatewayProcess | FloorServer
        if args.target == "gateway":
            server = GatewayProcess(
                backend_url="http://127.0.0.1:9", backend_mode="stub", extra_env=env
            )
        else:
            server = FloorServer(kind=args.target, extra_env=env)
        server.start()
        try:
            # A first connection opened and closed: lazily made module state is not counted.
            uvloop.run(_warm_up(server.port))
            os.kill(server.pid, signal.SIGUSR1)
            time.sleep(0.5)
            clients = uvloop.run(_hold(server, args.connections, snapshot))
            del clients
        finally:
            server.stop()
        report(tracemalloc.Snapshot.load(str(snapshot)), args.connections, args.top)
    return 0


async def _warm_up(port: int) -> None:
    (client,) = await _open(port, 1)
    client.close()
    await asyncio.sleep(0.5)


async def _hold(server: LocalServer, count: int, snapshot: Path) -> int:
    clients = await _open(server.port, count)
    await asyncio.sleep(1.0)
    os.kill(server.pid, signal.SIGUSR2)
    await asyncio.to_thread(_wait_for, snapshot)
    for client in clients:
        client.close()
    return len(clients)


def report(snapshot: tracemalloc.Snapshot, connections: int, top: int) -> None:
    snapshot = snapshot.filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>"))
    )
    stats = snapshot.statistics("lineno")
    total = sum(s.size for s in stats)
    print(f"{total / connections:,.0f} bytes of Python heap per connection ({connections:,} open)")
    print()
    print("| bytes per connection | allocated at |")
    print("|---:|---|")
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1].split("/src/")[-1]
        print(f"| {stat.size / connections:,.0f} | `{where}:{frame.lineno}` |")


if __name__ == "__main__":
    sys.exit(main())

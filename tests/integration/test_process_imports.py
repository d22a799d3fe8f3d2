"""What a serving process loads, in a fresh interpreter each: the supervisor of --workers
none of the web stack; a process without REDIS_URL no redis-py, one with the stub backend
no httpx or aiohttp; none of them the extras ``app.UNUSED_EXTRAS`` keeps out. Each is memory
in every process (docs/operations.md, "Memory per worker"), and one import put back at the
top of a module would bring it back unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Final

from tests.integration.redis_fixtures import REDIS_URL

SECRET: Final = "process-imports-test-secret-0123456789"
WATCHED: Final = (
    "aiohttp",
    "httpx",
    "kalami_gateway.app.factory",
    "litestar",
    "opentelemetry.sdk.metrics",
    "pygments",
    "redis",
    "rich",
    "uvicorn",
    "watchfiles",
)
# A process's start as ``serve`` makes it, up to the app's lifespan startup and shutdown.
STARTED_APP: Final = """
import asyncio
from kalami_gateway.app.factory import create_app

async def main() -> None:
    app = create_app()
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent = []
    async def receive():
        return next(events)
    async def send(message):
        sent.append(message["type"])
    await app.asgi({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"], sent

asyncio.run(main())
"""
REPORT: Final = f"""
import json, sys
print(json.dumps(sorted(name for name in {WATCHED!r} if name in sys.modules)))
"""


def loaded(code: str, **env: str) -> list[str]:
    """Which of ``WATCHED`` a fresh interpreter has imported once it has run ``code``."""
    environment = {
        **os.environ,
        "JWT_SECRET": SECRET,
        "LOG_LEVEL": "warning",
        "BACKEND_MODE": "stub",
        "REDIS_URL": "",
        **env,
    }
    done = subprocess.run(  # noqa: S603  # this interpreter, our own code
        [sys.executable, "-c", code + REPORT],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    names: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return names


def test_the_supervisor_loads_none_of_the_web_stack() -> None:
    # What `serve --workers N` imports before it spawns: the command and the supervisor.
    code = "import kalami_gateway.app.cli, kalami_gateway.app.workers, kalami_gateway.app.logs"
    assert loaded(code) == []


def test_a_stub_process_without_redis_loads_no_client_of_either() -> None:
    assert loaded(STARTED_APP) == ["kalami_gateway.app.factory", "litestar", "uvicorn"]


def test_a_cluster_member_on_the_http_backend_loads_no_unused_extra(prefix: str) -> None:
    names = loaded(
        STARTED_APP,
        BACKEND_MODE="http",
        BACKEND_URL="http://127.0.0.1:9",
        REDIS_URL=REDIS_URL,
        REDIS_KEY_PREFIX=prefix,
    )
    assert names == [
        "aiohttp",
        "httpx",
        "kalami_gateway.app.factory",
        "litestar",
        "redis",
        "uvicorn",
    ]

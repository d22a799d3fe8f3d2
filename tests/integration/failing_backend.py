"""A FastAPI backend under uvicorn, in a process of its own, built as the Kalami backend is: a
route that raises an unhandled exception. Starlette's ``ServerErrorMiddleware`` answers that
500 *without* ``Connection: close`` and then re-raises; uvicorn logs the traceback and only then
closes the socket. A proxy that pooled the connection after the 500 wrote its next request onto
a connection about to die (issue 22, item 4).

Routes (``tag`` is the caller's, so a test can tell every request apart):

- ``POST /boom/{tag}``  records the tag and raises: the 500 above.
- ``POST /echo/{tag}``  records the tag and answers ``{"tag": tag, "body": <the JSON body>}``.
- ``GET /seen``         every tag recorded, in arrival order (what reached the application).
- ``POST /conversations/sessions/{tag}/end``  the backend adapter's end call: records the tag;
  raises (the 500 above) when the tag starts with ``boom``.

Run by ``started_backend``: the listening socket is made by the test (so its port is known
with no race) and handed over as an inherited descriptor. ``KEEPALIVE`` seconds is uvicorn's
keep-alive timeout (its default is 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

app_seen: list[str] = []


def build_app() -> Any:
    # Imported here: the test process only starts the backend and never needs FastAPI itself.
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/boom/{tag}")
    async def boom(tag: str, payload: dict[str, Any]) -> None:
        app_seen.append(tag)
        raise RuntimeError(f"the route failed for {tag}")

    @app.post("/echo/{tag}")
    async def echo(tag: str, payload: dict[str, Any]) -> dict[str, Any]:
        app_seen.append(tag)
        return {"tag": tag, "body": payload}

    @app.post("/conversations/sessions/{tag}/end")
    async def end(tag: str) -> dict[str, str]:
        app_seen.append(tag)
        if tag.startswith("boom"):
            raise RuntimeError(f"the route failed for {tag}")
        return {"id": tag}

    @app.get("/seen")
    async def seen() -> list[str]:
        return app_seen

    return app


def main() -> None:
    import uvicorn

    fd, keepalive = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.socket(fileno=fd)
    # uvicorn's defaults otherwise (uvloop, httptools, access log, tracebacks logged).
    config = uvicorn.Config(build_app(), timeout_keep_alive=keepalive, log_level="info")
    uvicorn.Server(config).run(sockets=[sock])


@asynccontextmanager
async def started_backend(keepalive: int = 5) -> AsyncIterator[str]:
    """The backend as a process of its own; yields its base URL. Its log (tracebacks, access
    lines) goes to a file: a pipe nobody reads would fill and freeze it mid-log."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    with tempfile.TemporaryFile() as output:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.failing_backend",
            str(listener.fileno()),
            str(keepalive),
            pass_fds=(listener.fileno(),),
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        listener.close()
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient() as client:
                for _ in range(400):
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"{url}/seen")).status_code == 200:
                            break
                    if proc.returncode is not None:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the FastAPI backend did not start")
            if proc.returncode is not None:
                output.seek(0)
                raise AssertionError(f"the FastAPI backend died: {output.read().decode()[-2000:]}")
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)


if __name__ == "__main__":
    main()

"""``BodyPump``: a streamed request body (chunked, or over ``SMALL_BODY``) copied to the
backend by a task of its own while the relay awaits the answer, so that an early answer (a
401, a redirect) is relayed at once; then it watches for the client leaving."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from kalami_gateway.adapters.asgi import Receive
from kalami_gateway.adapters.proxy.client_body import ClientGone, stream_body, watch_disconnect
from kalami_gateway.adapters.proxy.connection import UpstreamConnection
from kalami_gateway.adapters.proxy.deadlines import BodyPace


class BodyPump:
    """Copies a streamed request body to the backend, bounded in time both ways, then watches
    for the client leaving. ``sent`` resolves when the body is all written (or fails)."""

    def __init__(
        self,
        receive: Receive,
        conn: UpstreamConnection,
        pace_from: Callable[[float], BodyPace],
        backend_takes_body: float,
    ) -> None:
        self._receive = receive
        self._conn = conn
        self._pace_from = pace_from
        self._backend_takes_body = backend_takes_body
        self.gone = asyncio.Event()
        self.sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._copy()
        except ClientGone as exc:
            self.gone.set()
            self.sent.set_exception(exc)
            return
        except Exception as exc:  # handed to whoever awaits `sent`
            self.sent.set_exception(exc)
        else:
            self.sent.set_result(None)
        await watch_disconnect(self._receive, self.gone)

    async def _copy(self) -> None:
        conn = self._conn
        loop = asyncio.get_running_loop()
        pace = self._pace_from(loop.time())
        async for chunk in stream_body(self._receive, pace):
            conn.send_body(chunk)
            waited_from = loop.time()
            await conn.drain(self._backend_takes_body)
            pace.paused(loop.time() - waited_from)  # the backend's time, not the client's
        # Only now is the exchange's request side complete (and only if the lengths agree).
        conn.end_body()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.sent.done() and not self.sent.cancelled():
            self.sent.exception()  # retrieved: a failure was already acted on, or is moot
        else:
            self.sent.cancel()

"""Backend sessions nobody owns any more are ended in the background, so none is left open.

- An ``end`` call that failed (backend down, 5xx, timeout) is tried again with backoff (first
  retry within 2 s, doubling to 30 s apart) for up to END_RETRY_WINDOW, until it succeeds or
  the backend says the session is already gone (404/400). The client was told
  ``session_ended`` at once.
- A ``create`` call whose answer did not come within BACKEND_TIMEOUT may still succeed at the
  backend: its answer is awaited in the background (for the rest of the window) and the
  session it made is ended, since the client was told the start failed.

Every retry and every give-up is counted; a give-up is logged with the session id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from kalami_gateway.domain.ports import Backend, BackendError, Clock, CreatedSession, Metrics
from kalami_gateway.domain.retry import already_gone, backoff_delays

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class SessionCleanup:
    def __init__(
        self,
        backend: Backend,
        metrics: Metrics,
        clock: Clock,
        backend_timeout: float,
        retry_window: float,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._clock = clock
        self._timeout = backend_timeout
        self._window = retry_window
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()
        self._unended: dict[str, str] = {}  # session id -> the token to end it with

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def end_later(self, token: str, session_id: str) -> None:
        """Keep trying to end a session whose end call just failed."""
        self._spawn(self._retry_end(token, session_id))

    def adopt(self, create: asyncio.Future[CreatedSession], token: str, started: float) -> None:
        """A create call the client stopped waiting for: end the session it makes, if any."""
        self._spawn(self._end_orphan(create, token, started))

    async def close(self) -> None:
        """At shutdown: stop waiting, then one last attempt at every session still to end
        (what fails even then is logged as given up)."""
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        unended, self._unended = dict(self._unended), {}
        results = await asyncio.gather(*(self._try_end(t, s) for s, t in unended.items()))
        for session_id, ended in zip(unended, results, strict=True):
            if ended:
                self._metrics.session_cleanup("ended")
            else:
                self._give_up(session_id, "shutdown")

    async def _retry_end(self, token: str, session_id: str) -> None:
        self._unended[session_id] = token
        for delay in backoff_delays(self._window):
            await self._sleep(delay)
            self._metrics.session_cleanup("retry")
            if await self._try_end(token, session_id):
                self._unended.pop(session_id, None)
                self._metrics.session_cleanup("ended")
                log.info("backend_end_session_retried", extra={"session_id": session_id})
                return
        self._unended.pop(session_id, None)
        self._give_up(session_id, "retry window over")

    async def _end_orphan(
        self, create: asyncio.Future[CreatedSession], token: str, started: float
    ) -> None:
        remaining = self._window - (self._clock.monotonic() - started)
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                created = await create
        except (TimeoutError, BackendError):
            create.cancel()
            return  # it never made a session (or never said so within the window)
        except asyncio.CancelledError:
            create.cancel()
            raise
        log.warning("backend_orphaned_session_ending", extra={"session_id": created.id})
        if await self._try_end(token, created.id):
            self._metrics.session_cleanup("ended")
            return
        await self._retry_end(token, created.id)

    async def _try_end(self, token: str, session_id: str) -> bool:
        """True when the session is ended (or already gone)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._backend.end_session(token, session_id)
        except TimeoutError:
            return False
        except BackendError as exc:
            return already_gone(exc.status)
        return True

    def _give_up(self, session_id: str, why: str) -> None:
        self._metrics.session_cleanup("gave_up")
        log.error("backend_end_session_given_up", extra={"session_id": session_id, "why": why})

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

"""Backend sessions nobody owns any more are ended in the background, so none is left open.

- An ``end`` call that failed (backend down, 5xx, timeout) is tried again with backoff (first
  retry within 2 s, doubling to 30 s apart) for up to END_RETRY_WINDOW, until it succeeds or
  the backend says the session is already gone (404/400). The client was told
  ``session_ended`` at once. Each attempt carries a bearer made from the learner's claims at
  that moment (``SessionCredentials``), so a retry never fails for a token that lapsed
  meanwhile; a 401/403 is final (counted ``refused``, logged), never retried.
- A ``create`` call whose answer did not come within BACKEND_TIMEOUT may still succeed at the
  backend: its answer is awaited in the background (for the rest of the window) and the
  session it made is ended, since the client was told the start failed.

Every retry and every give-up is counted; a give-up is logged with the session id.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable

from kalami_gateway.application.tasks import Sleep
from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    Clock,
    CreatedSession,
    Metrics,
    SessionCredentials,
)
from kalami_gateway.domain.retry import already_gone, backoff_delays, refused

log = logging.getLogger(__name__)


class _Outcome(enum.Enum):
    ENDED = "ended"
    GONE = "gone"  # 404/400: nothing left to end
    REFUSED = "refused"  # 401/403: final
    FAILED = "failed"  # down, 5xx, timeout: worth another try


_DONE = (_Outcome.ENDED, _Outcome.GONE)


class SessionCleanup:
    def __init__(
        self,
        backend: Backend,
        metrics: Metrics,
        clock: Clock,
        backend_timeout: float,
        retry_window: float,
        credentials: SessionCredentials,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._backend = backend
        self._credentials = credentials
        self._metrics = metrics
        self._clock = clock
        self._timeout = backend_timeout
        self._window = retry_window
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()
        self._unended: dict[str, str] = {}  # session id -> the claims to end it with

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def end_later(self, claims: str, session_id: str) -> None:
        """Keep trying to end a session whose end call just failed."""
        self._spawn(self._retry_end(claims, session_id))

    def adopt(self, create: asyncio.Future[CreatedSession], claims: str, started: float) -> None:
        """A create call the client stopped waiting for: end the session it makes, if any."""
        self._spawn(self._end_orphan(create, claims, started))

    async def end_now(self, claims: str, session_id: str, token: str | None = None) -> None:
        """End a session at the backend (with ``token`` if given, else a bearer made from
        ``claims``); a failure is retried in the background (the caller is not kept)."""
        outcome = await self._try_end(claims, session_id, token)
        if outcome is _Outcome.FAILED:
            self.end_later(claims, session_id)

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
        results = await asyncio.gather(*(self._try_end(c, s) for s, c in unended.items()))
        for session_id, outcome in zip(unended, results, strict=True):
            if outcome in _DONE:
                self._metrics.session_cleanup("ended")
            elif outcome is _Outcome.FAILED:
                self._give_up(session_id, "shutdown")

    async def _retry_end(self, claims: str, session_id: str) -> None:
        self._unended[session_id] = claims
        for delay in backoff_delays(self._window):
            await self._sleep(delay)
            self._metrics.session_cleanup("retry")
            outcome = await self._try_end(claims, session_id)
            if outcome is _Outcome.FAILED:
                continue
            self._unended.pop(session_id, None)
            if outcome in _DONE:
                self._metrics.session_cleanup("ended")
                log.info("backend_end_session_retried", extra={"session_id": session_id})
            return
        self._unended.pop(session_id, None)
        self._give_up(session_id, "retry window over")

    async def _end_orphan(
        self, create: asyncio.Future[CreatedSession], claims: str, started: float
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
        outcome = await self._try_end(claims, created.id)
        if outcome in _DONE:
            self._metrics.session_cleanup("ended")
        elif outcome is _Outcome.FAILED:
            await self._retry_end(claims, created.id)

    async def _try_end(self, claims: str, session_id: str, token: str | None = None) -> _Outcome:
        try:
            bearer = token or self._credentials.bearer(claims, self._clock.now())
        except ValueError as exc:
            self._metrics.session_cleanup("refused")
            log.error(
                "backend_end_session_no_credential",
                extra={"session_id": session_id, "why": str(exc)},
            )
            return _Outcome.REFUSED
        try:
            async with asyncio.timeout(self._timeout):
                await self._backend.end_session(bearer, session_id)
        except TimeoutError:
            self._metrics.backend_error(BackendErrorKind.TIMEOUT)
            log.warning(
                "backend_end_session_failed", extra={"session_id": session_id, "kind": "timeout"}
            )
            return _Outcome.FAILED
        except BackendError as exc:
            self._metrics.backend_error(exc.kind)
            if already_gone(exc.status):
                return _Outcome.GONE
            if refused(exc.status):
                self._metrics.session_cleanup("refused")
                log.error(
                    "backend_end_session_refused",
                    extra={"session_id": session_id, "status": exc.status},
                )
                return _Outcome.REFUSED
            log.warning(
                "backend_end_session_failed",
                extra={"session_id": session_id, "kind": exc.kind.value, "status": exc.status},
            )
            return _Outcome.FAILED
        return _Outcome.ENDED

    def _give_up(self, session_id: str, why: str) -> None:
        self._metrics.session_cleanup("gave_up")
        log.error("backend_end_session_given_up", extra={"session_id": session_id, "why": why})

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

"""A connection's own backend session: started, made resumable, ended.

None is left open at the backend: a start that answers after its deadline is handed to the
``SessionCleanup``, which ends the session it makes; a start that answers after the client
left is ended at once; a failed end is retried in the background.

Traced (a ``Tracing`` given), a session is a span from its start to its end on this
connection (or the connection's end: the tracing adapter ends what a connection leaves
open), filed under the connection's id as ``SESSION_SPAN`` so that its turns are its children;
its backend calls (create, end) run with it current, so they carry its traceparent.
"""

from __future__ import annotations

import asyncio
from typing import Final

from kalami_gateway.application.backend_calls import BackendCalls, backend_problem
from kalami_gateway.application.cleanup import SessionCleanup
from kalami_gateway.application.connections import Connection
from kalami_gateway.application.parked import ParkedSessions
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    Clock,
    SessionCredentials,
    Tracing,
)

# An end call carries the client's own token only if it is good for this much longer.
OWN_TOKEN_MARGIN: Final = 30.0
# The name of a session's span (and what the turns find it by).
SESSION_SPAN: Final = "session"


class BackendSessions:
    def __init__(
        self,
        backend: Backend,
        calls: BackendCalls,
        cleanup: SessionCleanup,
        credentials: SessionCredentials,
        clock: Clock,
        parked: ParkedSessions,
        tracing: Tracing | None = None,
    ) -> None:
        self._backend = backend
        self._calls = calls
        self._cleanup = cleanup
        self._credentials = credentials
        self._clock = clock
        self._parked = parked
        self._tracing = tracing

    async def start(
        self, conn: Connection, profile_id: str, topic: str | None, reply_audio: p.ReplyAudio
    ) -> s.SessionCreated | s.SessionCreateFailed | None:
        """Create the session at the backend; what the state machine is to hear of it (None:
        nothing, the client left meanwhile). ``reply_audio``, how the client takes the reply
        audio, is not the backend's business: it goes with the session's record."""
        started = self._clock.monotonic()
        tracing = self._tracing
        if tracing is None:
            call = asyncio.ensure_future(
                self._backend.create_session(conn.token, profile_id, topic)
            )
        else:
            span = tracing.start(
                SESSION_SPAN, owner=conn.id, attributes={"kalami.connection_id": conn.id}
            )
            with tracing.current(span):  # the task takes the context it is made in
                call = asyncio.ensure_future(
                    self._backend.create_session(conn.token, profile_id, topic)
                )
        try:
            try:
                created = await self._calls.on_time(asyncio.shield(call))
            except BackendError as exc:
                if exc.kind is BackendErrorKind.TIMEOUT and not call.done():
                    # It may still succeed: a session then exists that no client owns.
                    self._cleanup.adopt(call, self._credentials.claims_of(conn.token), started)
                raise
        except BackendError as exc:
            self._calls.failed("backend_create_session_failed", conn.id, exc)
            if tracing is not None:
                span.fail(exc.kind.value)
                span.end()
            return s.SessionCreateFailed(
                backend_problem(exc, f"Could not start the session: {exc.detail}")
            )
        if tracing is not None:
            span.set_attribute("kalami.session_id", created.id)
        if conn.closed:
            # The client left while the backend was creating the session: do not leak it.
            await self.end(conn, created.id)
            return None
        if conn.state.phase is s.Phase.IDLE:
            await self._parked.hold(conn, created, profile_id, reply_audio)
        return s.SessionCreated(created.id, profile_id, created.topic, reply_audio)

    async def end(self, conn: Connection, session_id: str) -> None:
        """End the session at the backend (a failed call is retried in the background), then
        tell the client ``session_ended``."""
        key, conn.session_key = conn.session_key, None
        await self._parked.forget(key)
        # The client's own token while it is good for a while yet; else (a 4003 close) a
        # bearer made from its claims.
        fresh = conn.principal.expires_at - self._clock.now() > OWN_TOKEN_MARGIN
        claims = self._credentials.claims_of(conn.token)
        tracing = self._tracing
        span = tracing.take(conn.id, SESSION_SPAN) if tracing is not None else None
        if tracing is None or span is None:
            await self._cleanup.end_now(claims, session_id, conn.token if fresh else None)
        else:
            try:
                with tracing.current(span):
                    await self._cleanup.end_now(claims, session_id, conn.token if fresh else None)
            finally:
                span.end()
        if not conn.closed:
            await conn.channel.send(p.SessionEnded(p.SessionEndedPayload(session_id)))

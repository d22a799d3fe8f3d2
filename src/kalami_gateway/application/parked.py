"""Sessions that outlive their connection (RESUME_GRACE > 0), on this instance's side of the
``SessionParking`` store: a new session made resumable, parked when its connection goes, the
outcome of a turn that ran on detached kept for its client, ended once its grace lapses.

Without a store or a grace every call here does nothing: a drop ends the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from kalami_gateway.application.cleanup import SessionCleanup
from kalami_gateway.application.connections import Connection, Connections
from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.domain import parking as pk
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain.ports import (
    CreatedSession,
    Metrics,
    ParkingUnavailable,
    SessionCredentials,
    SessionParking,
)

log = logging.getLogger(__name__)


class ParkedSessions:
    def __init__(
        self,
        parking: SessionParking | None,
        limits: ServiceLimits,
        connections: Connections,
        cleanup: SessionCleanup,
        credentials: SessionCredentials,
        metrics: Metrics,
    ) -> None:
        # Resumable sessions need a store and a grace; without either, a drop ends the session.
        self.store = parking if limits.resume_grace > 0 else None
        self._restart_parks = limits.restart_parks
        self._session_limits = limits.session_limits
        self._connections = connections
        self._cleanup = cleanup
        self._credentials = credentials
        self._metrics = metrics

    def parks(self, conn: Connection, draining: bool) -> bool:
        """Whether the session of a connection that goes away waits for its client."""
        return (
            self.store is not None
            and conn.session_key is not None
            and conn.state.session_id is not None
            and (not draining or self._restart_parks)
        )

    async def hold(
        self,
        conn: Connection,
        created: CreatedSession,
        profile_id: str,
        reply_audio: p.ReplyAudio,
    ) -> None:
        """Make the new session resumable with this connection's resume token (with how its
        client takes reply audio, so a resumed session goes on as it began)."""
        if self.store is None:
            return
        record = pk.SessionRecord(
            uuid.uuid4().hex,
            conn.principal.user_id,
            created.id,
            profile_id,
            created.topic,
            self._credentials.claims_of(conn.token),
            reply_audio,
        )
        try:
            await self.store.hold(conn.resume_token, record, conn.id)
        except ParkingUnavailable:
            log.warning("session_hold_failed", extra={"connection_id": conn.id})
            return  # it works, but a drop ends it
        conn.session_key = record.key

    async def forget(self, key: str | None) -> None:
        """The session ended: it can no longer be resumed."""
        if key is not None and self.store is not None:
            with contextlib.suppress(ParkingUnavailable):  # then its token lapses on its own
                await self.store.forget(key)

    async def park(self, conn: Connection) -> bool:
        """Park the session of a connection that went away. False if it could not be parked
        (the store is unreachable): then it is ended, as without resumable sessions."""
        assert self.store is not None  # noqa: S101  # parks only with a store
        assert conn.session_key is not None  # noqa: S101  # and a session held in it
        key = conn.session_key
        conn.stop_watchdog()  # a remote turn delivers to the store from now on
        if conn.state.phase is s.Phase.RECORDING:
            conn.drop_utterance()  # the client records again
        try:
            parked = await self.store.park(
                key, conn.id, pk.parked_phase(conn.state), self._credentials.claims_of(conn.token)
            )
        except ParkingUnavailable:
            log.warning("session_park_failed", extra={"connection_id": conn.id})
            self._connections.turn_over(conn)  # the turn is cancelled with the session's end
            return False
        finally:
            late = self._connections.park_over(conn)
        if parked:
            self._metrics.session_parking("parked")
            log.info(
                "session_parked",
                extra={"connection_id": conn.id, "session_id": conn.state.session_id},
            )
        # else: the session is no longer this connection's (taken over, ended, lapsed).
        for item in late:  # forwarded to it while it was being parked: they follow the session
            with contextlib.suppress(ParkingUnavailable):
                await self.store.keep(*item)
        return True

    async def keep_outcome(self, conn: Connection, event: s.TurnSucceeded | s.TurnFailed) -> None:
        """A detached turn's messages go to the parking store, which keeps or forwards them."""
        decision = s.decide(conn.state, event, self._session_limits)
        conn.state = decision.state
        messages = [p.encode_kept(e.message) for e in decision.effects if isinstance(e, s.Send)]
        if self.store is None or conn.session_key is None:
            return
        try:
            await self.store.keep(conn.session_key, messages, True)
        except ParkingUnavailable:
            log.warning("turn_reply_lost", extra={"session_id": conn.state.session_id})

    async def count(self) -> int | None:
        """Sessions waiting for their client (cluster-wide on Redis); None if unknown."""
        if self.store is None:
            return 0
        try:
            return await self.store.parked()
        except ParkingUnavailable:
            return None

    async def expire(self) -> int:
        """End the parked sessions whose grace has lapsed (each once, cluster-wide)."""
        if self.store is None:
            return 0
        lapsed = await self.store.take_lapsed()
        for record in lapsed:
            self._metrics.session_parking("expired")
            log.info("session_expired", extra={"session_id": record.session_id})
            detached = self._connections.lapsed(record.key)
            if detached is not None and detached.turn is not None:
                detached.turn.cancel()
        await asyncio.gather(*(self._cleanup.end_now(r.claims, r.session_id) for r in lapsed))
        return len(lapsed)

    async def leave(self) -> None:
        """At shutdown: end the sessions nobody can resume once this instance is gone."""
        if self.store is not None:
            left = await self.store.leave()
            await asyncio.gather(*(self._cleanup.end_now(r.claims, r.session_id) for r in left))

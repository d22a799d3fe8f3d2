"""Resuming a session: a new connection with ``resume=<token>`` claims it from the parking
store (if its old connection still holds it, half-open, that one's instance is asked to let
go, 4007, first), hears ``session_resumed`` and what was kept for it, then the rest of a turn
still running where the session was, forwarded as it comes; the store's events (``forwarded``,
``release``) for the connections of this instance.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from kalami_gateway.application.connections import Connection, Connections
from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.application.tasks import Background, Sleep
from kalami_gateway.domain import parking as pk
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain import session as s
from kalami_gateway.domain.auth import CloseCode
from kalami_gateway.domain.ports import Metrics, ParkingUnavailable, SessionParking

log = logging.getLogger(__name__)

RESUMED_ELSEWHERE_REASON: Final = "Session resumed elsewhere"
LOST_REPLY: Final = (
    "The reply to your last utterance was lost while the session moved; please say it again."
)
# A lost turn's error answers no message of the connection that hears it (the turn was asked
# for on an earlier one).
TURN_LOST: Final = s.TurnFailed(p.Problem(LOST_REPLY, p.ErrorCode.TURN_LOST))
# While the old connection lets go of the session, the claim is tried again this often
# (for up to pk.TAKEOVER_SECONDS).
TAKEOVER_POLL_SECONDS: Final = 0.02
TAKEOVER_POLLS: Final = round(pk.TAKEOVER_SECONDS / TAKEOVER_POLL_SECONDS)

Apply = Callable[[Connection, s.Event], Awaitable[None]]
Disconnect = Callable[[Connection, str], Awaitable[None]]


class Resumption:
    def __init__(
        self,
        parking: SessionParking | None,
        limits: ServiceLimits,
        connections: Connections,
        metrics: Metrics,
        background: Background,
        sleep: Sleep,
        apply: Apply,
        disconnect: Disconnect,
    ) -> None:
        self._parking = parking
        self._remote_turn_deadline = limits.remote_turn_deadline
        self._connections = connections
        self._metrics = metrics
        self._background = background
        self._sleep = sleep
        self._apply = apply
        self._disconnect = disconnect

    async def resume(self, conn: Connection, resume_token: str) -> None:
        """Carry on the session ``resume_token`` names: ``session_resumed``, then what was kept
        for it, then (through ``forwarded``) the rest of a turn still running elsewhere."""
        if self._parking is None:
            await conn.channel.send(p.error(pk.refusal_problem(pk.Refusal.DISABLED)))
            return
        self._connections.begin_resume(conn)  # forwarded messages wait for the kept ones
        try:
            claim = await self._claim(conn, resume_token)
        except ParkingUnavailable:
            claim = pk.ResumeRefused(pk.Refusal.UNAVAILABLE)
        if not isinstance(claim, pk.Resumed):
            self._connections.end_resume(conn)
            why = claim.refusal if isinstance(claim, pk.ResumeRefused) else pk.Refusal.STILL_HELD
            log.info("ws_resume_refused", extra={"connection_id": conn.id, "why": why.name})
            await conn.channel.send(p.error(pk.refusal_problem(why)))
            return
        record = claim.record
        conn.session_key = record.key
        conn.state = pk.resumed_state(record, claim.phase)
        self._metrics.session_parking("resumed")
        log.info(
            "session_resumed",
            extra={
                "connection_id": conn.id,
                "session_id": record.session_id,
                "kept": len(claim.kept),
            },
        )
        await conn.channel.send(
            p.SessionResumed(
                p.SessionResumedPayload(
                    record.session_id, record.profile_id, record.topic, claim.phase
                )
            )
        )
        if claim.dropped:
            await conn.channel.send(p.error(pk.dropped_problem(claim.dropped)))
        await self._send_kept(conn, claim.kept)
        if conn.state.phase is s.Phase.PROCESSING:
            self._watch_remote_turn(conn)
        inbox = conn.inbox
        while inbox:
            key, messages, turn_done = inbox.pop(0)
            await self._relay(conn, key, messages, turn_done)
        self._connections.end_resume(conn)

    async def _claim(self, conn: Connection, resume_token: str) -> pk.Claim:
        """Claim the session; if its old connection still holds it, ask that one's instance
        to let go, and claim again until it has (bounded by TAKEOVER_SECONDS)."""
        assert self._parking is not None  # noqa: S101  # only called with a store
        asked = False
        for _ in range(TAKEOVER_POLLS):
            claim = await self._parking.claim(
                resume_token, conn.principal.user_id, conn.resume_token, conn.id
            )
            if not isinstance(claim, pk.HeldElsewhere):
                return claim
            if not asked:
                asked = True
                await self._parking.ask_release(claim.holder, claim.key)
            else:
                await self._sleep(TAKEOVER_POLL_SECONDS)
        return pk.ResumeRefused(pk.Refusal.STILL_HELD)

    async def _send_kept(self, conn: Connection, messages: Sequence[bytes]) -> None:
        for data in messages:
            message = p.decode_kept(data)
            if message is not None:
                await conn.channel.send(message)

    async def forwarded(
        self, connection_id: str, key: str, messages: Sequence[bytes], turn_done: bool
    ) -> None:
        conn = self._connections.find(connection_id)
        if conn is not None and conn.inbox is not None:
            conn.inbox.append((key, messages, turn_done))  # a resume or a park is under way
            return
        if conn is not None and not conn.closed:
            await self._relay(conn, key, messages, turn_done)
            return
        # The connection has gone since the store forwarded this: the session follows it (it
        # is parked, or held elsewhere by now) and so do the messages.
        assert self._parking is not None  # noqa: S101  # only a store forwards
        await self._parking.park(key, connection_id, "active", None)
        await self._parking.keep(key, messages, turn_done)

    async def release(self, connection_id: str, key: str) -> None:
        conn = self._connections.open(connection_id)
        if conn is not None and conn.session_key == key:
            log.info("ws_session_taken_over", extra={"connection_id": conn.id})
            await self._disconnect(conn, "resumed_elsewhere")  # parks it for the claimant
            # The close frame goes out in the background: a half-open peer may never take it.
            self._background.spawn(
                conn.channel.close(CloseCode.RESUMED_ELSEWHERE, RESUMED_ELSEWHERE_REASON)
            )
            return
        if self._connections.parking(connection_id) or self._parking is None:
            return  # its park is under way; the claimant asks again
        # A holder this instance no longer has (its park failed): let the session go for it.
        await self._parking.park(key, connection_id, "active", None)

    async def _relay(
        self, conn: Connection, key: str, messages: Sequence[bytes], turn_done: bool
    ) -> None:
        """A turn's messages from where the session was, for the connection that has it now."""
        if conn.session_key != key:
            return  # the client ended that session meanwhile
        await self._send_kept(conn, messages)
        if turn_done:
            conn.stop_watchdog()
            await self._apply(conn, s.TurnRelayed())

    def _watch_remote_turn(self, conn: Connection) -> None:
        """If the remote turn's messages have not come by the deadline, they were lost (their
        instance died): the client is told so."""

        async def watch() -> None:
            await self._sleep(self._remote_turn_deadline)
            conn.watchdog = None
            await self._apply(conn, TURN_LOST)

        conn.watchdog = asyncio.create_task(watch())

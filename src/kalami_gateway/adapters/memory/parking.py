"""Resumable sessions of a single process: the default when no Redis is configured.

Sessions survive a dropped connection within the process; a shutdown hands every one of them
back to be ended (``leave``), since no other instance could resume them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kalami_gateway.domain import parking as pk
from kalami_gateway.domain.ports import Clock, ParkingEvents, SessionParking

INSTANCE_ID = "local"


class _Entry:
    __slots__ = ("connection_id", "deadline", "kept", "phase", "record", "resume_token")

    def __init__(self, record: pk.SessionRecord, resume_token: str, connection_id: str) -> None:
        self.record = record
        self.resume_token = resume_token
        self.connection_id: str | None = connection_id  # None while parked
        self.phase: pk.ParkedPhase = "active"
        self.deadline = 0.0
        self.kept = pk.Kept()


class InMemoryParking(SessionParking):
    def __init__(self, rules: pk.ParkingRules, clock: Clock) -> None:
        self._rules = rules
        self._clock = clock
        self._entries: dict[str, _Entry] = {}  # session key -> entry
        self._tokens: dict[str, str] = {}  # resume token -> session key
        self._tombstones: dict[str, tuple[pk.Refusal, float]] = {}  # token -> why, until
        self._events: ParkingEvents | None = None

    async def hold(self, resume_token: str, record: pk.SessionRecord, connection_id: str) -> None:
        self._entries[record.key] = _Entry(record, resume_token, connection_id)
        self._tokens[resume_token] = record.key
        self._tombstones.pop(resume_token, None)

    async def park(
        self, key: str, connection_id: str, phase: pk.ParkedPhase, claims: str | None
    ) -> bool:
        entry = self._entries.get(key)
        if entry is None or entry.connection_id != connection_id:
            return False
        entry.connection_id = None
        entry.phase = phase
        entry.record = pk.SessionRecord(
            entry.record.key,
            entry.record.user_id,
            entry.record.session_id,
            entry.record.profile_id,
            entry.record.topic,
            entry.record.claims if claims is None else claims,
            entry.record.reply_audio,
        )
        entry.deadline = self._clock.monotonic() + self._rules.grace
        entry.kept = pk.Kept()
        self._cap_parked(entry.record.user_id)
        return True

    def _cap_parked(self, user_id: str) -> None:
        """Past the user's cap the oldest parked sessions lapse now (the next sweep ends them)."""
        cap = self._rules.max_parked_per_user
        if cap <= 0:
            return
        mine = sorted(
            (
                e
                for e in self._entries.values()
                if e.connection_id is None and e.record.user_id == user_id
            ),
            key=lambda e: e.deadline,
        )
        now = self._clock.monotonic()
        for entry in mine[: max(0, len(mine) - cap)]:
            entry.deadline = min(entry.deadline, now)

    async def keep(self, key: str, messages: Sequence[bytes], turn_done: bool) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        if turn_done:
            entry.phase = "active"
        if entry.connection_id is not None:
            if self._events is not None:
                await self._events.forwarded(entry.connection_id, key, messages, turn_done)
            return
        for message in messages:
            entry.kept = pk.keep(entry.kept, message, self._rules)

    async def claim(
        self, resume_token: str, user_id: str, new_resume_token: str, connection_id: str
    ) -> pk.Claim:
        key = self._tokens.get(resume_token)
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            tomb = self._tombstones.get(resume_token)
            return pk.ResumeRefused(tomb[0] if tomb is not None else pk.Refusal.UNKNOWN)
        if entry.record.user_id != user_id:
            return pk.ResumeRefused(pk.Refusal.OTHER_USER)
        if entry.connection_id is not None:
            return pk.HeldElsewhere(pk.Holder(INSTANCE_ID, entry.connection_id), entry.record.key)
        del self._tokens[resume_token]
        self._bury(resume_token, pk.Refusal.USED)
        kept = entry.kept
        entry.kept = pk.Kept()
        entry.connection_id = connection_id
        entry.resume_token = new_resume_token
        self._tokens[new_resume_token] = entry.record.key
        return pk.Resumed(entry.record, entry.phase, kept.messages, kept.dropped)

    async def ask_release(self, holder: pk.Holder, key: str) -> None:
        if self._events is not None:
            await self._events.release(holder.connection_id, key)

    async def forget(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._tokens.pop(entry.resume_token, None)
            self._bury(entry.resume_token, pk.Refusal.ENDED)

    async def take_lapsed(self) -> list[pk.SessionRecord]:
        now = self._clock.monotonic()
        self._tombstones = {t: v for t, v in self._tombstones.items() if v[1] > now}
        lapsed = [
            e for e in self._entries.values() if e.connection_id is None and e.deadline <= now
        ]
        for entry in lapsed:
            del self._entries[entry.record.key]
            self._tokens.pop(entry.resume_token, None)
            self._bury(entry.resume_token, pk.Refusal.LAPSED)
        return [entry.record for entry in lapsed]

    async def parked(self) -> int:
        return sum(1 for e in self._entries.values() if e.connection_id is None)

    async def leave(self) -> list[pk.SessionRecord]:
        records = [entry.record for entry in self._entries.values()]
        self._entries.clear()
        self._tokens.clear()
        return records

    async def run(self, events: ParkingEvents) -> None:
        self._events = events
        try:
            await asyncio.Event().wait()  # deliveries are direct calls; nothing to listen to
        finally:
            self._events = None

    def _bury(self, resume_token: str, why: pk.Refusal) -> None:
        self._tombstones[resume_token] = (why, self._clock.monotonic() + pk.TOMBSTONE_SECONDS)

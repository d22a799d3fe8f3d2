"""Resumable sessions: the rules of parking a session whose connection went away.

A connection that goes away with a session open (for any reason but ``end_session``) *parks*
the session for ``RESUME_GRACE``: the backend session stays open, a turn in flight keeps
running, and what it produces is kept, in order and bounded, until the client comes back with
the connection's resume token (on any instance) or the grace lapses and the session is ended.

This module holds the rules as data and plain functions (what is kept, what a resume says);
the stores that apply them (in memory, on Redis) are adapters implementing
``ports.SessionParking``, and both pass one contract suite.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, Literal

import msgspec

from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.session import Phase, SessionState

ParkedPhase = Literal["active", "processing"]

# At most this many messages are kept for a parked session (and MAX_AUDIO_BYTES in total).
MAX_KEPT_MESSAGES: Final = 16
# How long a used, lapsed or ended resume token is remembered, so a late resume is told why
# (minutes: a resume comes within seconds of a drop; tombstones of busy users add up).
TOMBSTONE_SECONDS: Final = 300.0
# A takeover (the old connection still open) waits this long for the old holder to let go.
TAKEOVER_SECONDS: Final = 3.0


class ParkingRules(msgspec.Struct, frozen=True):
    grace: float  # seconds a parked session waits for its client (0: sessions never park)
    max_bytes: int  # total size of the kept messages (MAX_AUDIO_BYTES)
    max_messages: int = MAX_KEPT_MESSAGES
    # Parked sessions per user (MAX_CONNECTIONS_PER_USER; 0: no cap). Past it the user's
    # oldest parked session lapses at once (it is ended by the next sweep): a client that
    # connects, starts a session and drops, over and over, holds at most this many open.
    max_parked_per_user: int = 0


class Kept(msgspec.Struct, frozen=True):
    """The messages kept for a parked session, oldest first, and how many were dropped."""

    messages: tuple[bytes, ...] = ()
    size: int = 0
    dropped: int = 0


def keep(kept: Kept, message: bytes, rules: ParkingRules) -> Kept:
    """``kept`` with ``message`` added; past either bound the oldest messages are dropped
    (counted, so the resumed client is told). A message larger than the byte bound on its own
    is dropped too."""
    messages = [*kept.messages, message]
    size = kept.size + len(message)
    dropped = kept.dropped
    while messages and (len(messages) > rules.max_messages or size > rules.max_bytes):
        size -= len(messages.pop(0))
        dropped += 1
    return Kept(tuple(messages), size, dropped)


def parked_phase(state: SessionState) -> ParkedPhase:
    """What a parked session resumes as: a turn in flight keeps running (``processing``); a
    recording in progress is dropped (``active``: the client records again)."""
    return "processing" if state.phase is Phase.PROCESSING else "active"


def resumed_state(record: SessionRecord, phase: ParkedPhase) -> SessionState:
    """The state a resumed connection starts in."""
    return SessionState(
        Phase.PROCESSING if phase == "processing" else Phase.ACTIVE,
        record.session_id,
        record.profile_id,
        record.topic,
        reply_audio=record.reply_audio,
    )


class SessionRecord(msgspec.Struct, frozen=True):
    """An open, resumable session: what a new connection (or an expiry) needs to carry it on.

    ``key`` names it in the store for its whole life (resume tokens change with every
    connection); ``claims`` are the claims of the latest token the client gave (never the
    token): what ends the session at the backend (``ports.SessionCredentials``).
    """

    key: str
    user_id: str
    session_id: str
    profile_id: str
    topic: str | None
    claims: str
    reply_audio: p.ReplyAudio = "json"  # how its client takes reply audio (start_session's)


class Holder(msgspec.Struct, frozen=True):
    """The connection holding a session, and the instance it is open on."""

    instance_id: str
    connection_id: str


class Refusal(enum.Enum):
    """Why a resume cannot be honoured; the value is what the client is told (its machine
    value, the error's ``reason``, is ``REFUSAL_REASONS``')."""

    UNKNOWN = "the resume token is unknown (or its connection had no session open)"
    USED = "the resume token was already used"
    LAPSED = "the session was not resumed within the grace period and has been ended"
    ENDED = "the session was ended"
    OTHER_USER = "the resume token belongs to another user"
    STILL_HELD = "its previous connection did not let go of it in time; try again"
    DISABLED = "resumable sessions are turned off on this gateway (RESUME_GRACE=0)"
    UNAVAILABLE = "the session store is unreachable; try again"


class Resumed(msgspec.Struct, frozen=True):
    """A claimed session: it is the new connection's now."""

    record: SessionRecord
    phase: ParkedPhase
    kept: tuple[bytes, ...] = ()
    dropped: int = 0


class ResumeRefused(msgspec.Struct, frozen=True):
    refusal: Refusal


class HeldElsewhere(msgspec.Struct, frozen=True):
    """The session's previous connection is still open (half-open TCP): it must let go first."""

    holder: Holder
    key: str


Claim = Resumed | ResumeRefused | HeldElsewhere


# A refused resume's ``reason`` (docs/protocol.md, §4): stable words a client may branch on
# (the Redis store's tombstones name the first five the same way).
REFUSAL_REASONS: Final[Mapping[Refusal, str]] = {
    Refusal.UNKNOWN: "unknown",
    Refusal.USED: "used",
    Refusal.LAPSED: "lapsed",
    Refusal.ENDED: "ended",
    Refusal.OTHER_USER: "other_user",
    Refusal.STILL_HELD: "still_held",
    Refusal.DISABLED: "disabled",
    Refusal.UNAVAILABLE: "unavailable",
}


def refusal_message(refusal: Refusal) -> str:
    return (
        f"The session could not be resumed: {refusal.value}. Send start_session to start a new one."
    )


def refusal_problem(refusal: Refusal) -> p.Problem:
    """The error a refused resume gets: ``resume_refused``, with the refusal's reason."""
    return p.Problem(
        refusal_message(refusal), p.ErrorCode.RESUME_REFUSED, reason=REFUSAL_REASONS[refusal]
    )


def dropped_message(dropped: int) -> str:
    return (
        f"While you were away {dropped} of the oldest messages of this session were dropped "
        "(too many, or too large, to keep); the newest follow."
    )


def dropped_problem(dropped: int) -> p.Problem:
    return p.Problem(dropped_message(dropped), p.ErrorCode.MESSAGES_DROPPED)

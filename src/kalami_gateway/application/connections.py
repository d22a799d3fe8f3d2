"""This instance's connections: each one's life as one explicit ``Stage``, and the table that
finds them by connection id (open, or parking) and by session key (a turn running on).

    OPEN --a resume begins--> RESUMING --it is over--> OPEN
    OPEN or RESUMING --it goes--> CLOSED      (no resumable session: it is ended)
                              --> PARKING     (its session is parked for its client)
                              --> DETACHING   (the same, and a turn in flight runs on)
    PARKING   --the park is over (parked, or the store unreachable)--> CLOSED
    DETACHING --parked--> DETACHED;  --the store unreachable--> CLOSED
    DETACHING --its turn is over--> PARKING;  DETACHED --its turn over, or lapsed--> CLOSED

A turn that runs on *detached* delivers its messages to the parking store, which keeps them
while the session is parked and forwards them to whichever connection holds it by then.
Only the transitions of ``Connections`` change a connection's stage, so the stage and the
table always agree.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import uuid
from collections.abc import Sequence
from typing import Final

from kalami_gateway.domain import session as s
from kalami_gateway.domain.auth import Principal
from kalami_gateway.domain.ports import ClientChannel, ConnectionEntry, UtteranceUpload
from kalami_gateway.domain.rate import TokenBucket

Forwarded = tuple[str, Sequence[bytes], bool]  # session key, encoded messages, turn done


def new_connection_id() -> str:
    return str(uuid.uuid4())


def new_resume_token() -> str:
    return secrets.token_urlsafe(24)  # 192 random bits


class Stage(enum.Enum):
    OPEN = "open"  # frames are read and answered
    RESUMING = "resuming"  # open, carrying on a parked session
    PARKING = "parking"  # gone; its session is being parked
    DETACHING = "detaching"  # gone; its session is being parked, and its turn runs on
    DETACHED = "detached"  # gone, its session parked; its turn runs on for the store
    CLOSED = "closed"  # gone; nothing of it runs on


OPEN_STAGES: Final = frozenset({Stage.OPEN, Stage.RESUMING})
LEAVING: Final = frozenset({Stage.PARKING, Stage.DETACHING})  # found by id until parked
RUNS_ON: Final = frozenset({Stage.DETACHING, Stage.DETACHED})  # its turn delivers to the store


class Connection:
    """One open, authenticated WebSocket and its conversation."""

    __slots__ = (
        "audio_rate",
        "channel",
        "chunks",
        "closed_for",
        "entry",
        "expired",
        "id",
        "inbox",
        "principal",
        "resume_token",
        "session_key",
        "stage",
        "state",
        "text_rate",
        "token",
        "turn",
        "upload",
        "warned",
        "watchdog",
    )

    def __init__(
        self,
        connection_id: str,
        principal: Principal,
        token: str,
        channel: ClientChannel,
        connected_at: float,
        resume_token: str = "",
    ):
        self.id = connection_id
        self.resume_token = resume_token
        self.session_key: str | None = None  # the open session's key in the parking store
        self.stage = Stage.OPEN
        # Forwarded turn messages that arrive while a resume or a park is under way.
        self.inbox: list[Forwarded] | None = None
        self.watchdog: asyncio.Task[None] | None = None  # a resumed session's remote turn
        self.entry = ConnectionEntry(
            connection_id, principal.user_id, principal.expires_at, connected_at
        )
        self.principal = principal
        self.token = token
        self.channel = channel
        self.state = s.IDLE
        self.chunks: list[bytes] = []  # the utterance, when it is buffered
        self.upload: UtteranceUpload | None = None  # the utterance, when it is streamed
        self.turn: asyncio.Task[None] | None = None
        self.warned = False  # token_expiring sent for the current token
        self.expired = False  # the token expired during a turn: 4003 once its reply is out
        self.text_rate: TokenBucket | None = None
        self.audio_rate: TokenBucket | None = None
        self.closed_for: str | None = None  # why it was let go (GatewayService.disconnect)

    @property
    def closed(self) -> bool:
        """Gone (whatever still runs on for it): its frames are no longer read."""
        return self.stage not in OPEN_STAGES

    def turn_in_flight(self) -> bool:
        return self.turn is not None and not self.turn.done()

    def drop_utterance(self) -> None:
        self.chunks = []
        upload, self.upload = self.upload, None
        if upload is not None:
            upload.abort()  # the backend sees a broken request, never a turn

    def stop_watchdog(self) -> None:
        """The remote turn's messages came (or go to the store from now on)."""
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()


class Connections:
    """This instance's connections that are open or still have work under way."""

    def __init__(self) -> None:
        self._open: dict[str, Connection] = {}  # OPEN and RESUMING (connection id)
        self._leaving: dict[str, Connection] = {}  # PARKING and DETACHING (connection id)
        self._running_on: dict[str, Connection] = {}  # DETACHING and DETACHED (session key)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def add(self, conn: Connection) -> None:
        """A new connection, OPEN."""
        self._open[conn.id] = conn

    def open(self, connection_id: str) -> Connection | None:
        return self._open.get(connection_id)

    def every_open(self) -> list[Connection]:
        return list(self._open.values())

    def find(self, connection_id: str) -> Connection | None:
        """An open connection, or one whose session is being parked."""
        return self._open.get(connection_id) or self._leaving.get(connection_id)

    def parking(self, connection_id: str) -> bool:
        return connection_id in self._leaving

    def turns_running_on(self) -> list[Connection]:
        return list(self._running_on.values())

    def begin_resume(self, conn: Connection) -> None:
        """OPEN -> RESUMING: forwarded messages wait until the kept ones are sent."""
        conn.stage = Stage.RESUMING
        conn.inbox = []

    def end_resume(self, conn: Connection) -> None:
        """RESUMING -> OPEN (a connection gone meanwhile stays where its leaving put it)."""
        if conn.stage is Stage.RESUMING:
            conn.stage = Stage.OPEN
        conn.inbox = None

    def leave(self, conn: Connection, parks: bool) -> None:
        """An open connection goes: CLOSED, or PARKING (DETACHING if a turn is in flight:
        from here on, before any await, it delivers to the store)."""
        self._open.pop(conn.id, None)
        if not parks:
            conn.stage = Stage.CLOSED
            return
        self._leaving[conn.id] = conn
        conn.inbox = []
        if conn.turn_in_flight() and conn.session_key is not None:
            conn.stage = Stage.DETACHING
            self._running_on[conn.session_key] = conn
        else:
            conn.stage = Stage.PARKING

    def park_over(self, conn: Connection) -> list[Forwarded]:
        """The park is over, whatever came of it: PARKING -> CLOSED, DETACHING -> DETACHED.
        Returns what was forwarded to the connection meanwhile."""
        self._leaving.pop(conn.id, None)
        late, conn.inbox = conn.inbox or [], None
        if conn.stage is Stage.PARKING:
            conn.stage = Stage.CLOSED
        elif conn.stage is Stage.DETACHING:
            conn.stage = Stage.DETACHED
        return late

    def turn_over(self, conn: Connection) -> None:
        """Its turn no longer runs on for the store (it is over, or is to be cancelled):
        DETACHING -> PARKING, DETACHED -> CLOSED."""
        if conn.stage is Stage.DETACHING:
            conn.stage = Stage.PARKING
        elif conn.stage is Stage.DETACHED:
            conn.stage = Stage.CLOSED
        key = conn.session_key
        if key is not None and self._running_on.get(key) is conn:
            del self._running_on[key]

    def lapsed(self, key: str) -> Connection | None:
        """The parked session ``key`` lapsed: the connection whose turn ran on for it, if any
        (no longer found here; its turn is for the caller to cancel)."""
        conn = self._running_on.pop(key, None)
        if conn is not None:
            self.turn_over(conn)
        return conn

"""What one native WebSocket connection keeps: the slots of ``NativeWebSocketProtocol``, their
first values, and the phases a connection goes through.

The protocol class is composed of parts, one module each (``protocol``: the connection's life
and its reads; ``handshake_answer``, ``app_run``, ``messages``, ``socket_control``,
``keepalive``). Every part subclasses ``NativeConnection`` with empty ``__slots__``: only one
base may have slots of its own, and this is it, so a connection holds no ``__dict__``. The
state of the reads' budgets is named as ``metered_reads.MeteredReader`` names it, the app's
pauses as ``socket_control.Pausable`` does: one logic for both engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from uvicorn.config import Config
from uvicorn.server import ServerState

from kalami_gateway.adapters.server import heartbeats
from kalami_gateway.adapters.server.native import handshake as hs
from kalami_gateway.adapters.server.native.inbox import Inbox
from kalami_gateway.adapters.server.native.parser import FrameParser

# The connection's phases.
NEW: Final = 0  # the upgrade request has not arrived
CONNECTING: Final = 1  # the app runs; no accept yet
OPEN: Final = 2  # the 101 is out
REFUSED: Final = 3  # answered with an HTTP status (403, a denial, a bad handshake): nothing read


class NativeConnection(asyncio.Protocol):
    """The state of one connection, for the parts of ``NativeWebSocketProtocol``."""

    # Set per server (``native_websocket_protocol``); these defaults: no frame budget.
    frame_rate: float = 0.0
    send_buffer_bytes: int = 4 << 20

    __slots__ = (
        "_app",
        "_app_done",
        "_app_state",
        "_backed_up",
        "_behind",
        "_close_sent",
        "_close_timer",
        "_closing",
        "_config",
        "_credit",
        "_denial",
        "_disconnected",
        "_drain",
        "_handshake",
        "_inbox",
        "_last_rtt",
        "_linger_left",
        "_lost",
        "_parser",
        "_pausing",
        "_phase",
        "_ping_payload",
        "_ping_sent_at",
        "_ping_timer",
        "_pong_timer",
        "_read_after_close",
        "_read_paused",
        "_room",
        "_server_state",
        "_serving",
        "_slow",
        "_stamp",
        "_stash",
        "_throttle",
        "_unanswered",
        "_write_paused",
        "loop",
        "scope",
        "transport",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._app: Any = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.scope: dict[str, Any] | None = None
        self._phase = NEW
        self._handshake: hs.Handshake | None = None  # until the 101 is written
        self._parser: FrameParser | None = None
        self._inbox = Inbox()
        self._denial: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        self._close_sent = False  # a close frame of ours (or an HTTP refusal) is out
        self._closing = False  # the peer's close was answered, or a 1012 sent: no more sends
        self._close_timer: asyncio.TimerHandle | None = None
        self._disconnected = False
        self._read_paused = False  # paused for a message waiting for the app
        self._write_paused = False
        self._drain: list[asyncio.Future[None]] | None = None  # sends waiting for the socket
        self._ping_timer: heartbeats.Beat | asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._ping_sent_at = 0.0
        self._last_rtt = 0.0
        self._lost = False
        self._app_done = False
        self._slow = False
        self._unanswered = False
        # The reads' budgets (metered_reads.MeteredReader says what each holds).
        self._room = -1
        self._credit = 0.0
        self._stamp = 0.0
        self._stash: bytes | None = None
        self._throttle: asyncio.TimerHandle | None = None
        self._backed_up = False
        self._behind = False
        self._linger_left: int | None = None
        self._read_after_close = 0
        self._pausing: asyncio.Future[None] | None = None
        self._serving: Coroutine[Any, Any, None] | None = None  # the app's loop (hand_off)

    if TYPE_CHECKING:
        # What the parts call of one another (each is defined in one part), for the type
        # checker; at run time the composed class has them all.

        async def receive(self) -> dict[str, Any]: ...
        async def send(self, message: Any) -> None: ...
        def _received_slowly(self, data: bytes) -> None: ...
        def _parse(self, data: bytes) -> bool: ...
        def _start_keepalive(self) -> None: ...
        def _answer_handshake(self, message: Any) -> None: ...
        def _deny_more(self, message: Any) -> None: ...

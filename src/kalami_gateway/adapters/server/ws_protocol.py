"""uvicorn's websockets-sansio protocol, with liveness that a rate limit cannot fool and a
budget for what a peer may make it do.

A connection over its rate (WS_MESSAGE_RATE, WS_AUDIO_RATE) is read slowly on purpose, so
the pong to a protocol ping may sit in the socket behind many of its messages for longer
than the ping timeout; uvicorn would then drop a client that is plainly alive. Here:

- any frame read from the peer counts as a pong (a client whose messages arrive is alive),
  except while the frame budget is spent: the frames parsed then are a backlog, which a
  peer that has since vanished leaves behind in the kernel's buffers;
- a ping that times out while the gateway itself is not reading (messages of the peer still
  waiting for the app, reading paused) is not held against the peer: another ping goes out
  at once instead. Writing it is what notices a peer that has gone with a reset (with
  reading paused, a reset is seen only by a write); a peer gone without one is told by its
  kernel acknowledging nothing since the ping (``tcp_peer``). Either way a vanished client
  is let go within two intervals.

Every frame costs something, whatever its size (issue 24): parsing one, answering a ping,
keeping a 1-byte fragment. So the bytes are budgeted where they arrive, before websockets
parses them:

- ``frame_rate`` frames a second per connection (WS_FRAME_RATE), any frame: a read is
  parsed in pieces that cannot hold more frames than the budget has left; past it the rest
  waits unparsed and reading is paused until the budget has come back (``frame_budget``:
  its numbers, and the flood of empty frames they were measured against);
- fragments are gathered in one buffer, not a list of them;
- what the protocol writes on its own (pongs) counts against the send buffer
  (WS_SEND_BUFFER_BYTES) as the app's messages do: a peer that pings and never reads is
  let go as a slow consumer (it grew the gateway by 260+ MiB);
- after the gateway's own close frame, at most ``CLOSE_READ_BYTES`` more are read (the
  peer's close reply is in them), and the socket is closed after ``CLOSE_TIMEOUT``
  (``close_budget``);
- after a close the peer caused (a frame too big: 1009), what it still sends is read and
  discarded (up to ``LINGER_BYTES``) for ``LINGER_SECONDS``, on uvicorn's own close timer:
  the app returning no longer cuts that short (a client that reads once its frame is sent
  saw the 1009 in 202 of 300 tries);
- frames sent before the 101 (in the handshake's own segment, handed over by the HTTP
  protocol) wait unparsed until the accept is out, then are answered in order.

The budgets' logic is one with the native engine's (``metered_reads``; the rate-limit pause
in ``socket_control``, the next ping in ``heartbeats``): this class keeps their state under
the names both engines use, and reads, parses and closes through uvicorn's own machinery.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.http11 import Request

from kalami_gateway.adapters.asgi import SOCKET_CONTROL
from kalami_gateway.adapters.server import close_budget, heartbeats
from kalami_gateway.adapters.server.liveness import pong_excused
from kalami_gateway.adapters.server.metered_reads import (
    budget_spent,
    enough_after_close,
    feed_stash,
    hold_back,
    let_go_slow,
    linger,
    metered,
    open_room,
    refill,
    stop_throttle,
)
from kalami_gateway.adapters.server.socket_control import SocketControl, socket_gone
from kalami_gateway.adapters.server.standins import ReceiveQueue, WritableFlag

log = logging.getLogger(__name__)


class LivelyWebSocketProtocol(WebSocketsSansIOProtocol):
    # Set per server (``lively_websocket_protocol``); these defaults: no frame budget.
    frame_rate: float = 0.0  # frames a second per connection (0: no budget)
    send_buffer_bytes: int = 4 << 20  # unsent bytes past which a peer that pings is let go

    # Per connection. Class defaults until first set, so an idle connection pays for few.
    _lost = False  # connection_lost has run
    _app_done = False  # the app's task has finished (there is one only after an upgrade)
    _unanswered = False  # let go for not answering a ping in time
    _pausing: asyncio.Future[None] | None = None  # the app's rate-limit pause, if waiting
    # The reads' budgets (metered_reads.MeteredReader says what each holds).
    _slow = False
    _room: int = -1
    _credit: float = 0.0
    _stamp: float = 0.0
    _stash: bytes | None = None
    _throttle: asyncio.TimerHandle | None = None
    _backed_up = False
    _linger_left: int | None = None
    _read_after_close = 0
    _behind = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Light stand-ins for the asyncio primitives uvicorn makes per connection (the
        # interfaces it uses): ~3 KB of an idle connection's ~23 KB.
        self.queue = ReceiveQueue()  # type: ignore[assignment]
        self.writable = WritableFlag()  # type: ignore[assignment]
        self.close_timeout = close_budget.CLOSE_TIMEOUT

    # The names metered_reads and liveness use for uvicorn's ``read_paused`` and ``queue``.

    @property
    def _read_paused(self) -> bool:
        """Reading paused for a message waiting for the app (uvicorn's ``receive()`` resumes
        it once the queue is empty)."""
        return self.read_paused

    @_read_paused.setter
    def _read_paused(self, paused: bool) -> None:
        self.read_paused = paused

    @property
    def _inbox(self) -> ReceiveQueue:
        """The messages waiting for the app."""
        return self.queue  # type: ignore[return-value]  # replaced in __init__

    # -- Bytes in ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if len(data) > self._room or self.close_sent:
            self._received_slowly(data)
            return
        # Within the budget: parsed whole (uvicorn's own data_received, frames counted). The
        # room shrinks by the bytes, so reads between refills never hold more frames than
        # the budget had (each frame is MIN_FRAME bytes or more).
        self._room -= len(data)
        conn = self.conn
        conn.receive_data(data)
        if conn.parser_exc is not None:
            self.handle_parser_exception()
            return
        self._credit -= len(conn.events)
        self.handle_events()
        if self._credit <= 0:
            budget_spent(self)
        else:
            self._behind = False
        if self.pong_timer is not None and not self.close_sent and not self._behind:
            self._alive()

    def _received_slowly(self, data: bytes) -> None:
        """Every read that is not simply parsed: the handshake, frames before the accept, a
        read over the budget's room, the bytes after a close frame."""
        if self._linger_left is not None or self._stash is not None:
            hold_back(self, data)  # lingering, throttled, or waiting for the accept
            return
        if not self.handshake_initiated:  # the upgrade request, handed over whole
            super().data_received(data)
            return
        if not self.handshake_complete:
            # Frames sent without waiting for the 101: parsed now, their answers (a pong)
            # would go out before it. Kept until the accept is out (start_keepalive).
            self._stash = data
            self._room = -1
            self.transport.pause_reading()
            return
        if self.close_sent and enough_after_close(self, data):
            return
        metered(self, data)

    def _parse(self, data: bytes) -> bool:
        """uvicorn's data_received, counting frames; False once nothing more is parsed."""
        conn = self.conn
        conn.receive_data(data)
        if conn.parser_exc is not None:
            self.handle_parser_exception()
            return False
        self._credit -= len(conn.events)
        self.handle_events()
        if self._backed_up and self.transport.get_write_buffer_size() > self.send_buffer_bytes:
            let_go_slow(self)
            return False
        if self.pong_timer is not None and not self.close_sent and not self._behind:
            self._alive()
        return self._linger_left is None and not self.transport.is_closing()

    def _alive(self) -> None:
        """A frame from the peer stands for the pong it owes."""
        assert self.pong_timer is not None  # noqa: S101  # checked by the caller
        self.pong_timer.cancel()
        self.pong_timer = None
        self.pending_ping_payload = None
        self.schedule_ping()

    # -- Bytes out --------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        # Reads take the slow path, which checks the write buffer after each parse: pongs the
        # peer does not read count against the send buffer as the app's messages do.
        self._backed_up = True
        self._room = -1

    def resume_writing(self) -> None:
        super().resume_writing()
        self._backed_up = False
        if self.handshake_complete:  # before it the room stays shut
            open_room(self)

    # -- uvicorn's events -------------------------------------------------------------------

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # the app task is created, not yet started
            extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[SOCKET_CONTROL] = SocketControl(self)

    def start_keepalive(self) -> None:
        """The 101 is out (uvicorn calls this right after writing it): the frame budget
        starts full, and frames the peer sent before it are answered now."""
        super().start_keepalive()
        refill(self)
        if self._stash is not None:
            feed_stash(self)

    def handle_cont(self, event: Frame) -> None:
        """uvicorn's, gathering the fragments in one buffer instead of a list of them (a
        message in 1-byte fragments took ~41 bytes of list and object per byte)."""
        frames: list[Any] = self.frames
        if len(frames) < 2:
            frames.append(bytearray(event.data))
        else:
            frames[1] += event.data
        if event.fin:
            self.send_receive_event_to_app()

    def handle_parser_exception(self) -> None:
        """The client broke the protocol (a frame over the size limit, say): send the close
        frame, then the lingering close (``linger``). Its timer is uvicorn's own
        ``close_timer``, so the app returning does not close the socket early."""
        assert self.conn.close_sent is not None  # noqa: S101  # set by websockets
        close = self.conn.close_sent
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.close_timer = linger(self, self.close_timer, self.config.ws_max_size)

    def connection_lost(self, exc: Exception | None) -> None:
        stop_throttle(self)
        super().connection_lost(exc)
        socket_gone(self)
        self._let_go()

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        self._app_done = True
        self._let_go()

    def _let_go(self) -> None:
        """Once the app has returned and the socket is gone, nothing runs for this connection
        again: break the reference cycles that would otherwise keep all of it (~76 objects:
        this protocol, the scope and what Litestar and the app hung on it, websockets' protocol
        and its parser) as garbage until the next full collection, which the gateway's
        collector policy makes rare. Reference counting then frees it at once."""
        if not (self._lost and self._app_done):
            return
        scope: dict[str, Any] | None = vars(self).get("scope")  # absent: never upgraded
        if scope is not None:
            scope.clear()  # its extensions hold the socket control, which holds this protocol
        # websockets' parser generator holds its protocol in its suspended frame; the error it
        # raised on a broken frame (1002, 1007, 1009) holds it in its traceback, with the last
        # frame read (up to MAX_MESSAGE_BYTES: one client could pile up gigabytes of them).
        self.conn.parser = None  # type: ignore[assignment]
        self.conn.parser_exc = None

    # -- Keepalive --------------------------------------------------------------------------

    def schedule_ping(self) -> None:
        """uvicorn's, on the loop's shared heartbeat timer instead of a timer of its own."""
        assert self.ping_interval is not None  # noqa: S101  # only called with keepalive on
        beat = heartbeats.next_ping(
            self.loop, self.ping_interval, self.last_ping_rtt, self.send_keepalive_ping
        )
        self.ping_timer = beat  # type: ignore[assignment]  # it has the cancel() uvicorn calls

    def keepalive_timeout(self) -> None:
        """No drop while the gateway itself is not reading (``liveness.pong_excused``)."""
        assert self.ping_timeout is not None  # noqa: S101  # a pong timer ran
        if not self.close_sent and pong_excused(self, self.ping_timeout, self._ping_again):
            return
        if not (self.close_sent or self.transport.is_closing()):
            # Closed 1011 by uvicorn; counted as ping_timeout (kalami_websocket_closed_total).
            log.info("ws_ping_timed_out", extra={"timeout_s": self.ping_timeout})
            self._unanswered = True
        super().keepalive_timeout()

    def _ping_again(self) -> None:
        """A ping at once, its pong still owed: with reading paused only a write notices a
        peer that has gone with a reset (a peer that closed answers this write with one)."""
        self.pong_timer = None
        self.pending_ping_payload = None
        self.send_keepalive_ping()


def lively_websocket_protocol(
    frame_rate: float, send_buffer_bytes: int
) -> type[LivelyWebSocketProtocol]:
    """The protocol class uvicorn is given, with this gateway's budgets."""
    return type(
        "LivelyWebSocketProtocol",
        (LivelyWebSocketProtocol,),
        {"frame_rate": float(frame_rate), "send_buffer_bytes": send_buffer_bytes},
    )

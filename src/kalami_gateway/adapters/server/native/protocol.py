"""The gateway's own WebSocket protocol (``WS_ENGINE=native``, issue 27): the class uvicorn
runs as ``Config.ws`` after the upgrade, in place of its websockets-sansio protocol (not a
subclass of it), on the native frame codec (``FrameParser``, ``serializer``).

uvicorn still owns the socket until the upgrade: its HTTP protocol (the gateway's
``GuardedHttpProtocol``) parses the request, then builds this class with ``config``,
``server_state`` and ``app_state``, calls ``connection_made``, hands the transport over and
feeds the request, rebuilt, to ``data_received`` (``handle_websocket_upgrade``); the bytes the
client sent behind it in the same read come next (the gateway's HTTP protocol hands them
over; they are parsed once the 101 is out). From then on everything is here:

- the handshake (``handshake``): judged as websockets judges it, the ASGI scope built as
  uvicorn builds it (``SOCKET_CONTROL`` in its extensions: this protocol itself), the app run
  as uvicorn runs it (``server_state.tasks``, ``connections``), the 101 or the 403;
- frames parsed straight out of each read; the app's ``receive`` and ``send`` (also what
  ``accepted()`` hands the message loop) take and give messages without a queue of ASGI
  events or a codec per frame;
- the same behaviour, and the same settings, as the uvicorn engine
  (``LivelyWebSocketProtocol``, whose docstring gives the measurements): the frame budget
  (WS_FRAME_RATE, ``frame_budget``), reading paused for a message waiting for the app and
  for the app's rate limits (``pause``), pongs counted against the send buffer
  (WS_SEND_BUFFER_BYTES), the heartbeat on the shared timer (``heartbeats``) that a throttled
  peer's backlog cannot fool (``tcp_peer``), the bounded reads and timeouts of a close
  (``close_budget``), the lingering close after a protocol error (1002, 1007, 1009), 1012 on
  uvicorn's shutdown, reference cycles broken once the connection is over.

permessage-deflate is not supported: the server refuses to start with WS_ENGINE=native and
WS_PER_MESSAGE_DEFLATE=true (``app/settings/loading.py``, ``cluster_problems``).

The class is composed of parts, one module each, over the one slotted base that holds the
connection's state (``connection``): here its life (made, lost, shut down) and its reads (the
per-frame path: a read parsed whole, its events handled); the app's answer to the handshake
(``handshake_answer``), the app's run (``app_run``), the app's messages (``messages``), its
``SocketControl`` (``socket_control``), the heartbeat (``keepalive``). What it shares with the
uvicorn engine is one code for both: the reads' budgets (``metered_reads``), a missed pong
(``liveness``), the app's pause (``socket_control.pause_reads``), the next ping
(``heartbeats.next_ping``).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from kalami_gateway.adapters.server.metered_reads import (
    budget_spent,
    enough_after_close,
    hold_back,
    let_go_slow,
    linger,
    metered,
    stop_throttle,
)
from kalami_gateway.adapters.server.native.app_run import AppRun
from kalami_gateway.adapters.server.native.connection import CONNECTING, NEW, OPEN, REFUSED
from kalami_gateway.adapters.server.native.events import Close, Failure, Ping, Pong
from kalami_gateway.adapters.server.native.handshake_answer import HandshakeAnswer
from kalami_gateway.adapters.server.native.keepalive import Keepalive
from kalami_gateway.adapters.server.native.messages import Messages
from kalami_gateway.adapters.server.native.serializer import close_frame
from kalami_gateway.adapters.server.native.socket_control import OwnSocketControl
from kalami_gateway.adapters.server.socket_control import socket_gone


class NativeWebSocketProtocol(Messages, Keepalive, HandshakeAnswer, AppRun, OwnSocketControl):
    """One WebSocket connection, from the upgrade request uvicorn hands over to the socket's
    end; its own ``SocketControl`` (the ``kalami.socket`` scope extension)."""

    __slots__ = ()

    # -- The connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server_state.connections.add(self)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        stop_throttle(self)
        self._stop_keepalive()
        code = 1005 if self._phase == OPEN and self._denial is None else 1006
        self._inbox.put({"type": "websocket.disconnect", "code": code})
        self._server_state.connections.discard(self)
        if self._phase < OPEN:
            self._phase = REFUSED
        self._disconnected = True
        self._wake_senders()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if exc is None:
            self.transport.close()
        socket_gone(self)
        self._let_go()

    def eof_received(self) -> None:
        return None  # the transport closes itself, as with uvicorn's protocol

    def shutdown(self) -> None:
        """uvicorn's server shutdown: 1012 to an open connection, 500 to one not accepted."""
        self._stop_keepalive()
        if self._close_sent:
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
            self.transport.close()
            return
        if self._phase == OPEN and self._denial is None:
            self._inbox.put({"type": "websocket.disconnect", "code": 1012})
            if not self._closing:
                self._closing = True
                self.transport.write(close_frame(1012))
        else:
            self._send_500()
        self.transport.close()

    # -- Bytes in ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if len(data) > self._room or self._close_sent:
            self._received_slowly(data)
            return
        # Within the budget: parsed whole. The room shrinks by the bytes, so reads between
        # refills never hold more frames than the budget had (each is MIN_FRAME bytes or more).
        self._room -= len(data)
        parser = self._parser
        assert parser is not None  # noqa: S101  # the room opens only once the 101 is out
        frames = parser.frames
        events = parser.feed(data)
        self._credit -= parser.frames - frames
        if events and not self._handle(events):
            return
        if self._credit <= 0:
            budget_spent(self)
        else:
            self._behind = False
        if self._pong_timer is not None and not self._close_sent and not self._behind:
            self._alive()

    def _received_slowly(self, data: bytes) -> None:
        """Every read that is not simply parsed: the handshake, frames before the accept, a
        read over the budget's room, the bytes after a close frame."""
        if self._linger_left is not None or self._stash is not None:
            hold_back(self, data)  # lingering, throttled, or waiting for the accept
            return
        phase = self._phase
        if phase == NEW:  # the upgrade request, handed over whole
            self._connect(data)
            return
        if phase == CONNECTING:
            # Frames sent without waiting for the 101: kept until the accept is out.
            self._stash = data
            self._room = -1
            self.transport.pause_reading()
            return
        if phase == REFUSED:
            return
        if self._close_sent and enough_after_close(self, data):
            return
        metered(self, data)

    def _parse(self, data: bytes) -> bool:
        """Parse and handle ``data``; False once nothing more is parsed."""
        parser = self._parser
        assert parser is not None  # noqa: S101  # only after the 101
        frames = parser.frames
        events = parser.feed(data)
        self._credit -= parser.frames - frames
        if events and not self._handle(events):
            return False
        if self._backed_up and self.transport.get_write_buffer_size() > self.send_buffer_bytes:
            let_go_slow(self)
            return False
        if self._pong_timer is not None and not self._close_sent and not self._behind:
            self._alive()
        return self._linger_left is None and not self.transport.is_closing()

    def _handle(self, events: list[Any]) -> bool:
        """The parser's events in order; False once the connection is closing for good (the
        peer's close, a protocol error)."""
        transport = self.transport
        for event in events:
            kind = type(event)
            if kind is str or kind is bytes:
                if self._close_sent:
                    continue  # the app is past its close: read on for the peer's reply
                self._inbox.put(event)
                if not self._read_paused:
                    self._read_paused = True
                    transport.pause_reading()
            elif kind is Ping:
                if not transport.is_closing():
                    transport.write(event.reply)
            elif kind is Pong:
                self._pong(event.payload)
            elif kind is Close:
                self._peer_closed(event)
                return False
            else:
                self._failed(cast(Failure, event))
                return False
        return True

    def _peer_closed(self, event: Close) -> None:
        if self._close_sent:  # the peer answered our close: the closing handshake is done
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
                self.transport.close()
            return
        self._closing = True
        if not self.transport.is_closing():
            self._inbox.put(
                {"type": "websocket.disconnect", "code": event.code, "reason": event.reason}
            )
            self.transport.write(event.reply)
            self.transport.close()

    def _failed(self, failure: Failure) -> None:
        """The client broke the protocol (a frame over the size limit, say): send the close
        frame, then the lingering close (``metered_reads.linger``). After a close of the
        gateway's own (the app's), no second close frame: the lingering close only, as
        websockets fails a connection that is already closing."""
        if not self._close_sent:
            self._inbox.put(
                {"type": "websocket.disconnect", "code": failure.code, "reason": failure.reason}
            )
            self.transport.write(failure.reply)
        self._close_sent = True
        self._close_timer = linger(self, self._close_timer, self._config.ws_max_size)


def native_websocket_protocol(
    frame_rate: float, send_buffer_bytes: int
) -> type[NativeWebSocketProtocol]:
    """The protocol class uvicorn is given, with this gateway's budgets."""
    return type(
        "NativeWebSocketProtocol",
        (NativeWebSocketProtocol,),
        {
            "__slots__": (),
            "frame_rate": float(frame_rate),
            "send_buffer_bytes": send_buffer_bytes,
        },
    )

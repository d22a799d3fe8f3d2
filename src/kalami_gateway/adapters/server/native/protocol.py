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
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
from collections.abc import Coroutine
from typing import Any, Final, cast
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_client_addr,
    get_local_addr,
    get_path_with_query_string,
    get_remote_addr,
    is_ssl,
)
from uvicorn.server import ServerState

from kalami_gateway.adapters.asgi import SOCKET_CONTROL, Receive, Send
from kalami_gateway.adapters.server import close_budget, heartbeats, tcp_peer
from kalami_gateway.adapters.server.frame_budget import (
    NO_BUDGET,
    refilled,
    room,
    throttle_wait,
)
from kalami_gateway.adapters.server.native import handshake as hs
from kalami_gateway.adapters.server.native import opcodes
from kalami_gateway.adapters.server.native.events import Close, Failure, Ping, Pong
from kalami_gateway.adapters.server.native.inbox import Inbox
from kalami_gateway.adapters.server.native.parser import FrameParser
from kalami_gateway.adapters.server.native.serializer import (
    binary_frame,
    close_frame,
    frame_header,
    ping_frame,
    text_frame,
)
from kalami_gateway.adapters.server.socket_control import wake

log = logging.getLogger(__name__)

# The connection's phases.
_NEW: Final = 0  # the upgrade request has not arrived
_CONNECTING: Final = 1  # the app runs; no accept yet
_OPEN: Final = 2  # the 101 is out
_REFUSED: Final = 3  # answered with an HTTP status (403, a denial, a bad handshake): nothing read

_SEND: Final = "websocket.send"
_RECEIVE: Final = "websocket.receive"
# Past this many payload bytes a frame is written as its header and the payload, not copied
# into one bytes first.
_WRITE_APART: Final = 16384
_pack_ping = struct.Struct("!I").pack


class NativeWebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection, from the upgrade request uvicorn hands over to the socket's
    end; its own ``SocketControl`` (the ``kalami.socket`` scope extension)."""

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
        self._phase = _NEW
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
        # The frame budget, as LivelyWebSocketProtocol keeps it (see there).
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

    # -- The connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server_state.connections.add(self)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_throttle()
        self._stop_keepalive()
        code = 1005 if self._phase == _OPEN and self._denial is None else 1006
        self._inbox.put({"type": "websocket.disconnect", "code": code})
        self._server_state.connections.discard(self)
        if self._phase < _OPEN:
            self._phase = _REFUSED
        self._disconnected = True
        self._wake_senders()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if exc is None:
            self.transport.close()
        self._lost = True
        if self._pausing is not None:
            wake(self._pausing)
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
        if self._phase == _OPEN and self._denial is None:
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
            self._budget_spent()
        else:
            self._behind = False
        if self._pong_timer is not None and not self._close_sent and not self._behind:
            self._alive()

    def _received_slowly(self, data: bytes) -> None:
        """Every read that is not simply parsed: the handshake, frames before the accept, a
        read over the budget's room, the bytes after a close frame."""
        if self._linger_left is not None:  # lingering: discarded, up to a bound
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self.transport.pause_reading()  # the close timer ends it
            return
        if self._stash is not None:  # throttled, or waiting for the accept: kept in order
            self._stash += data
            self.transport.pause_reading()
            return
        phase = self._phase
        if phase == _NEW:  # the upgrade request, handed over whole
            self._connect(data)
            return
        if phase == _CONNECTING:
            # Frames sent without waiting for the 101: kept until the accept is out.
            self._stash = data
            self._room = -1
            self.transport.pause_reading()
            return
        if phase == _REFUSED:
            return
        if self._close_sent:
            self._read_after_close += len(data)
            if self._read_after_close > close_budget.CLOSE_READ_BYTES:
                # Enough for a close reply: the rest is discarded until the close timer.
                self._linger_left = 0
                self._room = -1
                self.transport.pause_reading()
                return
        self._metered(data)

    def _metered(self, data: bytes) -> None:
        """Parse ``data`` in pieces the frame budget allows; past it, keep the rest."""
        if self.frame_rate <= 0:
            self._parse(data)
            return
        self._refill()
        start, size = 0, len(data)
        while start < size:
            if self._credit < 1:
                self._throttle_now(data[start:])
                return
            end = min(size, start + room(self._credit))
            if not self._parse(data if start == 0 and end == size else data[start:end]):
                return
            start = end
        if self._credit <= 0:
            self._budget_spent()
        else:
            self._behind = False
            self._open_room()

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
            self._let_go_slow()
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

    def _alive(self) -> None:
        """A frame from the peer stands for the pong it owes."""
        assert self._pong_timer is not None  # noqa: S101  # checked by the caller
        self._pong_timer.cancel()
        self._pong_timer = None
        self._ping_payload = None
        self._schedule_ping()

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
        frame, stop writing, and keep reading and discarding for a while before closing
        (``LivelyWebSocketProtocol.handle_parser_exception``: a close at once, while the
        client still sends, makes the kernel answer with a reset that can destroy the close
        frame before the client reads it)."""
        self._inbox.put(
            {"type": "websocket.disconnect", "code": failure.code, "reason": failure.reason}
        )
        transport = self.transport
        transport.write(failure.reply)
        self._close_sent = True
        if transport.can_write_eof():
            transport.write_eof()
        throttled = self._throttle is not None
        self._stop_throttle()
        self._linger_left = max(close_budget.LINGER_BYTES, self._config.ws_max_size)
        self._room = -1
        if self._read_paused or throttled:
            self._read_paused = False
            transport.resume_reading()
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self.loop.call_later(close_budget.LINGER_SECONDS, transport.close)

    # -- The frame budget -------------------------------------------------------------------

    def _refill(self) -> None:
        rate = self.frame_rate
        if rate <= 0:
            self._credit = math.inf
        else:
            now = self.loop.time()
            self._credit = refilled(self._credit, self._stamp, now, rate)
            self._stamp = now
        self._open_room()

    def _open_room(self) -> None:
        """How much of a read may be parsed at once, now."""
        if (
            self._stash is not None
            or self._linger_left is not None
            or self._backed_up
            or self._phase != _OPEN
        ):
            self._room = -1
        elif self.frame_rate <= 0:
            self._room = NO_BUDGET
        else:
            self._room = room(self._credit)

    def _budget_spent(self) -> None:
        if self._linger_left is not None or self.transport.is_closing():
            return
        self._refill()
        if self._credit <= 0:
            self._throttle_now(b"")

    def _throttle_now(self, rest: bytes) -> None:
        """Stop reading this peer until its budget has come back; ``rest`` waits unparsed."""
        self._stash = rest
        self._room = -1
        self._behind = True
        self.transport.pause_reading()
        self._read_paused = False  # ours now: the app's next receive() must not resume it
        wait = throttle_wait(self.frame_rate, self._credit)
        self._throttle = self.loop.call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttle = None
        if self.transport.is_closing():
            return
        self._refill()
        self._feed_stash()

    def _feed_stash(self) -> None:
        """Parse what waited (throttled, or sent before the accept), then read on unless a
        message waits for the app (its receive() resumes reading) or the budget is spent
        again."""
        stash, self._stash = self._stash, None
        self._open_room()
        if stash:
            self._received_slowly(stash)
        if self._stash is not None or self._linger_left is not None:
            return
        if self.transport.is_closing():
            return
        if not self._inbox.empty():
            self._read_paused = True
        elif not self._read_paused:
            self.transport.resume_reading()

    def _stop_throttle(self) -> None:
        if self._throttle is not None:
            self._throttle.cancel()
            self._throttle = None
        self._stash = None

    # -- Bytes out --------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._write_paused = True
        # Reads take the slow path, which checks the write buffer after each parse: pongs the
        # peer does not read count against the send buffer as the app's messages do.
        self._backed_up = True
        self._room = -1

    def resume_writing(self) -> None:
        self._backed_up = False
        self._wake_senders()
        self._open_room()

    def _wake_senders(self) -> None:
        self._write_paused = False
        waiters, self._drain = self._drain, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def _writable(self) -> None:
        while self._write_paused:
            waiter = self.loop.create_future()
            if self._drain is None:
                self._drain = []
            self._drain.append(waiter)
            await waiter

    def _let_go_slow(self) -> None:
        """A peer that sends pings and does not read the pongs: released like a slow
        consumer."""
        self._slow = True
        log.warning("ws_slow_consumer", extra={"why": "replies to its pings unsent"})
        self.transport.abort()

    def _write_data(self, opcode: int, data: bytes) -> None:
        if len(data) > _WRITE_APART:
            self.transport.writelines((frame_header(opcode, len(data)), data))
        elif opcode == opcodes.TEXT:
            self.transport.write(text_frame(data))
        else:
            self.transport.write(binary_frame(data))

    # -- The handshake and the app ----------------------------------------------------------

    def _connect(self, head: bytes) -> None:
        """The upgrade request: a bad one is answered as websockets answers it; a good one
        gets its scope, and the app runs."""
        self._phase = _CONNECTING
        shake = hs.read_request(head)
        if shake is None:
            judged = hs.judged_by_websockets(head, self._config.ws_max_size)
            if judged.refusal or judged.request is None or judged.response is None:
                self._phase = _REFUSED
                self._close_sent = True
                self.transport.write(judged.refusal)
                self.transport.close()
                return
            shake = hs.handshake_of(judged.request, judged.response)
        self._handshake = shake
        config = self._config
        transport = self.transport
        root_path = config.root_path
        raw_path, _, query = shake.target.partition("?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(transport) else "ws",
            "server": get_local_addr(transport),
            "client": get_remote_addr(transport),
            "root_path": root_path,
            "path": root_path + unquote(raw_path),
            "raw_path": root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "headers": shake.headers,
            "subprotocols": shake.subprotocols,
            "state": self._app_state.copy(),
            "extensions": {"websocket.http.response": {}, SOCKET_CONTROL: self},
        }
        self._inbox.put({"type": "websocket.connect"})
        task = self.loop.create_task(self._run_asgi())
        task.add_done_callback(self._on_task_complete)
        self._server_state.tasks.add(task)

    async def _run_asgi(self) -> None:
        logger = logging.getLogger("uvicorn.error")
        try:
            result = await self._app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            logger.exception("Exception in ASGI application\n")
            self._send_500()
        else:
            if self._phase == _CONNECTING:
                logger.error("ASGI callable returned without completing handshake.")
                self._send_500()
            elif result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
        serving = self._serving
        if serving is not None:
            # The app handed its message loop over (``hand_off``) and returned: its call
            # chain is gone, and so is what its layers put in the scope.
            self._serving = None
            scope, self.scope = self.scope, None
            if scope is not None:
                scope.clear()
            try:
                await serving
            except BaseException:
                logger.exception("Exception in ASGI application\n")
        if self._close_timer is None:
            self.transport.close()

    def _on_task_complete(self, task: asyncio.Task[None]) -> None:
        self._server_state.tasks.discard(task)
        self._app_done = True
        self._let_go()

    def _send_500(self) -> None:
        if self._phase != _CONNECTING or self._denial is not None:
            return
        self._phase = _REFUSED
        self.transport.write(hs.rejection(500, "Internal Server Error"))

    def _let_go(self) -> None:
        """Once the app has returned and the socket is gone, nothing runs for this connection
        again: break the cycle through the scope (its extensions hold this protocol)."""
        if not (self._lost and self._app_done):
            return
        if self.scope is not None:
            self.scope.clear()
        self._parser = None
        self._handshake = None

    async def receive(self) -> dict[str, Any]:
        """The app's next event: the connect, a message, the disconnect."""
        inbox = self._inbox
        item = await inbox.get(self.loop)
        if self._read_paused and inbox.empty():
            self._read_paused = False
            self.transport.resume_reading()
        kind = type(item)
        if kind is str:
            return {"type": _RECEIVE, "text": item}
        if kind is bytes:
            return {"type": _RECEIVE, "bytes": item}
        return cast("dict[str, Any]", item)

    async def send(self, message: Any) -> None:
        """The app's events: the accept (or a refusal) first, then messages and a close."""
        if self._write_paused:
            await self._writable()
        if self._disconnected:
            raise ClientDisconnected()
        kind = message["type"]
        if self._phase == _OPEN and not self._close_sent:
            if kind == _SEND:
                if self._closing:
                    raise ClientDisconnected()
                data = message.get("bytes")
                if data is not None:
                    self._write_data(opcodes.BINARY, data)
                else:
                    text = message.get("text")
                    if text is not None:
                        self._write_data(opcodes.TEXT, text.encode())
            elif kind == "websocket.close":
                if self._closing:
                    raise ClientDisconnected()
                self._close(message.get("code", 1000), message.get("reason", "") or "")
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.send' or 'websocket.close', "
                    f"but got '{kind}'."
                )
        elif self._phase == _CONNECTING and self._denial is None:
            self._answer_handshake(message)
        elif self._denial is not None:
            self._deny_more(message)
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}', after sending 'websocket.close'."
            )

    def _close(self, code: int, reason: str) -> None:
        """The app's close: the frame, then up to CLOSE_TIMEOUT for the peer's reply."""
        transport = self.transport
        if transport.is_closing():
            return
        self._inbox.put({"type": "websocket.disconnect", "code": code, "reason": reason})
        transport.write(close_frame(code, reason))
        self._close_sent = True
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        self._close_timer = self.loop.call_later(close_budget.CLOSE_TIMEOUT, transport.close)

    def _answer_handshake(self, message: Any) -> None:
        kind = message["type"]
        logger = logging.getLogger("uvicorn.error")
        scope = cast("dict[str, Any]", self.scope)
        transport = self.transport
        if kind == "websocket.accept":
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    '%s - "WebSocket %s" [accepted]',
                    get_client_addr(scope),  # type: ignore[arg-type]
                    get_path_with_query_string(scope),  # type: ignore[arg-type]
                )
            shake = self._handshake
            assert shake is not None  # noqa: S101  # set with the scope
            if transport.is_closing():
                return
            extra = list(self._server_state.default_headers) + list(message.get("headers", []))
            transport.write(hs.switching_protocols(shake.accept, extra, message.get("subprotocol")))
            self._handshake = None
            self._phase = _OPEN
            self._parser = FrameParser(self._config.ws_max_size)
            self._start_keepalive()
            self._refill()
            if self._stash is not None:
                self._feed_stash()
        elif kind == "websocket.close":
            self._inbox.put({"type": "websocket.disconnect", "code": 1006})
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    '%s - "WebSocket %s" 403',
                    get_client_addr(scope),  # type: ignore[arg-type]
                    get_path_with_query_string(scope),  # type: ignore[arg-type]
                )
            self._refuse(hs.rejection(403, ""))
        elif kind == "websocket.http.response.start":
            status = message["status"]
            if not 100 <= status < 600:
                raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    '%s - "WebSocket %s" %d',
                    get_client_addr(scope),  # type: ignore[arg-type]
                    get_path_with_query_string(scope),  # type: ignore[arg-type]
                    status,
                )
            self._denial = (status, list(message.get("headers", [])), b"")
        else:
            raise RuntimeError(
                "Expected ASGI message 'websocket.accept', 'websocket.close' "
                f"or 'websocket.http.response.start' but got '{kind}'."
            )

    def _deny_more(self, message: Any) -> None:
        assert self._denial is not None  # noqa: S101  # checked by the caller
        if message["type"] != "websocket.http.response.body":
            raise RuntimeError(
                f"Expected ASGI message 'websocket.http.response.body' but got '{message['type']}'."
            )
        if self._close_sent:
            raise RuntimeError("Unexpected ASGI message after the response was sent.")
        status, headers, body = self._denial
        body += message["body"]
        self._denial = (status, headers, body)
        if not message.get("more_body", False):
            self._inbox.put({"type": "websocket.disconnect", "code": 1006})
            self._refuse(hs.denial(status, headers, body))

    def _refuse(self, response: bytes) -> None:
        self._phase = _REFUSED
        self._close_sent = True
        self._stash = None
        self.transport.write(response)
        self.transport.close()

    # -- SocketControl (adapters/asgi.py), for the app --------------------------------------

    def unsent_bytes(self) -> int:
        """Bytes written to the socket that the client has not taken yet."""
        return self.transport.get_write_buffer_size()

    def release(self) -> None:
        """Drop the connection at once, unsent bytes and all."""
        self.transport.abort()

    @property
    def slow(self) -> bool:
        """The protocol let the connection go itself: pongs unread past the send buffer."""
        return self._slow

    @property
    def unanswered(self) -> bool:
        """The protocol let the connection go itself: no pong in time, or a peer whose
        network vanished."""
        return self._unanswered

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` before reading this connection again (a rate limit), or less if
        its socket goes meanwhile."""
        if self._lost:
            return
        loop = self.loop
        waiter: asyncio.Future[None] = loop.create_future()
        self._pausing = waiter
        timer = loop.call_later(seconds, wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._pausing = None

    def accepted(self) -> tuple[Receive, Send]:
        """Once the accept is sent: this protocol's own ``receive`` and ``send``; the scope's
        header list, query string and subprotocols (tokens, all three) are let go."""
        if self._phase != _OPEN:
            if self.transport.is_closing():
                # The accept was dropped on a closing socket: the client left (a handshake
                # timeout of its own) while the app was still deciding.
                raise ConnectionResetError("the client left before the accept was sent")
            raise RuntimeError("the WebSocket is not accepted yet")
        scope = cast("dict[str, Any]", self.scope)
        scope["headers"] = []
        scope["query_string"] = b""
        scope["subprotocols"] = []
        return cast(Receive, self.receive), cast(Send, self.send)

    def hand_off(self, serving: Coroutine[Any, Any, None]) -> bool:
        """Take the app's message loop (``serving``), to run in the app's own task once the
        app has returned: Litestar's call chain and the connection objects it holds (~3 KB
        an idle connection) are let go, and every message resumes a shorter chain."""
        self._serving = serving
        return True

    # -- Keepalive --------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        interval = self._config.ws_ping_interval
        if interval is not None and interval > 0:
            self._schedule_ping()

    def _stop_keepalive(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
        self._ping_payload = None

    def _schedule_ping(self) -> None:
        """The next ping, on the loop's shared heartbeat timer."""
        interval = cast(float, self._config.ws_ping_interval)
        delay = max(0.0, interval - self._last_rtt)
        self._ping_timer = heartbeats.for_loop(self.loop).call_later(delay, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self._close_sent or self.transport.is_closing():
            return
        payload = self._ping_payload = _pack_ping(random.getrandbits(32))
        self._ping_sent_at = self.loop.time()
        self.transport.write(ping_frame(payload))
        timeout = self._config.ws_ping_timeout
        if timeout is not None:
            self._pong_timer = self.loop.call_later(timeout, self._pong_timed_out)
        else:
            self._schedule_ping()

    def _pong(self, payload: bytes) -> None:
        if self._ping_payload is None or payload != self._ping_payload:
            return  # unsolicited, or stale
        self._last_rtt = self.loop.time() - self._ping_sent_at
        self._ping_payload = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            self._schedule_ping()

    def _pong_timed_out(self) -> None:
        if self._not_reading() and not self._close_sent:
            # Its pong may be behind frames the gateway has not read yet: not held against
            # it, unless its kernel has stopped acknowledging too.
            timeout = cast(float, self._config.ws_ping_timeout)
            if tcp_peer.gone_quiet(self.transport.get_extra_info("socket"), timeout / 2):
                log.info("ws_peer_gone", extra={"why": "nothing acknowledged since the ping"})
                self._unanswered = True
                self.transport.abort()
                return
            # Ping again at once: with reading paused only a write notices a reset.
            self._pong_timer = None
            self._ping_payload = None
            self._ping()
            return
        self._pong_timer = None
        self._ping_payload = None
        if self._close_sent or self.transport.is_closing():
            return
        # Counted as ping_timeout (kalami_websocket_closed_total).
        log.info("ws_ping_timed_out", extra={"timeout_s": self._config.ws_ping_timeout})
        self._unanswered = True
        self.transport.write(close_frame(1011, "keepalive ping timeout"))
        self._close_sent = True
        self.transport.close()

    def _not_reading(self) -> bool:
        """Whether the gateway itself holds the peer's frames back."""
        return (
            self._read_paused
            or not self._inbox.empty()
            or self._throttle is not None
            or self._stash is not None
            or self._behind
        )


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

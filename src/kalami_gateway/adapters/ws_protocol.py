"""uvicorn's websockets-sansio protocol, with liveness that a rate limit cannot fool.

A connection over its rate (WS_MESSAGE_RATE, WS_AUDIO_RATE) is read slowly on purpose, so
the pong to a protocol ping may sit in the socket behind many of its messages for longer
than the ping timeout; uvicorn would then drop a client that is plainly alive. Here:

- any frame read from the peer counts as a pong (a client whose messages arrive is alive);
- a ping that times out while the gateway itself is not reading (messages of the peer still
  waiting for the app, reading paused) is not held against the peer: the next ping is
  scheduled instead. Once the gateway reads again, a dead peer fails the next one.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Final, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.http11 import Request

from kalami_gateway.adapters import heartbeats
from kalami_gateway.adapters.asgi import Receive, Send

# After a close the client caused (a frame too big), how long its remaining bytes are still
# read and discarded before the socket is closed (lingering close, as the RFC and nginx do).
LINGER_SECONDS: Final = 2.0

# The ASGI scope extension through which the app sees its socket's send buffer (and can let
# go of a socket whose client stopped reading).
SOCKET_CONTROL: Final = "kalami.socket"


class SocketControl:
    """What the app may know and do about its connection's socket, and, once it has accepted,
    the server's own ``receive`` and ``send`` for it.

    Litestar routes the connection and sends the accept; after that the gateway's message
    loop calls the protocol directly. Litestar's WebSocket wraps both calls to track a
    connection state the gateway tracks itself, and its exception middleware wraps every send:
    ~2 µs of a ~20 µs ping round trip on the bench's empty app (bench/README.md, "What one
    ping costs")."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: LivelyWebSocketProtocol) -> None:
        self._protocol = protocol

    def unsent_bytes(self) -> int:
        """Bytes written to the socket that the client has not taken yet."""
        return self._protocol.transport.get_write_buffer_size()

    def release(self) -> None:
        """Drop the connection at once, unsent bytes and all (a client that stopped reading
        would never take a close frame either)."""
        self._protocol.transport.abort()

    def accepted(self) -> tuple[Receive, Send]:
        """Call once the accept is sent and the handshake's headers and query are read: the
        server's ``receive`` and ``send``.

        What only the handshake needed is let go (an idle connection would otherwise keep it
        for its whole life, ~2.5 KB): uvicorn's Request and Response; the headers and the path
        (with the token in its query) of the Request, which websockets' parser generator still
        holds in its suspended frame; and the scope's header list and query string. The app
        sees an empty header list and query from then on."""
        protocol = self._protocol
        if not protocol.handshake_complete:
            raise RuntimeError("the WebSocket is not accepted yet")
        request: Request | None = vars(protocol).pop("request", None)
        if request is not None:
            request.headers = _NO_HEADERS
            request.path = ""
        vars(protocol).pop("response", None)
        scope: dict[str, Any] = protocol.scope  # type: ignore[assignment]
        scope["headers"] = []
        scope["query_string"] = b""
        # uvicorn's own types are narrower TypedDicts; the calls are plain ASGI.
        return cast(Receive, protocol.receive), cast(Send, protocol.send)


# What an accepted connection's handshake Request holds instead of its headers (never written).
_NO_HEADERS: Final = Headers()


class ReceiveQueue:
    """What uvicorn's protocol asks of its receive queue (``put_nowait``, ``get``, ``empty``),
    light enough for a connection that mostly waits: an ``asyncio.Queue`` allocates three
    deques of ~760 B each up front, per connection, even empty (bench/README.md, "What one
    idle connection costs"). Here the deque exists only while messages wait. An item is
    always stored before the waiter is woken, so a cancelled ``get`` loses nothing."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def empty(self) -> bool:
        return not self._items


class WritableFlag:
    """uvicorn's ``writable`` event (``set``, ``clear``, ``wait``) without the ~760 B deque an
    ``asyncio.Event`` allocates up front: a waiter list only while a send waits for the
    socket to drain."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter


class LivelyWebSocketProtocol(WebSocketsSansIOProtocol):
    _linger: asyncio.TimerHandle | None = None
    _lost = False  # connection_lost has run
    _app_done = False  # the app's task has finished (there is one only after an upgrade)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Light stand-ins for the asyncio primitives uvicorn makes per connection (the
        # interfaces it uses): ~3 KB of an idle connection's ~23 KB.
        self.queue = ReceiveQueue()  # type: ignore[assignment]
        self.writable = WritableFlag()  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            return  # lingering: the rest of what the client sends is discarded
        super().data_received(data)
        if self.pong_timer is not None and not self.close_sent:
            self.pong_timer.cancel()
            self.pong_timer = None
            self.pending_ping_payload = None
            self.schedule_ping()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # the app task is created, not yet started
            extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[SOCKET_CONTROL] = SocketControl(self)

    def handle_parser_exception(self) -> None:
        """The client broke the protocol (a frame over the size limit, say): send the close
        frame, stop writing, and keep reading and discarding for a while before closing.
        Closing at once while the client is still sending makes the kernel answer with a
        reset, which can destroy the close frame before the client reads it."""
        assert self.conn.close_sent is not None  # noqa: S101  # set by websockets
        close = self.conn.close_sent
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)
        self._lost = True
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
        # websockets' parser generator holds its protocol in its suspended frame.
        self.conn.parser = None  # type: ignore[assignment]

    def schedule_ping(self) -> None:
        """uvicorn's, on the loop's shared heartbeat timer instead of a timer of its own."""
        assert self.ping_interval is not None  # noqa: S101  # only called with keepalive on
        delay = max(0.0, self.ping_interval - self.last_ping_rtt)
        beat = heartbeats.for_loop(self.loop).call_later(delay, self.send_keepalive_ping)
        self.ping_timer = beat  # type: ignore[assignment]  # it has the cancel() uvicorn calls

    def keepalive_timeout(self) -> None:
        if (self.read_paused or not self.queue.empty()) and not self.close_sent:
            self.pong_timer = None
            self.pending_ping_payload = None
            self.schedule_ping()
            return
        super().keepalive_timeout()

"""The app's side of an open native connection: ``receive`` and ``send`` (also what
``accepted()`` hands the message loop), the close the app sends, and its sends waiting while
the socket's write buffer is full.

A message waits for the app in the ``Inbox`` as it was parsed (``str`` or ``bytes``), with
reading paused until the app's next ``receive()`` takes it; ``send`` writes a frame straight
to the transport. No queue of ASGI events, no codec per frame: this is the per-frame path,
and each call here is one level deep."""

from __future__ import annotations

from typing import Any, Final, cast

from uvicorn.protocols.utils import ClientDisconnected

from kalami_gateway.adapters.server import close_budget
from kalami_gateway.adapters.server.metered_reads import open_room
from kalami_gateway.adapters.server.native import opcodes
from kalami_gateway.adapters.server.native.connection import (
    CONNECTING,
    OPEN,
    NativeConnection,
)
from kalami_gateway.adapters.server.native.serializer import (
    binary_frame,
    close_frame,
    frame_header,
    text_frame,
)
from kalami_gateway.adapters.server.standins import wake_all

_SEND: Final = "websocket.send"
_RECEIVE: Final = "websocket.receive"
# Past this many payload bytes a frame is written as its header and the payload, not copied
# into one bytes first.
_WRITE_APART: Final = 16384


class Messages(NativeConnection):
    __slots__ = ()

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
        if self._phase == OPEN and not self._close_sent:
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
        elif self._phase == CONNECTING and self._denial is None:
            self._answer_handshake(message)
        elif self._denial is not None:
            self._deny_more(message)
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}', after sending 'websocket.close'."
            )

    def _write_data(self, opcode: int, data: bytes) -> None:
        if len(data) > _WRITE_APART:
            self.transport.writelines((frame_header(opcode, len(data)), data))
        elif opcode == opcodes.TEXT:
            self.transport.write(text_frame(data))
        else:
            self.transport.write(binary_frame(data))

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

    # -- The socket's write buffer ----------------------------------------------------------

    def pause_writing(self) -> None:
        self._write_paused = True
        # Reads take the slow path, which checks the write buffer after each parse: pongs the
        # peer does not read count against the send buffer as the app's messages do.
        self._backed_up = True
        self._room = -1

    def resume_writing(self) -> None:
        self._backed_up = False
        self._wake_senders()
        if self._phase == OPEN:  # before it the room stays shut
            open_room(self)

    def _wake_senders(self) -> None:
        self._write_paused = False
        waiters, self._drain = self._drain, None
        wake_all(waiters)

    async def _writable(self) -> None:
        while self._write_paused:
            waiter = self.loop.create_future()
            if self._drain is None:
                self._drain = []
            self._drain.append(waiter)
            await waiter

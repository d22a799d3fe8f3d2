"""``FrameParser``: a client's bytes in, complete messages and control events out (``events``),
for one connection after the handshake, without I/O.

Each read is parsed in place: a frame's header is read by index, its payload unmasked by
websockets' C speedup straight from the read (from a ``memoryview`` when large, so it is not
copied first); only a frame cut by the end of a read is kept, in a ``bytearray`` that the next
reads are appended to and that is not looked at again until the frame is whole. No generator,
no frame object: an idle connection holds the parser's few slots and nothing else.

The rules, checks and their order are websockets' (``Frame.parse``, ``Frame.check``,
``Protocol.recv_frame``, ``Close.parse``), so that any stream gives the same messages, answers
and failure, at the same point, as its ``ServerProtocol`` (proved by
tests/unit/adapters/server/test_native_codec_differential.py):

- on the first two bytes: a reserved opcode (1002 "invalid opcode"), an unmasked frame (1002
  "incorrect masking");
- once the length is read, before the mask and the payload have arrived: a frame longer than
  what is left of ``max_size`` for the message it belongs to (1009). A message's fragments
  count together; so does a control frame inside a fragmented message (websockets' rule: it
  is checked against what the message has left). A 64-bit length with its top bit set, which
  RFC 6455 forbids, is just too big. Lengths in a longer form than needed are accepted;
- once the frame is whole: an RSV bit (1002: no extension is negotiated; permessage-deflate is
  not supported yet), a control frame over 125 bytes or fragmented (1002), a data frame
  inside a fragmented message or a continuation outside one (1002), a close frame of 1 byte,
  with a code that may not be sent (``close_codes``) or inside a fragmented message (1002), a
  close reason that is not UTF-8 (1007);
- a text message's UTF-8 is checked fragment by fragment (1007 as soon as CPython's
  incremental decoder sees it is invalid: websockets' sans-I/O layer leaves this to the layer
  above, whose ``recv_streaming`` decodes the same way).

After a ``Close`` or a ``Failure`` nothing more is parsed: every later read is discarded, as
websockets does (RFC 6455 §1.4 and §7.1.7)."""

from __future__ import annotations

import codecs
import struct
from typing import Final

from kalami_gateway.adapters.server.native.close_codes import (
    INVALID_DATA,
    MESSAGE_TOO_BIG,
    NO_STATUS_RCVD,
    PROTOCOL_ERROR,
    valid_on_the_wire,
)
from kalami_gateway.adapters.server.native.events import Close, Event, Failure, Ping, Pong
from kalami_gateway.adapters.server.native.opcodes import (
    CLOSE,
    CONTINUATION,
    CONTROL,
    KNOWN,
    MAX_CONTROL_PAYLOAD,
    PING,
    TEXT,
)
from kalami_gateway.adapters.server.native.serializer import close_frame

try:  # (re-exported: a test holds the parser to the C one)
    from websockets.speedups import apply_mask as apply_mask
except ImportError:  # a build without the C extension: websockets' pure-Python one
    from websockets.utils import apply_mask as apply_mask

_utf8_decoder = codecs.getincrementaldecoder("utf-8")
_two_bytes = struct.Struct("!BB").pack
_unpack_length64 = struct.Struct("!Q").unpack_from

# Past this many payload bytes the payload is unmasked from a view of the read rather than
# from a copied slice of it. Measured (µs, slice / view): 4 KiB 0.27 / 0.36, 16 KiB 0.56 /
# 0.52, 64 KiB 2.8 / 1.5, 1 MiB 479 / 16 (a fresh large allocation for the copy).
_VIEW_PAYLOAD: Final = 16384
_PONG: Final = 0x80 | 0xA
_CLOSE: Final = 0x80 | CLOSE


class FrameParser:
    """One connection's incoming frames (the server side: every frame must be masked).

    ``feed(data)`` parses what it can and returns the events of the frames it completed, in
    order (``events.Event``). ``max_size``: the largest message, in bytes, as websockets'
    ``max_size`` counts it (None: no limit). ``frames`` counts the frames read so far, control
    frames and fragments included; ``done`` is true once a ``Close`` or a ``Failure`` has been
    handed out."""

    __slots__ = (
        "_buffer",
        "_decoder",
        "_kind",
        "_max_size",
        "_need",
        "_parts",
        "_size",
        "done",
        "frames",
    )

    def __init__(self, max_size: int | None = 1 << 20) -> None:
        self._max_size = max_size
        self._buffer: bytearray | None = None  # the start of a frame cut by a read's end
        self._need = 0  # bytes the buffer must hold before it is parsed again
        self._kind = 0  # TEXT or BINARY inside a fragmented message, else 0
        self._size = 0  # bytes of the fragmented message so far
        self._parts: bytearray | None = None  # those bytes
        self._decoder: codecs.IncrementalDecoder | None = None  # its UTF-8, if text
        self.done = False
        self.frames = 0

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """Parse ``data``, the next bytes from the client; return the events it completed."""
        events: list[Event] = []
        if self.done:
            return events
        buffer = self._buffer
        if buffer is not None:
            buffer += data
            if len(buffer) < self._need:
                return events
            data = buffer
        end = len(data)
        pos = 0
        count = 0
        max_size = self._max_size
        need = 0
        while True:
            left = end - pos
            if left < 2:
                need = 2
                break
            first = data[pos]
            second = data[pos + 1]
            opcode = first & 0x0F
            if opcode not in KNOWN:
                events.append(self._fail(PROTOCOL_ERROR, "invalid opcode"))
                break
            if not second & 0x80:
                events.append(self._fail(PROTOCOL_ERROR, "incorrect masking"))
                break
            length = second & 0x7F
            start = pos + 2
            if length >= 126:
                if length == 126:
                    if left < 4:
                        need = 4
                        break
                    length = data[start] << 8 | data[start + 1]
                    start += 2
                else:
                    if left < 10:
                        need = 10
                        break
                    (length,) = _unpack_length64(data, start)
                    start += 8
            if max_size is not None and length > max_size - self._size:
                events.append(self._too_big(length, max_size))
                break
            stop = start + 4 + length
            if stop > end:
                need = stop - pos
                break
            mask = data[start : start + 4]
            if length > _VIEW_PAYLOAD:
                payload = apply_mask(memoryview(data)[start + 4 : stop], mask)
            else:
                payload = apply_mask(data[start + 4 : stop], mask)
            pos = stop
            count += 1

            if first & 0x70:
                events.append(self._fail(PROTOCOL_ERROR, "reserved bits must be 0"))
                break
            fin = first & 0x80
            if opcode & CONTROL:
                if length > MAX_CONTROL_PAYLOAD:
                    events.append(self._fail(PROTOCOL_ERROR, "control frame too long"))
                    break
                if not fin:
                    events.append(self._fail(PROTOCOL_ERROR, "fragmented control frame"))
                    break
                if opcode == PING:
                    events.append(Ping(payload, _two_bytes(_PONG, length) + payload))
                elif opcode == CLOSE:
                    events.append(self._close(payload))
                    break
                else:
                    events.append(Pong(payload))
            elif opcode == CONTINUATION:
                kind = self._kind
                if not kind:
                    events.append(self._fail(PROTOCOL_ERROR, "unexpected continuation frame"))
                    break
                parts = self._parts
                assert parts is not None  # noqa: S101  # set with _kind
                if kind == TEXT:
                    decoder = self._decoder
                    assert decoder is not None  # noqa: S101  # set with a text _kind
                    try:
                        decoder.decode(payload, bool(fin))
                    except UnicodeDecodeError as exc:
                        events.append(self._invalid_utf8(exc))
                        break
                parts += payload
                if fin:
                    events.append(parts.decode() if kind == TEXT else bytes(parts))
                    self._kind = self._size = 0
                    self._parts = self._decoder = None
                else:
                    self._size += length
            elif self._kind:
                events.append(self._fail(PROTOCOL_ERROR, "expected a continuation frame"))
                break
            elif fin:
                if opcode == TEXT:
                    try:
                        events.append(payload.decode())
                    except UnicodeDecodeError as exc:
                        events.append(self._invalid_utf8(exc))
                        break
                else:
                    events.append(payload)
            else:  # the first fragment of a message
                if opcode == TEXT:
                    decoder = _utf8_decoder()
                    try:
                        decoder.decode(payload, False)
                    except UnicodeDecodeError as exc:
                        events.append(self._invalid_utf8(exc))
                        break
                    self._decoder = decoder
                self._kind = opcode
                self._size = length
                self._parts = bytearray(payload)

        self.frames += count
        if self.done:
            return events
        if pos == end:
            if buffer is not None:
                self._buffer = None
        elif buffer is None:
            self._buffer = bytearray(data[pos:])
            self._need = need
        else:
            if pos:
                del buffer[:pos]
            self._buffer = buffer
            self._need = need
        return events

    def _close(self, payload: bytes) -> Event:
        """The peer's close frame, or the failure it is."""
        length = len(payload)
        if length == 0:
            code, reason = NO_STATUS_RCVD, ""
        elif length == 1:
            return self._fail(PROTOCOL_ERROR, "close frame too short")
        else:
            code = payload[0] << 8 | payload[1]
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError as exc:
                return self._invalid_utf8(exc)
            if not valid_on_the_wire(code):
                return self._fail(PROTOCOL_ERROR, "invalid status code")
        if self._kind:
            return self._fail(PROTOCOL_ERROR, "incomplete fragmented message")
        self._stop()
        # The payload echoed as it came, as websockets does (an empty one stays empty).
        return Close(code, reason, _two_bytes(_CLOSE, length) + payload)

    def _too_big(self, length: int, max_size: int) -> Failure:
        # websockets' PayloadTooBig message, word for word.
        after = f"after reading {self._size} bytes " if self._kind else ""
        return self._fail(
            MESSAGE_TOO_BIG, f"frame with {length} bytes {after}exceeds limit of {max_size} bytes"
        )

    def _invalid_utf8(self, exc: UnicodeDecodeError) -> Failure:
        return self._fail(INVALID_DATA, f"{exc.reason} at position {exc.start}")

    def _fail(self, code: int, reason: str) -> Failure:
        self._stop()
        return Failure(code, reason, close_frame(code, reason))

    def _stop(self) -> None:
        """Nothing more is parsed: let go of everything held."""
        self.done = True
        self._buffer = self._parts = self._decoder = None
        self._kind = self._size = 0

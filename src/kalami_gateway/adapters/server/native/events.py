"""What ``FrameParser.feed`` hands out, in the order the frames arrived.

A complete data message is the message itself, as websockets' ``recv`` and ASGI give it: a
``str`` for a text message (checked as UTF-8), ``bytes`` for a binary one; no object is built
around it. Control frames, and the end of the stream, are the small records below; each that
asks for an answer carries the bytes of that answer (a server frame, unmasked), ready to be
written."""

from __future__ import annotations

import msgspec


class Ping(msgspec.Struct, frozen=True, gc=False):
    """A ping: ``reply`` is the pong to send (the same payload), which RFC 6455 requires."""

    payload: bytes
    reply: bytes


class Pong(msgspec.Struct, frozen=True, gc=False):
    """A pong (an answer to a ping of ours, or unsolicited: RFC 6455 allows both)."""

    payload: bytes


class Close(msgspec.Struct, frozen=True, gc=False):
    """The peer's close frame: its code (1005 when it sent none) and reason, and ``reply``,
    the close frame to send back (its own payload echoed, as websockets does). Nothing after
    it is parsed; the server then closes the TCP connection."""

    code: int
    reason: str
    reply: bytes


class Failure(msgspec.Struct, frozen=True, gc=False):
    """The peer broke the protocol: the connection fails with ``code`` (1002 protocol error,
    1007 invalid UTF-8, 1009 message too big) and ``reason`` (websockets' words), and
    ``reply`` is the close frame to send. Nothing after it is parsed."""

    code: int
    reason: str
    reply: bytes


Event = str | bytes | Ping | Pong | Close | Failure

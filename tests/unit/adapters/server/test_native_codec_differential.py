"""The native frame parser against websockets' own ``ServerProtocol``, by differential fuzzing
(issue 27): hypothesis builds byte streams of client frames, valid and hostile — messages in
fragments with control frames between them, UTF-8 cut across fragments or invalid, close
frames with every kind of code and reason, reserved opcodes and bits, unmasked frames, lengths
in every encoding (a longer form than needed, the 64-bit one with its top bit set), messages
over a small ``max_size``, stray bytes — cuts each stream at random points and feeds the same
pieces to both. After every piece both must have handed out the same messages (type and
payload), the same answers (each pong, the close frame echoed) and the same close or failure
(code, reason and the close frame sent), and nothing after it.

websockets' sans-I/O layer does not look at a text message's UTF-8: its connections do, above
it. The reference here (``WebsocketsReference``) is its ``ServerProtocol`` in the OPEN state
(its documented ``state`` argument: no handshake) plus what its ``recv_streaming`` does with a
text message, decoding each fragment as it arrives and failing with 1007 at the first that is
invalid. The native parser checks UTF-8 that way too; everything else is websockets' alone.

By default the examples are few enough for the unit suite (about 4 s) and always the same
(derandomized). To fuzz for real:

    CODEC_FUZZ_EXAMPLES=20000 CODEC_FUZZ_RANDOM=1 .venv/bin/python -m pytest \\
        tests/unit/adapters/server/test_native_codec_differential.py -q \\
        --hypothesis-show-statistics
"""

from __future__ import annotations

import codecs
import os
import re
import struct
from itertools import pairwise

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.frames import CLOSE, CONT, PING, PONG, TEXT, Frame, Opcode
from websockets.frames import Close as WsClose
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from kalami_gateway.adapters.server.native import Close, Event, Failure, FrameParser, Ping, Pong

# One thing either side handed out, in a form both give.
Observed = tuple[object, ...]

UTF8Decoder = codecs.getincrementaldecoder("utf-8")


def observed(events: list[Event]) -> list[Observed]:
    said: list[Observed] = []
    for item in events:
        if isinstance(item, str):
            said.append(("text", item))
        elif isinstance(item, bytes):
            said.append(("binary", item))
        elif isinstance(item, Ping):
            said.append(("ping", item.payload, item.reply))
        elif isinstance(item, Pong):
            said.append(("pong", item.payload))
        elif isinstance(item, Close):
            said.append(("close", item.code, item.reason, item.reply))
        else:
            assert isinstance(item, Failure)
            said.append(("fail", item.code, item.reason, item.reply))
    return said


class WebsocketsReference:
    """websockets' ``ServerProtocol``, open, with text checked as its ``recv_streaming`` does.

    Each answer is read from what websockets itself queued to send (``data_to_send``), paired
    with the frame that asked for it: a pong per ping, the echo of a close frame, the close
    frame of a failure. A 1007 for invalid text is the close frame its connection sends then
    (``protocol.fail(1007, "<reason> at position <n>")``)."""

    def __init__(self, max_size: int | None) -> None:
        self.protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
        self.kind: Opcode | None = None
        self.parts: list[bytes] = []
        self.decoder: codecs.IncrementalDecoder | None = None
        self.done = False

    def feed(self, data: bytes) -> list[Observed]:
        if self.done:
            return []
        protocol = self.protocol
        protocol.receive_data(data)
        frames = protocol.events_received()
        writes = [w for w in protocol.data_to_send() if w != SEND_EOF]
        said: list[Observed] = []
        for frame in frames:
            assert isinstance(frame, Frame)
            payload = bytes(frame.data)
            if frame.opcode is PING:
                said.append(("ping", payload, writes.pop(0)))
            elif frame.opcode is PONG:
                said.append(("pong", payload))
            elif frame.opcode is CLOSE:
                close = protocol.close_rcvd
                assert close is not None
                said.append(("close", close.code, close.reason, writes.pop(0)))
                self.done = True
            else:
                if frame.opcode is not CONT:
                    self.kind = frame.opcode
                    self.decoder = UTF8Decoder() if frame.opcode is TEXT else None
                    self.parts = []
                self.parts.append(payload)
                if self.decoder is not None:
                    try:
                        self.decoder.decode(payload, frame.fin)
                    except UnicodeDecodeError as exc:
                        # Fail fast, as recv_streaming does: nothing after this frame counts
                        # (websockets' sans-I/O layer parsed on, and answered, regardless).
                        reason = f"{exc.reason} at position {exc.start}"
                        reply = Frame(CLOSE, WsClose(1007, reason).serialize())
                        said.append(("fail", 1007, reason, reply.serialize(mask=False)))
                        self.done = True
                        return said
                if frame.fin:
                    whole = b"".join(self.parts)
                    said.append(
                        ("text", whole.decode()) if self.kind is TEXT else ("binary", whole)
                    )
                    self.kind, self.parts, self.decoder = None, [], None
        if protocol.parser_exc is not None:
            sent = protocol.close_sent
            assert sent is not None
            said.append(("fail", sent.code, sent.reason, writes.pop(0)))
            self.done = True
        assert writes == [], "an answer of websockets' paired with no frame"
        return said


# -- Client frames, valid and not ------------------------------------------------------------

VALID_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999)
INVALID_CODES = (0, 1, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 0xFFFF)
# Not UTF-8: stray and overlong bytes, a surrogate, past U+10FFFF, sequences cut short.
BAD_UTF8 = (
    b"\xff",
    b"\x80",
    b"\xc0\xaf",
    b"\xc3",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xf0\x9f\x98",
    b"\xf8\x88\x80\x80\x80",
)


@st.composite
def encoded(
    draw: st.DrawFn, opcode: int, payload: bytes, hostile: bool, fin: bool = True, rsv: int = 0
) -> bytes:
    """One client frame, masked, its length in the shortest form or a longer one (which
    websockets accepts); if ``hostile``, now and then unmasked or with a 64-bit length whose
    top bit is set (RFC 6455 forbids both)."""
    masked = not hostile or draw(st.integers(0, 39)) != 0
    form = draw(st.integers(0, 39))
    size = len(payload)
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    bit = 0x80 if masked else 0
    if form == 0 and hostile:  # a length no payload can follow
        head = struct.pack("!BBQ", first, bit | 127, size | 1 << 63)
    elif form <= 3:
        head = struct.pack("!BBQ", first, bit | 127, size)
    elif form <= 6 and size < 65536:
        head = struct.pack("!BBH", first, bit | 126, size)
    elif size < 126:
        head = struct.pack("!BB", first, bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, bit | 127, size)
    if not masked:
        return head + payload
    mask = draw(st.binary(min_size=4, max_size=4) | st.just(b"\0\0\0\0"))
    return head + mask + apply_mask(payload, mask)


@st.composite
def utf8ish(draw: st.DrawFn, hostile: bool) -> bytes:
    """Text as bytes: UTF-8 (multi-byte characters likely), now and then spoiled if
    ``hostile``."""
    text = draw(st.text(max_size=24)).encode()
    if hostile and draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(BAD_UTF8)) + text[at:]
    return text


@st.composite
def big_binary(draw: st.DrawFn) -> bytes:
    """A payload past the parser's view threshold, cheaply drawn."""
    size = draw(st.integers(16_385, 20_000))
    seed = draw(st.binary(min_size=1, max_size=16))
    return (seed * (size // len(seed) + 1))[:size]


@st.composite
def close_payload(draw: st.DrawFn, hostile: bool) -> bytes:
    kinds = ["empty", "valid", "valid", "one byte", "invalid code", "any"]
    kind = draw(st.sampled_from(kinds if hostile else kinds[:3]))
    if kind == "empty":
        return b""
    if kind == "one byte":
        return draw(st.binary(min_size=1, max_size=1))
    if kind == "valid":
        code = draw(st.sampled_from(VALID_CODES) | st.integers(3000, 4999))
    elif kind == "invalid code":
        code = draw(st.sampled_from(INVALID_CODES) | st.integers(5000, 0xFFFF))
    else:
        code = draw(st.integers(0, 0xFFFF))
    reason = draw(utf8ish(hostile) | st.just(b"r" * 123))
    if hostile:
        reason = draw(st.just(reason) | st.binary(max_size=8) | st.just(b"r" * 124))
    return struct.pack("!H", code) + reason


@st.composite
def control_frame(draw: st.DrawFn, hostile: bool) -> bytes:
    """A ping or a pong mostly, a close frame (which ends the stream) less often; if
    ``hostile``, payloads over 125 bytes and fragmented ones too."""
    opcode = draw(st.sampled_from([0x9, 0x9, 0x9, 0xA, 0xA, 0x8]))
    if opcode == 0x8:
        payload = draw(close_payload(hostile))
    elif hostile:
        payload = draw(st.binary(max_size=12) | st.binary(min_size=120, max_size=130))
    else:
        payload = draw(st.binary(max_size=12) | st.binary(min_size=120, max_size=125))
    fin = not hostile or draw(st.integers(0, 15)) != 0
    return draw(encoded(opcode, payload, hostile, fin=fin))


@st.composite
def message(draw: st.DrawFn, hostile: bool) -> bytes:
    """A message in 1-4 fragments (cut anywhere, UTF-8 included), pings and pongs between
    them; if ``hostile``, any control frame between them, and now and then a fragment
    missing or a second start."""
    text = draw(st.booleans())
    payload = draw(utf8ish(hostile) if text else st.binary(max_size=40) | big_binary())
    count = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=count - 1)))[: count - 1]
    cuts = [0, *cuts, len(payload)]
    pieces = [payload[a:b] for a, b in pairwise(cuts)]
    frames: list[bytes] = []
    for index, piece in enumerate(pieces):
        opcode = (0x1 if text else 0x2) if index == 0 else 0x0
        frames.append(draw(encoded(opcode, piece, hostile, fin=index == len(pieces) - 1)))
        if index < len(pieces) - 1:
            frames.extend(draw(st.lists(control_frame(hostile), max_size=2)))
    spoil = draw(st.integers(0, 9)) if hostile else -1
    if spoil == 0 and len(frames) > 1:
        frames = frames[1:]  # a continuation without its start
    elif spoil == 1:
        at = draw(st.integers(0, len(frames)))
        frames.insert(at, draw(encoded(0x2, b"new", hostile, fin=draw(st.booleans()))))
    return b"".join(frames)


@st.composite
def wild_frame(draw: st.DrawFn) -> bytes:
    """Any opcode, reserved ones included, any FIN and RSV bits."""
    opcode = draw(st.integers(0, 15))
    rsv = draw(st.sampled_from([0, 0, 0, 1, 2, 4, 7]))
    payload = draw(st.binary(max_size=20) | utf8ish(hostile=True))
    return draw(encoded(opcode, payload, hostile=True, fin=draw(st.booleans()), rsv=rsv))


# Half the streams are clean (every frame valid: only a close frame or max_size ends them),
# so that they run long; half are hostile, every kind of bad frame mixed in.
CLEAN_ITEMS = st.one_of(message(hostile=False), message(hostile=False), control_frame(False))
HOSTILE_ITEMS = st.one_of(
    message(hostile=True), message(hostile=True), message(hostile=True),
    control_frame(hostile=True), wild_frame(), st.binary(min_size=1, max_size=6),
)  # fmt: skip
STREAMS = st.booleans().flatmap(
    lambda hostile: st.lists(HOSTILE_ITEMS if hostile else CLEAN_ITEMS, min_size=1, max_size=10)
)
# Mostly roomy, so that streams run long; small ones make messages and control frames in a
# fragmented message meet the limit.
MAX_SIZES = st.sampled_from([None, None, 1 << 20, 1 << 20, 1000, 1000, 126, 125, 64, 24, 8, 1, 0])
# Where a stream is cut: anywhere, or after every byte (of its first 2 KiB).
CUTS = st.lists(st.integers(0, 1 << 16), min_size=1, max_size=24) | st.just([-1])


@settings(
    max_examples=int(os.environ.get("CODEC_FUZZ_EXAMPLES", "500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("CODEC_FUZZ_RANDOM") is None,
)
@given(STREAMS, CUTS, MAX_SIZES)
def test_the_native_parser_says_what_websockets_says_at_every_cut(
    items: list[bytes], offsets: list[int], max_size: int | None
) -> None:
    stream = b"".join(items)
    if offsets == [-1]:  # every byte of the first 2 KiB, then the rest
        bounds = [*range(min(len(stream), 2048)), len(stream)]
    else:
        bounds = sorted({0, len(stream), *(o % (len(stream) + 1) for o in offsets)})
    pieces = [stream[a:b] for a, b in pairwise(bounds)]
    native = FrameParser(max_size)
    reference = WebsocketsReference(max_size)
    outcome = "open"
    for number, piece in enumerate(pieces):
        said = observed(native.feed(piece))
        expected = reference.feed(piece)
        assert said == expected, f"piece {number} of {len(pieces)}"
        assert native.done == reference.done
        for item in said:
            event(f"event: {item[0]}")
            if item[0] == "close":
                outcome = f"close {item[1]}"
            elif item[0] == "fail":  # which rule: the reason without its numbers
                outcome = f"fail {item[1]} {re.sub(r'[0-9]+', 'N', str(item[2]))}"
    event(f"outcome: {outcome}")
    event("cut: after every byte" if offsets == [-1] else f"cut: in {min(len(pieces), 5)}+ pieces")

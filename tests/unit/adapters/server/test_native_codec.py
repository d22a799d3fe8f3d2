"""The native frame codec, rule by rule (RFC 6455 as a server, with websockets' choices where
the RFC leaves one): the events each client stream gives, the answers they carry, where the
connection fails and with what; and the server frames the serializer builds, read back by
websockets' own client-side parser. tests/unit/adapters/server/
test_native_codec_differential.py holds the parser to websockets' on random streams."""

from __future__ import annotations

import struct

import pytest
from websockets import speedups
from websockets.client import ClientProtocol
from websockets.frames import Close as WsClose
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri
from websockets.utils import apply_mask

from kalami_gateway.adapters.server.native import Close, Event, Failure, FrameParser, Ping, Pong
from kalami_gateway.adapters.server.native import parser as parser_module
from kalami_gateway.adapters.server.native.serializer import (
    binary_frame,
    close_frame,
    frame_header,
    ping_frame,
    pong_frame,
    text_frame,
)
from tests.unit.adapters.server.client_frames import MASK, frame


def text(
    data: str | bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: str = "shortest",
) -> bytes:
    payload = data.encode() if isinstance(data, str) else data
    return frame(0x1, payload, fin=fin, rsv=rsv, masked=masked, length=length)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def feed(data: bytes, max_size: int | None = 1 << 20) -> list[Event]:
    return FrameParser(max_size).feed(data)


def byte_by_byte(data: bytes, max_size: int | None = 1 << 20) -> list[Event]:
    parser = FrameParser(max_size)
    events: list[Event] = []
    for index in range(len(data)):
        events += parser.feed(data[index : index + 1])
    return events


def failure(events: list[Event]) -> Failure:
    assert events, "no events"
    last = events[-1]
    assert isinstance(last, Failure), f"not a failure: {events}"
    return last


def the_close_in(reply: bytes) -> tuple[int, str]:
    """A server close frame read back: its code and reason."""
    assert reply[0] == 0x88
    assert reply[1] == len(reply) - 2  # unmasked, a short length
    parsed = WsClose.parse(reply[2:])
    return parsed.code, parsed.reason


# -- Data messages --------------------------------------------------------------------------


def test_a_text_frame_is_its_text_and_a_binary_frame_its_bytes() -> None:
    events = feed(text('{"type":"ping"}') + frame(0x2, b"\x00\x01\xff"))
    assert events == ['{"type":"ping"}', b"\x00\x01\xff"]
    assert type(events[1]) is bytes


@pytest.mark.parametrize("size", [0, 125, 126, 16_384, 16_385, 65_535, 65_536, 200_000])
def test_every_length_encoding_is_read(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert feed(frame(0x2, payload)) == [payload]
    assert byte_by_byte(frame(0x2, payload[:300])) == [payload[:300]]


@pytest.mark.parametrize("length", ["16-bit", "64-bit"])
def test_a_length_in_a_longer_form_than_needed_is_accepted_as_websockets_does(
    length: str,
) -> None:
    # RFC 6455 §5.2 says the shortest form MUST be used; websockets does not check.
    assert feed(text("hi", length=length)) == ["hi"]


def test_any_cut_of_a_stream_gives_the_same_events() -> None:
    stream = (
        text("héllo wörld ✓")
        + frame(0x9, b"p")
        + frame(0x2, bytes(3000))
        + text("a", fin=False)
        + frame(0x0, b"b")
    )
    whole = feed(stream)
    assert whole[0] == "héllo wörld ✓"
    assert byte_by_byte(stream) == whole
    for cut in range(len(stream) + 1):
        parser = FrameParser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == whole


def test_a_fragmented_message_is_handed_out_whole_once_its_last_fragment_is_in() -> None:
    parser = FrameParser()
    assert parser.feed(frame(0x2, b"ab", fin=False)) == []
    assert parser.feed(frame(0x0, b"cd", fin=False)) == []
    assert parser.feed(frame(0x0, b"", fin=False)) == []
    assert parser.feed(frame(0x0, b"ef")) == [b"abcdef"]
    assert parser.feed(text("next")) == ["next"]


def test_utf8_cut_across_fragments_is_one_text() -> None:
    data = "ünïcødé ✓ 😀".encode()
    frames = b"".join(
        frame(0x1 if i == 0 else 0x0, data[i : i + 1], fin=i == len(data) - 1)
        for i in range(len(data))
    )
    assert feed(frames) == ["ünïcødé ✓ 😀"]


def test_control_frames_inside_a_fragmented_message_are_handed_out_in_order() -> None:
    events = feed(
        text("one ", fin=False)
        + frame(0x9, b"are you there")
        + frame(0x0, b"two ", fin=False)
        + frame(0xA, b"yes")
        + frame(0x0, b"three")
    )
    assert events == [
        Ping(b"are you there", pong_frame(b"are you there")),
        Pong(b"yes"),
        "one two three",
    ]


# -- Ping, pong, close ----------------------------------------------------------------------


def test_a_ping_carries_the_pong_to_send() -> None:
    [ping] = feed(frame(0x9, b"\x01\x02\x03\x04"))
    assert ping == Ping(b"\x01\x02\x03\x04", b"\x8a\x04\x01\x02\x03\x04")
    [empty] = feed(frame(0x9))
    assert empty == Ping(b"", b"\x8a\x00")
    [longest] = feed(frame(0x9, b"x" * 125))
    assert isinstance(longest, Ping)
    assert longest.reply == b"\x8a\x7d" + b"x" * 125


def test_a_pong_is_handed_out_unanswered() -> None:
    assert feed(frame(0xA, b"whatever")) == [Pong(b"whatever")]


def test_a_close_frame_is_echoed_and_ends_the_parse() -> None:
    parser = FrameParser()
    payload = close_payload(1000, "bye ✓".encode())
    events = parser.feed(frame(0x8, payload) + text("after"))
    assert events == [Close(1000, "bye ✓", b"\x88" + bytes([len(payload)]) + payload)]
    assert parser.done
    assert parser.feed(text("still after") + frame(0x9)) == []


def test_an_empty_close_frame_is_1005_and_echoed_empty() -> None:
    assert feed(frame(0x8)) == [Close(1005, "", b"\x88\x00")]


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012])
def test_every_close_code_that_may_be_sent_is_accepted(code: int) -> None:
    [close] = feed(frame(0x8, close_payload(code, b"r")))
    assert close == Close(code, "r", b"\x88\x03" + close_payload(code, b"r"))


@pytest.mark.parametrize("code", [1013, 1014, 3000, 3999, 4000, 4999])
def test_registered_and_private_close_codes_are_accepted(code: int) -> None:
    [close] = feed(frame(0x8, close_payload(code)))
    assert isinstance(close, Close)
    assert close.code == code


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_a_close_code_that_may_not_be_sent_fails_1002(code: int) -> None:
    fail = failure(feed(frame(0x8, close_payload(code))))
    assert (fail.code, fail.reason) == (1002, "invalid status code")


def test_a_close_frame_of_one_byte_fails_1002() -> None:
    fail = failure(feed(frame(0x8, b"\x03")))
    assert (fail.code, fail.reason) == (1002, "close frame too short")


def test_a_close_reason_that_is_not_utf8_fails_1007() -> None:
    fail = failure(feed(frame(0x8, close_payload(1000, b"ok\xff"))))
    assert (fail.code, fail.reason) == (1007, "invalid start byte at position 2")


def test_a_close_frame_inside_a_fragmented_message_fails_1002() -> None:
    fail = failure(feed(text("half", fin=False) + frame(0x8, close_payload(1000))))
    assert (fail.code, fail.reason) == (1002, "incomplete fragmented message")


def test_a_close_reason_is_checked_before_the_fragmented_message() -> None:
    # websockets' order: the close payload is parsed first.
    fail = failure(feed(text("half", fin=False) + frame(0x8, close_payload(1000, b"\xff"))))
    assert fail.code == 1007


# -- Failures: 1002 -------------------------------------------------------------------------


def test_a_failure_carries_its_close_frame_and_nothing_after_it_is_parsed() -> None:
    parser = FrameParser()
    events = parser.feed(text("fine") + text("unmasked", masked=False) + frame(0x9, b"p"))
    assert events[0] == "fine"
    fail = failure(events)
    assert len(events) == 2  # the ping behind the bad frame is not answered
    assert (fail.code, fail.reason) == (1002, "incorrect masking")
    assert the_close_in(fail.reply) == (1002, "incorrect masking")
    assert parser.done
    assert parser.feed(frame(0x9, b"p")) == []


def test_an_unmasked_frame_fails_1002_on_its_first_two_bytes() -> None:
    parser = FrameParser()
    events = parser.feed(text("x", masked=False)[:2])
    assert failure(events).reason == "incorrect masking"


@pytest.mark.parametrize("rsv", [1, 2, 4, 3, 7])
def test_a_reserved_bit_fails_1002_permessage_deflate_included(rsv: int) -> None:
    # RSV1 is permessage-deflate's bit: not negotiated, so refused like any other.
    fail = failure(feed(text("compressed?", rsv=rsv)))
    assert (fail.code, fail.reason) == (1002, "reserved bits must be 0")


def test_a_reserved_bit_fails_once_the_frame_is_whole_as_websockets_does() -> None:
    parser = FrameParser()
    data = frame(0x2, b"12345678", rsv=4)
    assert parser.feed(data[:-1]) == []
    assert failure(parser.feed(data[-1:])).code == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_a_reserved_opcode_fails_1002(opcode: int) -> None:
    fail = failure(feed(frame(opcode, b"?")))
    assert (fail.code, fail.reason) == (1002, "invalid opcode")


@pytest.mark.parametrize("opcode", [0x8, 0x9, 0xA])
def test_a_control_frame_over_125_bytes_fails_1002(opcode: int) -> None:
    fail = failure(feed(frame(opcode, close_payload(1000, b"r" * 124))))
    assert (fail.code, fail.reason) == (1002, "control frame too long")


@pytest.mark.parametrize("opcode", [0x8, 0x9, 0xA])
def test_a_fragmented_control_frame_fails_1002(opcode: int) -> None:
    fail = failure(feed(frame(opcode, close_payload(1000), fin=False)))
    assert (fail.code, fail.reason) == (1002, "fragmented control frame")


def test_a_continuation_without_a_start_fails_1002() -> None:
    fail = failure(feed(frame(0x0, b"orphan")))
    assert (fail.code, fail.reason) == (1002, "unexpected continuation frame")


@pytest.mark.parametrize("opcode", [0x1, 0x2])
def test_a_new_message_inside_a_fragmented_one_fails_1002(opcode: int) -> None:
    fail = failure(feed(frame(0x2, b"a", fin=False) + frame(opcode, b"b")))
    assert (fail.code, fail.reason) == (1002, "expected a continuation frame")


# -- Failures: 1007 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff", "invalid start byte at position 0"),
        (b"ok\xc0\xaf", "invalid start byte at position 2"),
        (b"\xed\xa0\x80", "invalid continuation byte at position 0"),  # a surrogate
        (b"\xf4\x90\x80\x80", "invalid continuation byte at position 0"),  # past U+10FFFF
        (b"cut \xe2\x82", "unexpected end of data at position 4"),
    ],
)
def test_a_text_frame_that_is_not_utf8_fails_1007(data: bytes, reason: str) -> None:
    fail = failure(feed(text(data)))
    assert (fail.code, fail.reason) == (1007, reason)
    assert the_close_in(fail.reply) == (1007, reason)


def test_invalid_utf8_fails_at_its_fragment_not_at_the_end_of_the_message() -> None:
    parser = FrameParser()
    assert parser.feed(text("fine so far ", fin=False)) == []
    fail = failure(parser.feed(frame(0x0, b"\xc3(", fin=False)))
    assert (fail.code, fail.reason) == (1007, "invalid continuation byte at position 0")


def test_a_text_fragment_may_end_inside_a_character_but_the_message_may_not() -> None:
    assert feed(text(b"\xe2\x82", fin=False) + frame(0x0, b"\xac")) == ["€"]
    fail = failure(feed(text(b"a", fin=False) + frame(0x0, b"\xe2\x82")))
    assert fail.code == 1007


def test_binary_messages_are_not_checked_as_utf8() -> None:
    assert feed(frame(0x2, b"\xff\xfe", fin=False) + frame(0x0, b"\xc0")) == [b"\xff\xfe\xc0"]


# -- Failures: 1009 -------------------------------------------------------------------------


def test_a_frame_over_max_size_fails_1009_on_its_header_before_its_payload() -> None:
    parser = FrameParser(max_size=100)
    data = frame(0x2, bytes(101))
    events = parser.feed(data[:4])  # the header with its 16-bit length, no mask yet
    fail = failure(events)
    assert (fail.code, fail.reason) == (1009, "frame with 101 bytes exceeds limit of 100 bytes")
    assert the_close_in(fail.reply) == (1009, fail.reason)


def test_a_message_of_max_size_exactly_passes() -> None:
    assert feed(frame(0x2, bytes(100)), max_size=100) == [bytes(100)]
    fragments = frame(0x2, bytes(60), fin=False) + frame(0x0, bytes(40))
    assert feed(fragments, max_size=100) == [bytes(100)]


def test_max_size_counts_the_whole_message_across_its_fragments() -> None:
    fail = failure(feed(frame(0x2, bytes(60), fin=False) + frame(0x0, bytes(41)), max_size=100))
    assert (fail.code, fail.reason) == (
        1009,
        "frame with 41 bytes after reading 60 bytes exceeds limit of 100 bytes",
    )


def test_a_control_frame_inside_a_fragmented_message_counts_against_what_it_has_left() -> None:
    # websockets' rule (RFC 6455 counts control frames in no message): a ping of 5 bytes
    # after 98 of a 100-byte limit fails the connection; outside a message it would not.
    fail = failure(feed(frame(0x2, bytes(98), fin=False) + frame(0x9, b"12345"), max_size=100))
    assert fail.code == 1009
    assert feed(frame(0x2, bytes(98)) + frame(0x9, b"12345"), max_size=100)[1] == Ping(
        b"12345", pong_frame(b"12345")
    )


def test_a_64_bit_length_with_its_top_bit_set_is_too_big() -> None:
    head = struct.pack("!BBQ", 0x82, 0xFF, 1 << 63 | 5)
    fail = failure(feed(head))
    assert fail.code == 1009
    assert fail.reason == f"frame with {1 << 63 | 5} bytes exceeds limit of {1 << 20} bytes"


def test_without_max_size_any_length_is_read() -> None:
    assert feed(frame(0x2, bytes(70_000)), max_size=None) == [bytes(70_000)]


# -- State ----------------------------------------------------------------------------------


def test_frames_counts_every_frame_read() -> None:
    parser = FrameParser()
    parser.feed(text("a", fin=False) + frame(0x9) + frame(0x0, b"b") + frame(0x2)[:3])
    assert parser.frames == 3
    parser.feed(frame(0x2)[3:])
    assert parser.frames == 4


def test_the_parser_is_slotted() -> None:
    assert not hasattr(FrameParser(), "__dict__")


def test_payloads_are_unmasked_by_websockets_c_speedup() -> None:
    # The pure-Python fallback takes 6.3 µs for 4 KiB, the C one 0.17: a build without the
    # C extension must be a choice, not an accident.
    assert parser_module.apply_mask is speedups.apply_mask


# -- The serializer -------------------------------------------------------------------------


def read_back(data: bytes) -> list[Frame]:
    """Server frames as a client reads them: websockets' client side, open."""
    client = ClientProtocol(parse_uri("ws://gateway/ws"), state=State.OPEN, max_size=None)
    client.receive_data(data)
    assert client.parser_exc is None
    return [f for f in client.events_received() if isinstance(f, Frame)]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
def test_text_and_binary_frames_use_the_shortest_length_form(size: int) -> None:
    data = b"z" * size
    header = 2 if size < 126 else 4 if size < 65536 else 10
    pairs = ((text_frame("z" * size), Opcode.TEXT), (binary_frame(data), Opcode.BINARY))
    for built, opcode in pairs:
        assert len(built) == header + size
        [read] = read_back(built)
        assert (read.opcode, read.data, read.fin) == (opcode, data, True)


def test_text_frame_takes_str_or_utf8_bytes() -> None:
    assert text_frame("✓") == text_frame("✓".encode()) == b"\x81\x03\xe2\x9c\x93"


def test_frame_header_builds_fragments() -> None:
    assert frame_header(0x1, 3, fin=False) == b"\x01\x03"
    assert frame_header(0x0, 300) == b"\x80\x7e\x01\x2c"
    [first, last] = read_back(frame_header(0x2, 2, fin=False) + b"ab" + frame_header(0x0, 1) + b"c")
    assert (first.fin, last.opcode, last.fin) == (False, Opcode.CONT, True)


def test_control_frames() -> None:
    assert ping_frame() == b"\x89\x00"
    assert ping_frame(b"\x01\x02") == b"\x89\x02\x01\x02"
    assert pong_frame(b"x" * 125) == b"\x8a\x7d" + b"x" * 125
    assert close_frame() == b"\x88\x00"
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert close_frame(4001, "token ✓") == b"\x88" + bytes([2 + 9]) + b"\x0f\xa1token \xe2\x9c\x93"
    [ping, pong, close] = read_back(ping_frame(b"p") + pong_frame(b"q") + close_frame(1001, "x"))
    assert (ping.opcode, pong.opcode, close.opcode) == (Opcode.PING, Opcode.PONG, Opcode.CLOSE)
    assert WsClose.parse(close.data) == WsClose(1001, "x")


def test_control_frames_refuse_what_may_not_be_sent() -> None:
    with pytest.raises(ValueError, match="at most 125"):
        ping_frame(b"x" * 126)
    with pytest.raises(ValueError, match="at most 125"):
        close_frame(1000, "r" * 124)
    with pytest.raises(ValueError, match="may not be sent"):
        close_frame(1006)
    with pytest.raises(ValueError, match="needs a close code"):
        close_frame(None, "why")


def masked(server_frame: bytes) -> bytes:
    """A server frame as a client would send it: the mask bit set, the payload masked."""
    length_bytes = {126: 2, 127: 8}.get(server_frame[1] & 0x7F, 0)
    head = bytes((server_frame[0], server_frame[1] | 0x80)) + server_frame[2 : 2 + length_bytes]
    return head + MASK + apply_mask(server_frame[2 + length_bytes :], MASK)


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (text_frame("héllo"), "héllo"),
        (binary_frame(bytes(300)), bytes(300)),
        (binary_frame(bytes(70_000)), bytes(70_000)),
        (ping_frame(b"1"), Ping(b"1", pong_frame(b"1"))),
        (pong_frame(b"2"), Pong(b"2")),
        (close_frame(1000, "done"), Close(1000, "done", close_frame(1000, "done"))),
    ],
)
def test_what_the_serializer_builds_the_parser_reads_once_masked(
    built: bytes, expected: Event
) -> None:
    assert FrameParser().feed(masked(built)) == [expected]

"""The scale clients' frames: what they send, and the server's frames split out of a stream."""

from __future__ import annotations

import struct

from bench.scale.frames import (
    CLOSE,
    CLOSE_FRAME,
    PING,
    PONG,
    TEXT,
    client_frame,
    close_code,
    split_frames,
)


def server_frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes([0x80 | opcode, size]) + payload
    if size < 65536:
        return bytes([0x80 | opcode, 126]) + struct.pack("!H", size) + payload
    return bytes([0x80 | opcode, 127]) + struct.pack("!Q", size) + payload


def test_a_client_frame_is_final_masked_and_carries_its_payload() -> None:
    frame = client_frame(PONG, b"abcd")
    assert frame[0] == 0x80 | PONG
    assert frame[1] == 0x80 | 4  # masked, 4 bytes
    assert frame[6:] == b"abcd"  # a zero mask leaves the payload as it is
    assert len(client_frame(TEXT, bytes(200))) == 2 + 2 + 4 + 200
    assert len(client_frame(TEXT, bytes(70_000))) == 2 + 8 + 4 + 70_000


def test_the_close_frame_says_normal_closure() -> None:
    assert CLOSE_FRAME[0] == 0x80 | CLOSE
    assert close_code(CLOSE_FRAME[6:]) == 1000


def test_complete_frames_are_split_out_and_a_partial_one_kept() -> None:
    ping = server_frame(PING, b"\x01\x02\x03\x04")
    text = server_frame(TEXT, b'{"type":"connected"}')
    long = server_frame(TEXT, bytes(300))
    stream = ping + text + long
    frames, rest = split_frames(stream[:-10])
    assert frames == [(PING, b"\x01\x02\x03\x04"), (TEXT, b'{"type":"connected"}')]
    assert rest == long[:-10]
    frames, rest = split_frames(rest + stream[-10:])
    assert frames == [(TEXT, bytes(300))]
    assert rest == b""


def test_a_header_cut_short_waits_for_the_rest() -> None:
    long = server_frame(TEXT, bytes(70_000))
    for cut in (1, 2, 5, 9):
        frames, rest = split_frames(long[:cut])
        assert frames == []
        assert rest == long[:cut]


def test_a_close_frame_without_a_code() -> None:
    assert close_code(b"") is None
    assert close_code(struct.pack("!H", 1001) + b"going away") == 1001

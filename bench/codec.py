"""The native frame codec against websockets' sans-I/O protocol, in one process, no sockets
(issue 27): µs per frame parsed (a 16-byte text frame, a 4 KiB binary frame, a ping with the
pong it owes) and per frame serialized (a small text frame).

- native: ``FrameParser.feed`` (text checked as UTF-8 and handed out as ``str``), the
  serializer's ``text_frame``;
- websockets: ``ServerProtocol.receive_data`` then ``events_received`` (a ``Frame``; the text
  not decoded, the pong fetched with ``data_to_send``), and ``send_text`` then
  ``data_to_send`` — what uvicorn's websockets-sansio protocol calls per frame.

Each figure is the best of ``--repeat`` runs of ``--count`` frames, one frame per call, as a
read of one frame is. CPU-bound and single-threaded: run it on a quiet machine.

    .venv/bin/python -m bench.codec [--count 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import apply_mask

from kalami_gateway.adapters.server.native import FrameParser
from kalami_gateway.adapters.server.native.serializer import text_frame

MASK = b"\x12\x34\x56\x78"
SMALL_TEXT = '{"type":"ping"} '  # 16 bytes
AUDIO = bytes(range(256)) * 16  # 4 KiB


def client_frame(first: int, payload: bytes) -> bytes:
    size = len(payload)
    head = bytes((first, 0x80 | size)) if size < 126 else bytes((first, 0xFE)) + size.to_bytes(2)
    return head + MASK + apply_mask(payload, MASK)


def per_call(run: Callable[[int], None], count: int, repeat: int) -> float:
    """µs per call: the best of ``repeat`` runs of ``count`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(count)
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def native_parse(data: bytes) -> Callable[[int], None]:
    parser = FrameParser(max_size=1 << 22)
    feed = parser.feed

    def run(count: int) -> None:
        for _ in range(count):
            feed(data)

    return run


def websockets_parse(data: bytes, *, answer: bool = False) -> Callable[[int], None]:
    protocol = ServerProtocol(state=State.OPEN, max_size=1 << 22)
    receive, events, writes = protocol.receive_data, protocol.events_received, protocol.data_to_send

    def run(count: int) -> None:
        for _ in range(count):
            receive(data)
            events()
            if answer:
                writes()

    return run


def native_serialize(text: str) -> Callable[[int], None]:
    def run(count: int) -> None:
        for _ in range(count):
            text_frame(text)

    return run


def websockets_serialize(text: str) -> Callable[[int], None]:
    protocol = ServerProtocol(state=State.OPEN)
    send, writes = protocol.send_text, protocol.data_to_send

    def run(count: int) -> None:
        for _ in range(count):
            send(text.encode())
            writes()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.codec", description=__doc__)
    parser.add_argument("--count", type=int, default=200_000, help="frames per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    args = parser.parse_args(argv)
    count, repeat = args.count, args.repeat
    small = client_frame(0x81, SMALL_TEXT.encode())
    audio = client_frame(0x82, AUDIO)
    ping = client_frame(0x89, b"\x01\x02\x03\x04")
    rows = [
        ("parse a 16-byte text frame", native_parse(small), websockets_parse(small)),
        ("parse a 4 KiB binary frame", native_parse(audio), websockets_parse(audio)),
        (
            "parse a ping, its pong ready",
            native_parse(ping),
            websockets_parse(ping, answer=True),
        ),
        (
            "serialize a 16-byte text frame",
            native_serialize(SMALL_TEXT),
            websockets_serialize(SMALL_TEXT),
        ),
    ]
    print(f"{count:,} frames a run, best of {repeat}\n")
    print("| µs per frame | native | websockets | websockets / native |")
    print("|---|---|---|---|")
    for name, ours, theirs in rows:
        native_us = per_call(ours, count, repeat)
        websockets_us = per_call(theirs, count, repeat)
        ratio = websockets_us / native_us
        print(f"| {name} | {native_us:.3f} | {websockets_us:.3f} | {ratio:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

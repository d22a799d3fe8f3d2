"""``SocketChannel``, the /ws handler's ClientChannel, on a recording ASGI ``send``: a message
is one text frame as ever; reply audio in binary is its ``audio_start`` then its binary
frames, nothing sent between them; the send buffer counts every frame."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import msgspec

from kalami_gateway.adapters.asgi import Message, Receive, Send, SocketControl
from kalami_gateway.adapters.http.websocket import SendLimits, SocketChannel
from kalami_gateway.domain import protocol as p

AUDIO = bytes(range(256)) * 800  # 204,800 bytes: four frames, the last one short
FRAMES = p.AudioFrames(p.AudioFramesPayload(AUDIO))
START = (
    '{"type":"audio_start","payload":{"format":"mp3","bytes":204800,"frames":4,'
    '"maxFrameBytes":65536}}'
)


class Recorder:
    """An ASGI ``send`` that records each event; while ``gate`` is set it holds the send of
    the ``hold_at``-th event (counting from 1) until the gate opens."""

    def __init__(self) -> None:
        self.events: list[Message] = []
        self.gate: asyncio.Event | None = None
        self.hold_at = 0
        self.held = asyncio.Event()

    async def __call__(self, event: Message) -> None:
        if self.gate is not None and len(self.events) + 1 == self.hold_at:
            self.held.set()
            await self.gate.wait()
        self.events.append(event)

    def frames(self) -> list[str | bytes]:
        return [e["text"] if "text" in e else e["bytes"] for e in self.events]


class Control(SocketControl):
    """A socket whose client has ``unsent`` bytes not taken yet."""

    def __init__(self) -> None:
        self.unsent = 0
        self.released = False

    def unsent_bytes(self) -> int:
        return self.unsent

    def release(self) -> None:
        self.released = True

    @property
    def slow(self) -> bool:
        return False

    @property
    def unanswered(self) -> bool:
        return False

    async def pause(self, seconds: float) -> None:
        raise AssertionError("not used by the channel")

    def accepted(self) -> tuple[Receive, Send]:
        raise AssertionError("not used by the channel")

    def hand_off(self, serving: Coroutine[Any, Any, None]) -> bool:
        raise AssertionError("not used by the channel")


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_message_is_one_text_frame() -> None:
    send = Recorder()
    await SocketChannel(send, Control()).send(p.Pong())
    assert send.events == [{"type": "websocket.send", "text": '{"type":"pong","payload":{}}'}]


async def test_reply_audio_is_announced_then_sent_in_binary_frames() -> None:
    send = Recorder()
    await SocketChannel(send, Control()).send(FRAMES)
    start, *frames = send.frames()
    assert start == START
    assert all(isinstance(f, bytes) and len(f) <= p.AUDIO_FRAME_BYTES for f in frames)
    assert [len(f) for f in frames] == [65536, 65536, 65536, 204800 - 3 * 65536]
    assert b"".join(f for f in frames if isinstance(f, bytes)) == AUDIO


async def test_nothing_comes_between_an_audio_start_and_its_frames() -> None:
    send = Recorder()
    send.gate, send.hold_at = asyncio.Event(), 3  # the second binary frame waits
    channel = SocketChannel(send, Control())
    audio = asyncio.create_task(channel.send(FRAMES))
    await send.held.wait()
    pong = asyncio.create_task(channel.send(p.Pong()))
    push = asyncio.create_task(channel.send(p.Push(msgspec.Raw(b'{"n":1}'))))
    await settle()
    assert len(send.events) == 2  # audio_start and the first frame; the pong and push wait
    send.gate.set()
    await asyncio.gather(audio, pong, push)
    kinds = ["text" if "text" in e else "bytes" for e in send.events]
    assert kinds == ["text", "bytes", "bytes", "bytes", "bytes", "text", "text"]
    assert [e.get("text") for e in send.events[-2:]] == [
        '{"type":"pong","payload":{}}',
        '{"type":"push","payload":{"n":1}}',
    ]


async def test_a_client_not_reading_is_let_go_mid_audio_and_nothing_more_is_sent() -> None:
    send = Recorder()
    control = Control()

    async def taken_slowly(event: Message) -> None:
        await Recorder.__call__(send, event)
        control.unsent += len(event.get("bytes") or b"")  # the client takes none of it

    channel = SocketChannel(taken_slowly, control, SendLimits(buffer_bytes=150_000, timeout=10))
    await channel.send(FRAMES)
    assert len(send.events) == 3  # audio_start and two frames: the third passes 150,000
    assert control.released
    assert channel.slow
    await channel.send(p.Pong())
    assert len(send.events) == 3


async def test_a_gone_peer_ends_the_audio_quietly() -> None:
    events: list[Any] = []

    async def gone_after_two(event: Message) -> None:
        if len(events) == 2:
            raise OSError("the peer is gone")
        events.append(event)

    channel = SocketChannel(gone_after_two, Control())
    await channel.send(FRAMES)
    assert len(events) == 2
    await channel.send(p.Pong())
    assert len(events) == 2

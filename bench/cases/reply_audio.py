"""Reply audio on the wire (issue 26, item 5): the bytes a phone receives for the tutor's
spoken reply of 30 seconds (240 KB: 64 kbit/s mp3), as the default ``audio`` message (its
base64 in JSON) and as ``audio_start`` and binary frames (``"replyAudio": "binary"``).

A fresh gateway in front of the upload backend stand-in, whose turns answer with that much
audio at once. Each figure is every WebSocket frame of the audio (headers included) as the
client's socket received it, for the same turn, checked to be the same in every turn; the
binary frames are checked to join into the audio the backend sent."""

from __future__ import annotations

import base64

from bench.cases.clients import bounded, token
from bench.report import Row
from bench.sizes import Sizes
from bench.targets import GatewayProcess, UploadBackend
from bench.upload_backend import turn_with_audio
from bench.wsload import TEXT, WsClient, client_frame, open_client

REPLY_AUDIO_BYTES = 240_000  # 30 s of 64 kbit/s mp3
TURNS = 3  # per form: the figure is the same each time (checked), not an average
UTTERANCE = client_frame(
    TEXT, b'{"type":"audio","payload":{"audio_base64":"' + b"A" * 4000 + b'","format":"m4a"}}'
)


def frame_bytes(payload: int) -> int:
    """A server frame of ``payload`` bytes on the wire: the header (unmasked) and the payload."""
    return payload + (2 if payload < 126 else 4 if payload < 65536 else 10)


def expected_audio() -> bytes:
    """The audio the stand-in sends, as it sends it."""
    turn = turn_with_audio(REPLY_AUDIO_BYTES)
    start = turn.index(b'"assistant_audio_base64":"') + len(b'"assistant_audio_base64":"')
    return base64.b64decode(turn[start : turn.index(b'"', start)])


async def audio_on_the_wire(client: WsClient, form: bytes) -> int:
    """One turn; the wire bytes of its reply audio: the ``audio`` message, or ``audio_start``
    and its frames (joined and checked against the backend's audio). Worked out from each
    frame's size, and checked against the bytes the socket counted for the whole turn."""
    frames: list[bytes] = []
    client.on_binary = frames.append
    before = client.wire_bytes
    client.send(UTTERANCE)
    texts = [await client.recv()]
    while b'"type":"response"' not in texts[-1]:
        if b'"error"' in texts[-1]:
            raise RuntimeError(f"turn failed: {texts[-1][:160]!r}")
        texts.append(await client.recv())
    audio = await client.recv()
    expected = b'{"type":"audio","payload":' if form == b"json" else b'{"type":"audio_start"'
    if not audio.startswith(expected):
        raise RuntimeError(f"expected {expected!r}, got {audio[:80]!r}")
    client.send(client_frame(TEXT, b'{"type":"ping"}'))
    pong = await client.recv()  # after the audio's last frame: nothing comes between them
    if b'"pong"' not in pong:
        raise RuntimeError(f"expected the pong after the audio, got {pong[:80]!r}")
    client.on_binary = None
    if form == b"binary" and b"".join(frames) != expected_audio():
        raise RuntimeError("the binary frames do not join into the backend's audio")
    on_the_wire = frame_bytes(len(audio)) + sum(frame_bytes(len(f)) for f in frames)
    rest = sum(frame_bytes(len(m)) for m in (*texts, pong))
    if client.wire_bytes - before != on_the_wire + rest:
        raise RuntimeError("the socket received other bytes than the frames add up to")
    return on_the_wire


async def measure_form(port: int, form: bytes) -> int:
    client = await open_client(port, token("reply-audio"))
    try:
        client.send(
            client_frame(
                TEXT,
                b'{"type":"start_session","payload":{"profileId":"bench","replyAudio":"'
                + form
                + b'"}}',
            )
        )
        if b'"session_started"' not in await client.recv():
            raise RuntimeError("start_session failed")
        figures = {await audio_on_the_wire(client, form) for _ in range(TURNS)}
    finally:
        client.close()
    if len(figures) != 1:
        raise RuntimeError(f"the {form.decode()} reply's wire bytes changed: {sorted(figures)}")
    return figures.pop()


async def case_reply_audio(sizes: Sizes) -> list[Row]:
    backend = UploadBackend(0.0, REPLY_AUDIO_BYTES)
    gateway = GatewayProcess(backend_url=backend.url)
    try:
        backend.start()
        gateway.start()
        as_json = await bounded(measure_form(gateway.port, b"json"))
        as_binary = await bounded(measure_form(gateway.port, b"binary"))
    finally:
        gateway.stop()
        backend.stop()
    return [
        Row(
            "reply audio on the wire, 30 s mp3 (240 KB), JSON",
            "reply_audio_json_bytes",
            as_json,
            unit="B",
        ),
        Row(
            "reply audio on the wire, 30 s mp3 (240 KB), binary",
            "reply_audio_binary_bytes",
            as_binary,
            unit="B",
        ),
        Row("reply audio on the wire, binary/JSON", "reply_audio_wire_ratio", as_binary / as_json),
    ]

"""``kalami-gateway talk``: one voice turn from an audio file, the way a phone would do it.

Connects (the token in an ``Authorization`` header, never in the URL), starts a session,
streams the file in ~100 ms frames, stops recording, prints every server message readably,
saves the tutor's audio, and ends the session. If the socket drops while the turn is being
processed, it reconnects once with the connection's resume token (to ``--resume-url``,
another instance, if given) and takes the turn's replies there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import wave
from pathlib import Path
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from kalami_gateway.adapters.jwt_decoder import mint_token
from kalami_gateway.app.logs import redact
from kalami_gateway.app.settings import SettingsError, load_settings
from kalami_gateway.domain.auth import PROTOCOL_VERSION
from kalami_gateway.domain.protocol import AUDIO_FORMATS

# 100 ms of compressed speech (opus/aac/mp3 at up to 128 kbit/s) when the file says no rate.
COMPRESSED_FRAME_BYTES: Final = 1600
REPLY_WAIT_SECONDS: Final = 60.0
TRAILING_AUDIO_WAIT_SECONDS: Final = 2.0


class TalkError(Exception):
    """A problem worth one line to the user and a non-zero exit."""


def frame_size(path: Path, audio_format: str) -> int:
    """Bytes in 100 ms of this file's audio."""
    if audio_format == "wav":
        try:
            with wave.open(str(path), "rb") as wav:
                per_second = wav.getframerate() * wav.getsampwidth() * wav.getnchannels()
        except (wave.Error, EOFError) as exc:
            why = str(exc) or "the file ends before its header does"
            raise TalkError(
                f"{path} is not a readable WAV file ({why}); give a real .wav, or name the "
                "file after its format (.webm, .mp3, .m4a, .ogg)"
            ) from None
        return max(1, per_second // 10)
    return COMPRESSED_FRAME_BYTES


def run_talk(args: argparse.Namespace) -> int:
    try:
        path = Path(args.file)
        audio_format = path.suffix.lower().lstrip(".")
        if audio_format not in AUDIO_FORMATS:
            raise TalkError(f"{path}: unsupported format; use one of " + ", ".join(AUDIO_FORMATS))
        try:
            audio = path.read_bytes()
        except OSError as exc:
            raise TalkError(f"cannot read {path}: {exc.strerror}") from None
        if not audio:
            raise TalkError(f"{path} is empty")
        chunk = frame_size(path, audio_format)
        return asyncio.run(_talk(args, audio, audio_format, chunk))
    except TalkError as exc:
        print(f"kalami-gateway talk: {exc}", file=sys.stderr)
        return 1


def _out(label: str, text: str) -> None:
    print(f"{label:<11}{text}", flush=True)


async def _talk(args: argparse.Namespace, audio: bytes, audio_format: str, chunk: int) -> int:
    url, token = _target(args)
    resume_url = args.resume_url or url
    try:
        async with _connect(url, token) as ws:
            resume_token, session_id = await _start(ws, args)
            await _record(ws, audio, audio_format, chunk)
            try:
                await _replies(ws, args, session_id)
                ws_now = ws
            except ConnectionClosed as exc:
                _out("dropped", f"{_closed(exc)}; resuming the session at {resume_url}")
                ws_now = await _connect(resume_url, token, resume_token)
                await _resumed(ws_now, args, session_id)
            try:
                await _end(ws_now)
            finally:
                if ws_now is not ws:
                    await ws_now.close()
    except ConnectionClosed as exc:
        raise TalkError(f"the gateway closed the connection: {_closed(exc)}") from None
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        # websockets' message repeats the whole URI, a resume token included: never print that.
        raise TalkError(f"cannot reach the gateway at {url}: {redact(str(exc))}") from None
    return 0


def _connect(url: str, token: str, resume: str | None = None) -> connect:
    """The token goes in an ``Authorization`` header, not the URL (a URL ends up in proxy and
    load-balancer access logs); ``kalami.v1`` is offered, the protocol version talk speaks."""
    return connect(
        url + (f"?resume={resume}" if resume else ""),
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=[Subprotocol(PROTOCOL_VERSION)],
        max_size=None,
        open_timeout=10,
    )


def _closed(exc: ConnectionClosed) -> str:
    if exc.rcvd is None:
        return "the connection was lost (no close frame)"
    return f"{exc.rcvd.code} {exc.rcvd.reason}"


def _target(args: argparse.Namespace) -> tuple[str, str]:
    url = args.url
    token = args.token
    if url is None or token is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            raise TalkError(f"{exc} (or pass --url and --token)") from None
        url = url or f"ws://127.0.0.1:{settings.gateway_port}/ws"
        token = token or mint_token(settings.jwt_secret, args.sub or "talk-cli", time.time() + 3600)
    return url, token


async def _receive(
    ws: ClientConnection, wait_seconds: float = REPLY_WAIT_SECONDS
) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), wait_seconds)
    message: dict[str, Any] = json.loads(raw)
    return message


async def _expect(
    ws: ClientConnection, wanted: str, wait_seconds: float = REPLY_WAIT_SECONDS
) -> dict[str, Any]:
    """The next message that is not an audio acknowledgement; an error ends the talk."""
    while True:
        message = await _receive(ws, wait_seconds)
        kind = message.get("type")
        payload: dict[str, Any] = message.get("payload") or {}
        if kind == "audio_received":
            continue
        if kind == "error":
            raise TalkError(f"the gateway answered with an error: {payload.get('message')}")
        if kind != wanted:
            raise TalkError(f"expected {wanted!r} from the gateway, got {kind!r}")
        return payload


async def _start(ws: ClientConnection, args: argparse.Namespace) -> tuple[str, str]:
    """Connected, then a session started: the resume token and the session id."""
    hello = await _expect(ws, "connected")
    _out("connected", f"connection {hello.get('connectionId')}")
    await ws.send(
        json.dumps(
            {"type": "start_session", "payload": {"profileId": args.profile, "topic": args.topic}}
        )
    )
    started = await _expect(ws, "session_started")
    session_id = str(started.get("id"))
    _out(
        "session",
        f"{session_id} started (profile {started.get('profileId')}, topic {started.get('topic')})",
    )
    return str(hello.get("resumeToken")), session_id


async def _record(ws: ClientConnection, audio: bytes, audio_format: str, chunk: int) -> None:
    await ws.send(json.dumps({"type": "start_recording", "payload": {"format": audio_format}}))
    await _expect(ws, "recording_started")
    frames = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
    for frame in frames:
        await ws.send(frame)
    _out(
        "recording",
        f"sent {len(audio)} bytes of {audio_format} in {len(frames)} frames of {chunk} bytes",
    )
    await ws.send(json.dumps({"type": "stop_recording"}))


async def _replies(ws: ClientConnection, args: argparse.Namespace, session_id: str) -> None:
    stage = await _expect(ws, "processing")
    _out("processing", str(stage.get("stage")))
    await _turn_result(ws, args, session_id)


async def _resumed(ws: ClientConnection, args: argparse.Namespace, session_id: str) -> None:
    """The session carried on over a new connection: its turn's replies come there."""
    hello = await _expect(ws, "connected")
    _out("connected", f"connection {hello.get('connectionId')}")
    resumed = await _expect(ws, "session_resumed")
    if resumed.get("id") != session_id:
        raise TalkError(f"resumed session {resumed.get('id')}, not {session_id}")
    _out("resumed", f"{session_id} ({resumed.get('state')})")
    if resumed.get("state") == "active":
        # The replies were kept while we were away and follow at once, or the utterance
        # never reached the gateway.
        try:
            await _turn_result(ws, args, session_id, TRAILING_AUDIO_WAIT_SECONDS)
        except TimeoutError:
            raise TalkError(
                "the utterance did not reach the gateway before the connection dropped; "
                "run talk again"
            ) from None
        return
    await _turn_result(ws, args, session_id)


async def _turn_result(
    ws: ClientConnection,
    args: argparse.Namespace,
    session_id: str,
    wait_seconds: float = REPLY_WAIT_SECONDS,
) -> None:
    heard = await _expect(ws, "transcription", wait_seconds)
    _out("you said", str(heard.get("text")))
    reply = await _expect(ws, "response")
    _out("tutor", str(reply.get("text")))
    for fix in reply.get("grammar_corrections") or []:
        _out(
            "correction",
            f"{fix.get('original')!r} -> {fix.get('corrected')!r}: {fix.get('explanation')}",
        )
    try:
        spoken = await _receive(ws, TRAILING_AUDIO_WAIT_SECONDS)
    except TimeoutError:
        spoken = {}
    if spoken.get("type") == "audio":
        payload = spoken.get("payload") or {}
        data = base64.b64decode(payload.get("audio_base64") or "")
        out = Path(args.out or f"reply-{session_id}.{payload.get('format', 'mp3')}")
        await asyncio.to_thread(out.write_bytes, data)
        _out("audio", f"saved {len(data)} bytes of {payload.get('format', 'mp3')} to {out}")


async def _end(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "end_session"}))
    ended = await _expect(ws, "session_ended")
    _out("session", f"{ended.get('id')} ended")

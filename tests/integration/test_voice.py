"""Voice turns end to end over real sockets: the utterance reaches the backend, replies return."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
import wave
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.backend_server import BackendServer, pattern
from tests.integration.conftest import (
    SECRET,
    Gateway,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)


async def session(gateway: Gateway, user: str = "alice") -> ClientConnection:
    ws = await connect(gateway.ws(token_for(user)), max_size=None)
    assert (await recv_json(ws))["type"] == "connected"
    await ws.send(
        json.dumps({"type": "start_session", "payload": {"profileId": f"profile-{user}"}})
    )
    assert (await recv_json(ws))["type"] == "session_started"
    return ws


async def record(ws: ClientConnection, frames: list[bytes], audio_format: str = "webm") -> None:
    await ws.send(json.dumps({"type": "start_recording", "payload": {"format": audio_format}}))
    assert (await recv_json(ws))["type"] == "recording_started"
    total = 0
    for frame in frames:
        await ws.send(frame)
        total += len(frame)
        ack = await recv_json(ws)
        assert ack == {
            "type": "audio_received",
            "payload": {"bytes": len(frame), "totalBytes": total},
        }


async def turn_replies(ws: ClientConnection) -> list[dict[str, Any]]:
    await ws.send('{"type":"stop_recording"}')
    replies = [await recv_json(ws)]
    while replies[-1]["type"] not in ("audio", "error"):
        replies.append(await recv_json(ws))
    return replies


async def test_a_full_turn_delivers_the_utterance_byte_for_byte_and_relays_the_reply(
    gateway: Gateway, backend: BackendServer
) -> None:
    frames = [pattern(i * 4096, 4096) for i in range(25)]
    token = token_for("alice")
    ws = await connect(gateway.ws(token))
    await recv_json(ws)
    await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p"}}))
    session_id = (await recv_json(ws))["payload"]["id"]
    await record(ws, frames, "wav")
    replies = await turn_replies(ws)
    audio = b"".join(frames)
    [upload] = backend.uploads
    assert upload.audio == audio
    assert (upload.filename, upload.content_type) == ("recording.wav", "audio/wav")
    assert upload.authorization == f"Bearer {token}"
    assert upload.session_id == session_id
    digest = hashlib.sha256(audio).hexdigest()[:12]
    assert replies == [
        {"type": "processing", "payload": {"stage": "transcribing"}},
        {
            "type": "transcription",
            "payload": {
                "text": f"{len(audio)} bytes sha {digest} in {session_id}",
                "is_final": True,
            },
        },
        {
            "type": "response",
            "payload": {
                "text": "Great sentence!",
                "grammar_corrections": [
                    {"original": "I has", "corrected": "I have", "explanation": "agreement"}
                ],
                "vocabulary_introduced": ["agreement"],
            },
        },
        {"type": "audio", "payload": {"audio_base64": "SUQz", "format": "mp3"}},
    ]
    await ws.close()


async def test_a_backend_failure_then_a_successful_turn(
    gateway: Gateway, backend: BackendServer
) -> None:
    ws = await session(gateway)
    backend.audio_status = 500
    await record(ws, [b"first"])
    failed = await turn_replies(ws)
    assert [r["type"] for r in failed] == ["processing", "error"]
    assert "500" in failed[-1]["payload"]["message"]
    assert "speech recognition failed" in failed[-1]["payload"]["message"]
    backend.audio_status = None
    await record(ws, [b"second"])
    ok = await turn_replies(ws)
    assert [r["type"] for r in ok] == ["processing", "transcription", "response", "audio"]
    assert [u.audio for u in backend.uploads] == [b"first", b"second"]
    await ws.close()


async def test_an_unreadable_backend_reply_is_one_error(
    gateway: Gateway, backend: BackendServer
) -> None:
    ws = await session(gateway)
    backend.audio_body = b"<html>oops</html>"
    await record(ws, [b"x"])
    replies = await turn_replies(ws)
    assert [r["type"] for r in replies] == ["processing", "error"]
    assert "could not read" in replies[-1]["payload"]["message"]
    await ws.send('{"type":"ping"}')
    assert (await recv_json(ws))["type"] == "pong"
    await ws.close()


async def test_the_utterance_size_limit(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url, max_audio_bytes=10_000)) as gw:
        ws = await session(gw)
        await record(ws, [b"a" * 6000])
        await ws.send(b"b" * 6000)
        error = await recv_json(ws)
        assert error["type"] == "error"
        assert "10000-byte limit" in error["payload"]["message"]
        await ws.send('{"type":"stop_recording"}')
        assert "Not recording" in (await recv_json(ws))["payload"]["message"]
        await record(ws, [b"c" * 100])
        replies = await turn_replies(ws)
        assert replies[-1]["type"] == "audio"
        assert [len(u.audio) for u in backend.uploads] == [100]
        await ws.close()


async def test_the_connection_answers_while_a_turn_is_processing(
    gateway: Gateway, backend: BackendServer
) -> None:
    ws = await session(gateway)
    backend.audio_hold = asyncio.Event()
    await record(ws, [b"slow"])
    await ws.send('{"type":"stop_recording"}')
    assert (await recv_json(ws))["type"] == "processing"
    await asyncio.wait_for(backend.audio_arrived.wait(), 5)
    await ws.send('{"type":"ping"}')
    assert (await recv_json(ws))["type"] == "pong"
    backend.audio_hold.set()
    assert (await recv_json(ws))["type"] == "transcription"
    await ws.close()


async def test_without_a_resume_grace_a_disconnect_mid_turn_ends_the_session(
    backend: BackendServer,
) -> None:
    async with running_gateway(make_settings(backend.url, resume_grace_ms=0)) as gateway:
        ws = await session(gateway)
        backend.audio_hold = asyncio.Event()
        await record(ws, [b"bye"])
        await ws.send('{"type":"stop_recording"}')
        await asyncio.wait_for(backend.audio_arrived.wait(), 5)
        await ws.close()
        await eventually(lambda: len(backend.ended) == 1)
        await eventually(lambda: gateway.app.service.instance_stats().connections == 0)
        backend.audio_hold.set()


async def test_a_disconnect_mid_turn_parks_the_session_and_the_grace_ends_it(
    backend: BackendServer,
) -> None:
    async with running_gateway(make_settings(backend.url, resume_grace_ms=300)) as gateway:
        ws = await session(gateway)
        backend.audio_hold = asyncio.Event()
        await record(ws, [b"bye"])
        await ws.send('{"type":"stop_recording"}')
        await asyncio.wait_for(backend.audio_arrived.wait(), 5)
        await ws.close()
        await eventually(lambda: gateway.app.service.instance_stats().connections == 0)
        assert backend.ended == []  # parked: the turn still runs
        backend.audio_hold.set()
        await eventually(lambda: len(backend.ended) == 1)  # nobody resumed it


async def test_a_base64_audio_message_runs_the_same_turn(
    gateway: Gateway, backend: BackendServer
) -> None:
    ws = await session(gateway)
    audio = pattern(0, 3000)
    await ws.send(
        json.dumps(
            {
                "type": "audio",
                "payload": {"audio_base64": base64.b64encode(audio).decode(), "format": "ogg"},
            }
        )
    )
    replies = [await recv_json(ws) for _ in range(4)]
    assert [r["type"] for r in replies] == ["processing", "transcription", "response", "audio"]
    assert backend.uploads[-1].audio == audio
    assert backend.uploads[-1].filename == "recording.ogg"
    await ws.close()


async def test_concurrent_turns_are_isolated(gateway: Gateway, backend: BackendServer) -> None:
    async def one(user: str, seed: int) -> tuple[str, str]:
        ws = await session(gateway, user)
        frames = [pattern(seed * 1_000_000 + i * 1000, 1000 + seed) for i in range(10)]
        await record(ws, frames)
        replies = await turn_replies(ws)
        await ws.close()
        audio = b"".join(frames)
        return replies[1]["payload"][
            "text"
        ], f"{len(audio)} bytes sha {hashlib.sha256(audio).hexdigest()[:12]}"

    results = await asyncio.gather(*(one(f"user{n}", n) for n in range(8)))
    for transcription, expected_prefix in results:
        assert transcription.startswith(expected_prefix)
    assert len(backend.uploads) == 8


def make_wav(path: Path, seconds: float = 1.0) -> int:
    rate = 16000
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pattern(0, int(rate * seconds) * 2))
    return path.stat().st_size


async def run_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    env = {**os.environ, "JWT_SECRET": SECRET}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kalami_gateway",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_talk_client_against_the_stub_backend(tmp_path: Path) -> None:
    size = make_wav(tmp_path / "hello.wav")
    async with running_gateway(make_settings("http://127.0.0.1:9", backend_mode="stub")) as gw:
        code, out, err = await run_cli(
            "talk",
            "--file",
            "hello.wav",
            "--url",
            gw.ws(),
            "--sub",
            "learner",
            "--topic",
            "travel",
            cwd=tmp_path,
        )
    assert code == 0, err
    assert f"I heard {size} bytes of wav audio." in out
    assert "frames of 3200 bytes" in out
    assert "'I goed to the market' -> 'I went to the market'" in out
    saved = await asyncio.to_thread(lambda: list(tmp_path.glob("reply-*.mp3")))
    assert len(saved) == 1
    assert (await asyncio.to_thread(saved[0].read_bytes)).startswith(b"\xff\xfb")
    assert "ended" in out.splitlines()[-1]


async def test_the_talk_client_reports_problems_in_one_line(tmp_path: Path) -> None:
    make_wav(tmp_path / "hello.wav")
    code, _, err = await run_cli(
        "talk",
        "--file",
        "missing.wav",
        "--url",
        "ws://127.0.0.1:9/ws",
        "--token",
        "t",
        cwd=tmp_path,
    )
    assert (code, err.count("\n")) == (1, 1)
    assert "cannot read missing.wav" in err
    code, _, err = await run_cli(
        "talk", "--file", "hello.wav", "--url", "ws://127.0.0.1:9/ws", "--token", "t", cwd=tmp_path
    )
    assert (code, err.count("\n")) == (1, 1)
    assert "cannot reach the gateway" in err
    async with running_gateway(make_settings("http://127.0.0.1:9", backend_mode="stub")) as gw:
        code, _, err = await run_cli(
            "talk", "--file", "hello.wav", "--url", gw.ws(), "--token", "forged", cwd=tmp_path
        )
    assert (code, err.count("\n")) == (1, 1)
    assert "4002 Invalid token" in err


async def test_message_and_audio_counters_in_metrics(gateway: Gateway) -> None:
    ws = await session(gateway, "counted")
    for _ in range(3):
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"
    await ws.send("{not json")
    assert (await recv_json(ws))["type"] == "error"
    await record(ws, [b"\x01" * 1000, b"\x02" * 2000])
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{gateway.http}/metrics")).text
    assert 'kalami_websocket_messages_total{type="ping"} 3.0' in text
    assert 'kalami_websocket_messages_total{type="start_session"} 1.0' in text
    assert 'kalami_websocket_messages_total{type="start_recording"} 1.0' in text
    assert 'kalami_websocket_messages_total{type="audio_frame"} 2.0' in text
    assert 'kalami_websocket_messages_total{type="invalid"} 1.0' in text
    assert "kalami_audio_received_bytes_total 3000.0" in text
    assert "# TYPE kalami_websocket_messages_total counter" in text
    await ws.close()

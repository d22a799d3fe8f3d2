"""Utterances streamed to a real local backend while the client is still sending them: what
arrives when, aborts the backend sees as broken requests, failures mid-upload, and a
backend that reads slowly holding the client back without the gateway's memory growing."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.integration.backend_server import BackendServer, pattern
from tests.integration.conftest import (
    Gateway,
    eventually,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.test_lifecycle import free_port, gateway_env, process

START_REC = json.dumps({"type": "start_recording", "payload": {"format": "ogg"}})
STOP_REC = json.dumps({"type": "stop_recording"})


async def recording(gateway: Gateway, user: str = "alice") -> ClientConnection:
    ws = await connect(gateway.ws(token_for(user)), max_size=None)
    assert (await recv_json(ws))["type"] == "connected"
    await ws.send(json.dumps({"type": "start_session", "payload": {"profileId": "p1"}}))
    assert (await recv_json(ws))["type"] == "session_started"
    await ws.send(START_REC)
    assert (await recv_json(ws))["type"] == "recording_started"
    return ws


async def send_frames(ws: ClientConnection, frames: list[bytes]) -> list[dict[str, Any]]:
    answers = []
    for frame in frames:
        await ws.send(frame)
        answers.append(await recv_json(ws))
    return answers


def frames_of(total: int, size: int) -> list[bytes]:
    return [pattern(offset, min(size, total - offset)) for offset in range(0, total, size)]


async def test_the_backend_has_the_audio_before_the_client_stops(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url)) as gw:
        ws = await recording(gw)
        frames = frames_of(300_000, 4096)
        acks = await send_frames(ws, frames)
        assert [a["type"] for a in acks] == ["audio_received"] * len(frames)
        # The client has not said stop_recording: the backend already has every byte.
        await eventually(lambda: backend.streamed_bytes() >= 300_000)
        assert backend.uploads == []  # and no turn yet
        await ws.send(STOP_REC)
        assert (await recv_json(ws))["type"] == "processing"
        heard = await recv_json(ws)
        assert heard["type"] == "transcription"
        [upload] = backend.uploads
        assert upload.audio == b"".join(frames)  # whole and in order
        assert (upload.filename, upload.content_type) == ("recording.ogg", "audio/ogg")
        assert (
            next(r for r in backend.requests if r.raw_path.endswith("/audio")).header(
                "Transfer-Encoding"
            )
            == "chunked"
        )
        await ws.close()


async def test_in_buffer_mode_nothing_goes_before_the_stop(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url, utterance_upload="buffer")) as gw:
        ws = await recording(gw)
        await send_frames(ws, frames_of(50_000, 4096))
        await asyncio.sleep(0.3)
        assert backend.streamed_bytes() == 0
        await ws.send(STOP_REC)
        assert (await recv_json(ws))["type"] == "processing"
        assert (await recv_json(ws))["type"] == "transcription"
        assert backend.uploads[0].audio == b"".join(frames_of(50_000, 4096))
        await ws.close()


async def aborted_without_a_turn(backend: BackendServer) -> None:
    await eventually(lambda: backend.broken_uploads == 1)
    assert backend.uploads == []


async def test_past_the_cap_the_upload_is_aborted(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url, max_audio_bytes=20_000)) as gw:
        ws = await recording(gw)
        acks = await send_frames(ws, frames_of(5 * 4096, 4096))  # the 5th passes 20000
        assert acks[-1]["type"] == "error"
        assert "20000-byte limit" in acks[-1]["payload"]["message"]
        await aborted_without_a_turn(backend)
        # Back to active: a new recording streams again.
        await ws.send(START_REC)
        assert (await recv_json(ws))["type"] == "recording_started"
        await send_frames(ws, frames_of(8000, 4096))
        await ws.send(STOP_REC)
        assert (await recv_json(ws))["type"] == "processing"
        assert (await recv_json(ws))["type"] == "transcription"
        assert len(backend.uploads) == 1
        await ws.close()


async def test_end_session_mid_recording_aborts_the_upload(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url)) as gw:
        ws = await recording(gw)
        await send_frames(ws, frames_of(12_000, 4096))
        await ws.send(json.dumps({"type": "end_session"}))
        assert (await recv_json(ws))["type"] == "session_ended"
        await aborted_without_a_turn(backend)
        await ws.close()


async def test_a_disconnect_mid_recording_aborts_the_upload(backend: BackendServer) -> None:
    async with running_gateway(make_settings(backend.url)) as gw:  # the session is parked
        ws = await recording(gw)
        await send_frames(ws, frames_of(12_000, 4096))
        await eventually(lambda: backend.streamed_bytes() >= 12_000)
        await ws.close()
        await aborted_without_a_turn(backend)
        assert backend.end_calls == []  # parked for a resume; only the recording is gone


async def test_a_backend_failing_mid_upload_gives_one_error_and_then_nothing(
    backend: BackendServer,
) -> None:
    async with running_gateway(make_settings(backend.url)) as gw:
        backend.reject_early = 503
        ws = await recording(gw)
        answers: list[dict[str, Any]] = []
        for frame in frames_of(200 * 4096, 4096):
            await ws.send(frame)
            answers.append(await recv_json(ws))
            if answers[-1]["type"] == "error":
                break
            await asyncio.sleep(0.002)
        assert answers[-1]["type"] == "error"
        assert "Could not send the utterance to the backend" in answers[-1]["payload"]["message"]
        assert "503" in answers[-1]["payload"]["message"]
        assert (await recv_json(ws))["type"] == "audio_received"  # the frame it failed on
        # The rest of the recording is acknowledged and ignored; the stop answers nothing.
        after = await send_frames(ws, frames_of(5 * 4096, 4096))
        assert [a["type"] for a in after] == ["audio_received"] * 5
        await ws.send(STOP_REC)
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_json(ws))["type"] == "pong"  # nothing came before it
        backend.reject_early = None
        await ws.send(START_REC)
        assert (await recv_json(ws))["type"] == "recording_started"
        await send_frames(ws, frames_of(4096, 4096))
        await ws.send(STOP_REC)
        assert (await recv_json(ws))["type"] == "processing"
        assert (await recv_json(ws))["type"] == "transcription"
        await ws.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_slow_backend_holds_the_client_back_and_the_gateway_does_not_grow(
    backend: BackendServer,
) -> None:
    # The backend takes 16 KiB every 5 ms (~3 MB/s); the client sends 24 MiB as fast as it
    # can. Buffered, the gateway would hold all 24 MiB (twice, joined); streamed it holds a
    # window. Another client's pings are answered throughout.
    backend.read_size = 16384
    backend.read_pause = 0.005
    total = 24 << 20
    port = free_port()
    env = gateway_env(
        backend.url, port, MAX_AUDIO_BYTES=str(32 << 20), WS_AUDIO_RATE="0", LOG_LEVEL="warning"
    )
    args = [sys.executable, "-m", "kalami_gateway", "serve"]
    async with process(args, env, port) as proc:
        gw = Gateway(app=None, port=port)  # type: ignore[arg-type]  # a process, no app here
        bystander = await connect(gw.ws(token_for("bob")))
        await recv_json(bystander)
        ws = await recording(gw)
        before = await asyncio.to_thread(rss_kib, proc.pid)
        peak = before
        frame = pattern(0, 65536)

        async def send_all() -> None:
            for _ in range(total // len(frame)):
                await ws.send(frame)

        async def drain_acks() -> None:
            for _ in range(total // len(frame)):
                assert (await recv_json(ws, within=60))["type"] == "audio_received"

        sending = asyncio.gather(send_all(), drain_acks())
        slowest_pong = 0.0
        while not sending.done():
            peak = max(peak, await asyncio.to_thread(rss_kib, proc.pid))
            asked = time.monotonic()
            await bystander.send(json.dumps({"type": "ping"}))
            assert (await recv_json(bystander))["type"] == "pong"
            slowest_pong = max(slowest_pong, time.monotonic() - asked)
            await asyncio.sleep(0.05)
        await sending
        await ws.send(STOP_REC)
        assert (await recv_json(ws))["type"] == "processing"
        heard = await recv_json(ws, within=60)
        assert heard["payload"]["text"].startswith(f"{total} bytes")
        growth_mib = (peak - before) / 1024
        assert growth_mib < 12, f"the gateway grew by {growth_mib:.1f} MiB"
        assert slowest_pong < 5, f"a bystander's ping waited {slowest_pong:.1f} s"
        await ws.close()
        await bystander.close()

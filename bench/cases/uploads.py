"""The streamed-utterance cases (issue 13): the gateway's peak RSS while many learners stream
long utterances at once, and the time from ``stop_recording`` to the transcription, each in
stream and in buffer mode, in front of the upload backend stand-in."""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.cases.clients import bounded, close_all, connect_many, start_session
from bench.report import Row
from bench.sizes import Sizes
from bench.targets import UploadGateway, rss_kb
from bench.wsload import BINARY, TEXT, WsClient, client_frame

UPLOAD_FRAME = 4096
UPLOAD_WINDOW_FRAMES = 32  # frames a client has in flight before it waits for acknowledgements
BACKEND_REPLY_DELAY_S = 0.05  # the upload backend answers this long after a body's end


async def stream_utterance(client: WsClient, size: int) -> None:
    """start_recording, then ``size`` bytes in 4 KiB frames, a window of them in flight."""
    client.send(client_frame(TEXT, b'{"type":"start_recording","payload":{"format":"webm"}}'))
    await client.recv()
    frame = client_frame(BINARY, bytes(UPLOAD_FRAME))
    frames = size // UPLOAD_FRAME
    sent = acked = 0
    while acked < frames:
        while sent < frames and sent - acked < UPLOAD_WINDOW_FRAMES:
            client.send(frame)
            sent += 1
        reply = await client.recv()
        if b'"audio_received"' in reply:
            acked += 1
        elif b'"error"' in reply:
            raise RuntimeError(f"upload failed: {reply[:160]!r}")


async def transcription_after_stop(client: WsClient) -> float:
    """Seconds from sending stop_recording to the transcription."""
    started = time.perf_counter()
    client.send(client_frame(TEXT, b'{"type":"stop_recording"}'))
    while b'"transcription"' not in (reply := await client.recv()):
        if b'"error"' in reply:
            raise RuntimeError(f"turn failed: {reply[:160]!r}")
    elapsed = time.perf_counter() - started
    while b'"type":"audio"' not in await client.recv():
        pass
    return elapsed


async def case_upload_memory(mode: str, sizes: Sizes) -> list[Row]:
    """Issue 13: many learners speaking long utterances at once; the gateway's peak RSS
    growth while they stream (buffered, every utterance is held whole until its stop)."""
    count, size = sizes.upload_connections, sizes.upload_bytes
    with UploadGateway(mode, BACKEND_REPLY_DELAY_S) as gateway:
        clients = await bounded(connect_many(gateway.port, count, 50))
        await bounded(asyncio.gather(*(start_session(c) for c in clients)))
        await asyncio.sleep(0.5)
        base = peak = rss_kb(gateway.pid)
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kb(gateway.pid))
                await asyncio.sleep(0.05)

        async def one(client: WsClient) -> None:
            await stream_utterance(client, size)
            await transcription_after_stop(client)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(one(c) for c in clients)), 300)
        finally:
            done.set()
            await sampler
        elapsed = time.perf_counter() - started
        close_all(clients)
    mib = size / (1 << 20)
    return [
        Row(
            f"peak RSS growth, {count} conns each streaming {mib:g} MiB ({mode} mode)",
            f"upload_rss_growth_{mode}_mb",
            (peak - base) / 1024,
            unit="MB",
        ),
        Row(
            f"audio through the gateway to the backend ({mode} mode)",
            f"upload_mb_per_s_{mode}",
            count * size / elapsed / 1e6,
            unit="MB/s",
        ),
    ]


async def case_stop_to_transcription(mode: str, sizes: Sizes) -> list[Row]:
    """Issue 13: from stop_recording to the transcription for one utterance, against a
    backend that answers 50 ms after the body ends (median of 5)."""
    with UploadGateway(mode, BACKEND_REPLY_DELAY_S) as gateway:
        [client] = await bounded(connect_many(gateway.port, 1, 1))
        await start_session(client)
        timings = []
        for _ in range(5):
            await stream_utterance(client, sizes.latency_upload_bytes)
            await asyncio.sleep(0.2)  # the learner stops after the last frame is through
            timings.append(await transcription_after_stop(client))
        close_all([client])
    mib = sizes.latency_upload_bytes / (1 << 20)
    return [
        Row(
            f"stop_recording -> transcription, {mib:g} MiB utterance, backend 50 ms ({mode})",
            f"stop_to_transcription_{mode}_ms",
            statistics.median(timings) * 1000,
            unit="ms",
        )
    ]

"""How much each case does: the full counts of ``make bench`` and the tiny ones of
``--smoke`` (which only checks that the harness works)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sizes:
    wrk_seconds: int
    wrk_connections: int
    connects: int
    connect_concurrency: int
    ping_connections: int
    pings_each: int
    audio_connections: int
    audio_frames_each: int
    idle_steps: tuple[int, ...]
    turn_connections: int
    turns_each: int
    burst_turns: int
    upload_connections: int  # streaming many utterances at once (issue 13)
    upload_bytes: int  # each one's size
    latency_upload_bytes: int  # the utterance whose stop -> transcription is timed
    idle_tax_sockets: int  # idle sockets held while the proxy is measured (issue 15)


FULL = Sizes(
    10, 64, 1000, 50, 50, 2000, 20, 1000, (2000, 10000), 20, 10, 250, 200, 8 << 20, 5 << 20, 5000
)
SMOKE = Sizes(1, 4, 20, 5, 4, 10, 2, 5, (20, 40), 2, 2, 5, 4, 256 << 10, 256 << 10, 50)

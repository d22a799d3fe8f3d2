"""The upload cases' targets: ``UploadBackend``, ``bench/upload_backend.py`` in a process of
its own, and ``UploadGateway``, a fresh gateway (stream or buffer mode) in front of it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from bench.targets.gateway import GatewayProcess
from bench.targets.local import BENCH_DIR, LocalServer, wait_for_http


@dataclass
class UploadBackend(LocalServer):
    """``bench/upload_backend.py`` in a process of its own: reads bodies to their end."""

    delay: float
    reply_audio_bytes: int = 0  # the turn's reply audio (0: the usual 3 bytes)

    @property
    def url(self) -> str:
        return self.http

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.upload_backend",
                "--port",
                str(self.port),
                "--delay",
                str(self.delay),
                "--reply-audio-bytes",
                str(self.reply_audio_bytes),
            ],
            cwd=BENCH_DIR.parent,
        )
        wait_for_http(f"{self.url}/health")


class UploadGateway:
    """A fresh gateway (stream or buffer mode) in front of the upload backend stand-in."""

    def __init__(self, mode: str, delay: float) -> None:
        self.backend = UploadBackend(delay)
        self.gateway = GatewayProcess(
            backend_url=self.backend.url,
            extra_env={"UTTERANCE_UPLOAD": mode, "MAX_AUDIO_BYTES": str(16 << 20)},
        )

    def __enter__(self) -> GatewayProcess:
        self.backend.start()
        self.gateway.start()
        return self.gateway

    def __exit__(self, *_: object) -> None:
        self.gateway.stop()
        self.backend.stop()

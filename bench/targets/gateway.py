"""``GatewayProcess``: ``python -m kalami_gateway serve`` in a process of its own, with the
bench's settings (production ones but for the limits a load test must lift); and
``default_ws_engine``, the WebSocket engine the gateway runs when none is named."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

import msgspec

from bench.targets.local import SECRET, LocalServer, wait_for_http
from kalami_gateway.app.settings import Settings


def default_ws_engine() -> str:
    """``WS_ENGINE``'s default, read from the settings schema (the ``Settings`` field's
    default) so the bench follows a flip of it. The bench still names the engine on every
    gateway it compares: an inherited ``WS_ENGINE`` or a ``.env`` in the working directory
    would otherwise choose it."""
    (engine,) = (f.default for f in msgspec.structs.fields(Settings) if f.name == "ws_engine")
    return str(engine)


@dataclass
class GatewayProcess(LocalServer):
    backend_url: str
    backend_mode: str = "http"
    workers: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    session_protocol: bool = True  # audio frames need a session and a recording first
    stop_timeout: float = field(default=15.0, kw_only=True)  # a drain takes its time

    def start(self) -> None:
        env = {
            **os.environ,
            "JWT_SECRET": SECRET,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "BACKEND_URL": self.backend_url,
            "BACKEND_MODE": self.backend_mode,
            "LOG_LEVEL": "warn",
            "LOG_FORMAT": "json",
            # The load client reuses 500 users for its connections.
            "MAX_CONNECTIONS_PER_USER": "0",
            # Throughput is measured without the per-connection rate limits (the anchors
            # have none); the flood case turns them back on.
            "WS_MESSAGE_RATE": "0",
            "WS_FRAME_RATE": "0",
            "WS_AUDIO_RATE": "0",
            **self.extra_env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kalami_gateway", "serve", "--workers", str(self.workers)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        wait_for_http(f"{self.http}/health")

"""What every process the bench starts shares: the bench's folder, the JWT secret they are
all started with, a free port on 127.0.0.1, waiting for a ``/health`` answer, and
``LocalServer``, a server process's address, pid and stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-" + "0123456789abcdef" * 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310  # a loopback URL we built
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up within {timeout}s") from None
            time.sleep(0.05)


@dataclass
class LocalServer:
    """A server process of the bench's on 127.0.0.1: its address, pid, and a stop that waits
    (SIGTERM, then a kill after ``stop_timeout``)."""

    port: int = field(default_factory=free_port, kw_only=True)
    process: subprocess.Popen[bytes] | None = field(default=None, kw_only=True)
    stop_timeout: float = field(default=10.0, kw_only=True)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

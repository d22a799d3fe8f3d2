"""``FloorServer``: one of the empty apps of ``bench/floor.py`` (the floor under the socket
path) in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

from bench.targets.local import BENCH_DIR, LocalServer, wait_for_http


@dataclass
class FloorServer(LocalServer):
    """``bench/floor.py`` in a process of its own: an app that only answers, on the
    gateway's server stack (``kind``: raw, litestar or litestar-accept)."""

    kind: str
    extra_env: dict[str, str] = field(default_factory=dict)
    session_protocol: bool = False  # it answers frames in any state

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "--kind", self.kind, "--port", str(self.port)],
            cwd=BENCH_DIR.parent,
            env={**os.environ, **self.extra_env},
        )
        wait_for_http(f"{self.http}/health")

"""nginx (config: ``bench/nginx.conf.template``): the backend stand-in (fixed JSON answers)
and, on a second port, nginx as the ``/api/`` reverse proxy: the baseline."""

from __future__ import annotations

import shutil
import signal
import string
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.targets.local import BENCH_DIR, free_port, wait_for_http


@dataclass
class Nginx:
    backend_port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    prefix: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="kalami-bench-nginx-"))
    )
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        template = string.Template((BENCH_DIR / "nginx.conf.template").read_text())
        config = self.prefix / "nginx.conf"
        config.write_text(
            template.safe_substitute(
                prefix=str(self.prefix),
                backend_port=self.backend_port,
                proxy_port=self.proxy_port,
            )
        )
        self.process = subprocess.Popen(
            ["nginx", "-p", str(self.prefix), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_http(f"http://127.0.0.1:{self.backend_port}/health")
        wait_for_http(f"http://127.0.0.1:{self.proxy_port}/api/health")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.prefix, ignore_errors=True)

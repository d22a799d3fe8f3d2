"""The gateway a scale run measures: ``kalami-gateway serve --workers W`` started here (stub
backend, Redis directory under a key prefix of its own, a short heartbeat, its log to a file),
or one already running that the run attaches to (its port and its supervisor's pid). Its
workers are the supervisor's spawned children; with one worker the supervisor serves itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench.scale.procfs import children, cmdline
from bench.targets.local import SECRET, wait_for_http

REDIS_URL = "redis://127.0.0.1:6379/0"


def get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  # loopback
        body: dict[str, Any] = json.loads(response.read())
        return body


def get_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  # loopback
        text: str = response.read().decode()
        return text


@dataclass
class Stopped:
    exit_code: int | None  # None: not our child (attached), or it did not exit
    seconds: float


@dataclass
class ScaleGateway:
    """A gateway on 127.0.0.1:``port``; ``process`` is set when this run started it."""

    port: int
    supervisor_pid: int
    workers: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    key_prefix: str = ""  # its REDIS_KEY_PREFIX, when started here
    _log: TextIO | None = field(default=None, repr=False)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        port: int,
        workers: int,
        heartbeat: float,
        log_path: Path,
        extra_env: dict[str, str],
    ) -> ScaleGateway:
        prefix = f"scale-{os.getpid()}-{port}:"
        env = {
            **os.environ,
            "JWT_SECRET": SECRET,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "BACKEND_MODE": "stub",
            "REDIS_URL": REDIS_URL,
            "REDIS_KEY_PREFIX": prefix,
            "WS_HEARTBEAT_INTERVAL": str(round(heartbeat * 1000)),
            "LOG_LEVEL": "warn",
            "LOG_FORMAT": "json",
            # The clients reuse a thousand users for all their connections.
            "MAX_CONNECTIONS_PER_USER": "0",
            **extra_env,
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "kalami_gateway", "serve", "--workers", str(workers)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        gateway = cls(port, process.pid, workers, process, log_path, prefix, log)
        try:
            wait_for_http(f"{gateway.http}/health", timeout=60)
            gateway.wait_for_workers(60)
        except Exception:
            gateway.stop(5)
            raise
        return gateway

    @classmethod
    def attach(cls, port: int, supervisor_pid: int) -> ScaleGateway:
        if not Path(f"/proc/{supervisor_pid}").exists():
            raise RuntimeError(f"--pid {supervisor_pid}: no such process")
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=10)
        gateway = cls(port, supervisor_pid, 0)
        gateway.workers = len(gateway.worker_pids())
        return gateway

    def worker_pids(self) -> list[int]:
        """The processes that serve: the supervisor's spawned children that are not
        multiprocessing's resource tracker; the supervisor itself when it has none."""
        found = [
            pid
            for pid in children(self.supervisor_pid)
            if "spawn_main" in cmdline(pid) and "resource_tracker" not in cmdline(pid)
        ]
        return found or [self.supervisor_pid]

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        return get_json(f"{self.http}/stats", timeout)

    def wait_for_workers(self, timeout: float) -> None:
        """Until every worker is spawned and in the Redis directory's instance count."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.worker_pids()
            enough = self.workers == 1 or len(pids) >= self.workers
            if enough and self.stats()["cluster"]["instances"] >= self.workers:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.workers} workers not up within {timeout:.0f} s")
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> Stopped:
        """SIGTERM to the supervisor, and how long it took to exit (a kill after ``timeout``)."""
        began = time.monotonic()
        code: int | None = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    code = self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            else:
                code = self.process.returncode
        else:
            os.kill(self.supervisor_pid, signal.SIGTERM)
            while Path(f"/proc/{self.supervisor_pid}").exists():
                if time.monotonic() - began > timeout:
                    break
                time.sleep(0.02)
        seconds = time.monotonic() - began
        if self._log is not None:
            self._log.close()
            self._log = None
        return Stopped(code, seconds)

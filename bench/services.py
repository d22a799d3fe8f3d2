"""The processes a benchmark run needs: nginx (backend stand-in and baseline) and gateways."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SECRET = "bench-secret-" + "0123456789abcdef" * 4
NEEDED_TOOLS = {"wrk": "wrk", "nginx": "nginx-light"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ensure_tools() -> None:
    """wrk and nginx from Debian's packages: installed when we are root, asked for otherwise."""
    missing = [pkg for tool, pkg in NEEDED_TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        packages = " ".join(missing)
        sys.exit(f"bench: please install {packages} (e.g. sudo apt-get install {packages})")
    print(f"bench: installing {' '.join(missing)} with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


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


def _stat(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process and its children (``--workers``) have used so far."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(entry.name)
        except OSError:
            continue  # gone meanwhile
        if entry.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


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


# The Node stack the gateway replaces (kept beside the repository for the team, not in it).
NODE_ANCHOR_DIR = Path(
    os.environ.get(
        "KALAMI_NODE_ANCHOR", BENCH_DIR.parent.parent / "shared" / "anchors" / "node-gateway"
    )
)
NODE_INSTALL_DIR = BENCH_DIR / ".node-anchor"


def node_anchor_missing() -> str | None:
    """Why the Node anchor cannot run here (None when it can)."""
    if not (NODE_ANCHOR_DIR / "package.json").is_file():
        return f"no Node anchor at {NODE_ANCHOR_DIR} (set KALAMI_NODE_ANCHOR)"
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed (Debian: nodejs, npm)"
    return None


def install_node_anchor() -> Path:
    """A copy of the anchor with its dependencies (``npm ci`` again when its lock changes)."""
    lock = (NODE_ANCHOR_DIR / "package-lock.json").read_bytes()
    stamp = NODE_INSTALL_DIR / ".installed-lock"
    if stamp.is_file() and stamp.read_bytes() == lock:
        return NODE_INSTALL_DIR
    shutil.rmtree(NODE_INSTALL_DIR, ignore_errors=True)
    # Contents only: shared/ may be read-only, and npm must write beside the copy.
    shutil.copytree(
        NODE_ANCHOR_DIR,
        NODE_INSTALL_DIR,
        ignore=shutil.ignore_patterns("node_modules"),
        copy_function=shutil.copyfile,
    )
    for place in [NODE_INSTALL_DIR, *NODE_INSTALL_DIR.rglob("*")]:
        place.chmod(place.stat().st_mode | 0o700)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--silent"],
        cwd=NODE_INSTALL_DIR,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stamp.write_bytes(lock)
    return NODE_INSTALL_DIR


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


@dataclass
class NodeAnchor(LocalServer):
    """The Node/Express gateway (express, http-proxy-middleware, ws, jsonwebtoken, pino), one
    process, against the same backend stand-in: the figure to beat."""

    backend_url: str
    session_protocol: bool = False  # it answers frames in any state; it has no sessions

    def start(self) -> None:
        directory = install_node_anchor()
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "BACKEND_URL": self.backend_url,
            "JWT_SECRET": SECRET,
            "LOG_LEVEL": "warn",
        }
        self.process = subprocess.Popen(
            ["node", "src/server.js"], cwd=directory, env=env, stdout=subprocess.DEVNULL
        )
        wait_for_http(f"{self.http}/health")


@dataclass
class UploadBackend(LocalServer):
    """``bench/upload_backend.py`` in a process of its own: reads bodies to their end."""

    delay: float

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
            ],
            cwd=BENCH_DIR.parent,
        )
        wait_for_http(f"{self.url}/health")


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

"""The Node/Express stack the gateway replaces: where it is, why it cannot run here, its
copy with its dependencies installed, and ``NodeAnchor``, the process."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.targets.local import BENCH_DIR, SECRET, LocalServer, wait_for_http

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

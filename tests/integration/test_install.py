"""The production install as docs/operations.md gives it: the wheel plus the runtime lock with
``pip install --require-hashes`` into a new venv, which then serves — with no dev tool in it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
DEV_ONLY = ("mypy", "pytest", "ruff", "hypothesis", "playwright", "fastapi")


def run(*command: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(  # noqa: S603  # our own commands
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_wheel_with_the_runtime_lock_installs_and_serves() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        venv = work / "venv"
        run(sys.executable, "-m", "venv", venv)
        pip = venv / "bin" / "pip"
        # The wheel, built as `make dist` builds it (the build backend from PyPI, isolated).
        run(
            pip,
            "wheel",
            "--no-deps",
            "-q",
            "--disable-pip-version-check",
            "-w",
            work / "dist",
            ROOT,
        )
        [wheel] = (work / "dist").glob("kalami_gateway-*.whl")
        run(
            pip,
            "install",
            "-q",
            "--disable-pip-version-check",
            "--require-hashes",
            "-r",
            RUNTIME_LOCK,
        )
        run(pip, "install", "-q", "--disable-pip-version-check", "--no-deps", wheel)
        assert "kalami-gateway" in run(venv / "bin" / "kalami-gateway", "--version")
        installed = run(pip, "list", "--format=freeze").lower()
        for tool in DEV_ONLY:
            assert f"{tool}==" not in installed, f"{tool} is in the production venv"

        port = free_port()
        env = {
            **os.environ,
            "JWT_SECRET": "install-test-secret-0123456789abcdef",
            "BACKEND_MODE": "stub",
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "LOG_LEVEL": "warning",
        }
        server = subprocess.Popen(  # noqa: S603
            [str(venv / "bin" / "kalami-gateway"), "serve"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            body = b""
            for _ in range(200):
                try:
                    with urllib.request.urlopen(  # our own local URL
                        f"http://127.0.0.1:{port}/health", timeout=2
                    ) as answer:
                        body = answer.read()
                    break
                except OSError:
                    assert server.poll() is None, server.stderr.read() if server.stderr else ""
                    time.sleep(0.1)
            assert b'"healthy"' in body
        finally:
            server.terminate()
            _, errors = server.communicate(timeout=20)
        assert server.returncode == 0, errors

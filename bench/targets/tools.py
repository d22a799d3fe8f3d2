"""The programs the bench drives that are not Python packages: wrk (the HTTP load) and nginx
(the backend stand-in and the baseline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

NEEDED_TOOLS = {"wrk": "wrk", "nginx": "nginx-light"}


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

"""Reading the settings: the environment over an optional ``.env`` file, every variable of the
table at once, then the checks of the settings as a whole.

Every bad value is reported in one line that names the variable and says what is wrong.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kalami_gateway.app.settings.table import TABLE, Settings


class SettingsError(Exception):
    """A setting is missing or wrong; the message is one line for the operator."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``#`` comments, blank lines, ``export`` and quotes allowed."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{path}:{number}: expected KEY=VALUE, got {raw.strip()!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
    stderr_is_tty: bool | None = None,
) -> Settings:
    """Settings from ``environ`` (default: the process environment) over ``env_file``."""
    env: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        env.update(read_env_file(env_file))
    env.update(os.environ if environ is None else environ)
    problems: list[str] = []
    terminal = sys.stderr.isatty() if stderr_is_tty is None else stderr_is_tty
    values: dict[str, Any] = {
        row.field: row.read(env, problems, terminal=terminal) for row in TABLE
    }
    settings = Settings(**values)
    problems += cluster_problems(settings)
    if problems:
        raise SettingsError("; ".join(problems))
    return settings


def cluster_problems(settings: Settings) -> list[str]:
    """What is wrong with the settings as a whole (each value may be fine on its own)."""
    if settings.workers > 1 and not settings.redis_url:
        return [
            f"WORKERS={settings.workers} needs REDIS_URL: every worker is an instance of the "
            "cluster, and the instances share their connection directory through Redis"
        ]
    return []

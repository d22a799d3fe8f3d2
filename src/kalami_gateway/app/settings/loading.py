"""Reading the settings: the environment over an optional ``.env`` file, every variable of the
table at once, then the checks of the settings as a whole.

Every bad value is reported in one line that names the variable and says what is wrong.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from kalami_gateway.app.settings.table import TABLE, Settings
from kalami_gateway.app.settings.variable import Variable


class SettingsError(Exception):
    """A setting is missing or wrong; the message is one line for the operator."""


# The one configuration the native WebSocket engine refuses (app/server.py asks too).
NATIVE_WITHOUT_DEFLATE: Final = (
    "WS_ENGINE=native does not support permessage-deflate: set "
    "WS_PER_MESSAGE_DEFLATE=false, or WS_ENGINE=uvicorn"
)


_EXPORT: Final = re.compile(r"^export\s+")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``#`` comments, blank lines, ``export`` and quotes allowed."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = _EXPORT.sub("", line, count=1)
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
    stdout_is_tty: bool | None = None,
) -> Settings:
    """Settings from ``environ`` (default: the process environment) over ``env_file``."""
    env: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        env.update(read_env_file(env_file))
    env.update(os.environ if environ is None else environ)
    problems: list[str] = []
    read_secret_files(env, problems)
    terminal = sys.stdout.isatty() if stdout_is_tty is None else stdout_is_tty
    values: dict[str, Any] = {
        row.field: row.read(env, problems, terminal=terminal) for row in TABLE
    }
    settings = Settings(**values)
    problems += cluster_problems(settings)
    if problems:
        raise SettingsError("; ".join(problems))
    return settings


FILE_SUFFIX: Final = "_FILE"


def read_secret_files(env: dict[str, str], problems: list[str]) -> None:
    """``NAME_FILE=<path>`` for a secret of the table (JWT_SECRET, JWT_PREVIOUS_SECRET,
    PUSH_API_KEY, PUSH_PREVIOUS_API_KEY, REDIS_URL): the file is read once, now, and its
    text (one trailing newline taken off, as ``echo`` and editors leave one) is the value,
    as if ``NAME`` held it. So the secret lives in a file a secret store mounts, never in
    the process environment or a unit file. Setting both ``NAME`` and ``NAME_FILE`` is
    refused: which one wins would be a guess."""
    for row in TABLE:
        if not row.variable.from_file:
            continue
        path = env.get(row.name + FILE_SUFFIX, "").strip()
        if not path:
            continue
        if env.get(row.name, "").strip():
            problems.append(f"{row.name} and {row.name}{FILE_SUFFIX} are both set: keep one")
            continue
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{row.name}{FILE_SUFFIX}: cannot read {path}: {_reason(exc)}")
            continue
        env[row.name] = text.removesuffix("\n").removesuffix("\r")
        if not env[row.name] and isinstance(row.variable, Variable):  # a Secret says it itself
            problems.append(f"{row.name}{FILE_SUFFIX}: {path} is empty")


def _reason(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return "not UTF-8 text"


def cluster_problems(settings: Settings) -> list[str]:
    """What is wrong with the settings as a whole (each value may be fine on its own)."""
    problems = []
    if settings.workers > 1 and not settings.redis_url:
        problems.append(
            f"WORKERS={settings.workers} needs REDIS_URL: every worker is an instance of the "
            "cluster, and the instances share their connection directory through Redis"
        )
    if settings.admin_port and settings.admin_port == settings.gateway_port:
        problems.append("ADMIN_PORT must differ from GATEWAY_PORT")
    if settings.ws_engine == "native" and settings.ws_per_message_deflate:
        problems.append(NATIVE_WITHOUT_DEFLATE)
    if settings.push_previous_api_key and not settings.push_api_key:
        problems.append(
            "PUSH_PREVIOUS_API_KEY needs PUSH_API_KEY: the former key is accepted beside the "
            "current one, never alone"
        )
    return problems

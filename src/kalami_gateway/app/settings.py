"""Settings: read once from the environment (and an optional ``.env`` file), then frozen.

Every bad value is reported in one line that names the variable and says what is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec

from kalami_gateway.domain.auth import CLOCK_LEEWAY_SECONDS

MIN_SECRET_LENGTH: Final = 32
DEFAULT_LEEWAY_MS: Final = round(CLOCK_LEEWAY_SECONDS * 1000)
JWT_SETUP_HINT: Final = (
    "set JWT_SECRET to the backend's HS256 secret (at least 32 characters), e.g. "
    "export JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
)

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console"]
BackendMode = Literal["http", "stub"]
UtteranceUpload = Literal["stream", "buffer"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of the gateway. Durations are milliseconds, as in the environment."""

    jwt_secret: str
    gateway_host: str = "0.0.0.0"  # noqa: S104  # a gateway listens on every interface by default
    gateway_port: int = 3000
    backend_url: str = "http://localhost:8000"
    backend_mode: BackendMode = "http"
    backend_timeout_ms: int = 30_000
    jwt_leeway_ms: int = DEFAULT_LEEWAY_MS
    ws_heartbeat_interval_ms: int = 30_000
    max_message_bytes: int = 3 << 20  # an app `audio` message: ~2.3 MB of m4a as base64
    max_audio_bytes: int = 10_485_760
    ws_per_message_deflate: bool = False
    cors_origins: tuple[str, ...] = ("*",)
    trusted_proxies: tuple[str, ...] = ()
    log_level: LogLevel = "info"
    log_format: LogFormat = "json"
    shutdown_timeout_ms: int = 10_000
    redis_url: str = ""  # empty: one process, the in-memory directory
    redis_key_prefix: str = "kalami:"
    max_connections_per_user: int = 20  # 0: no cap
    push_api_key: str = ""  # empty: POST /internal/push is disabled (404)
    workers: int = 1
    end_retry_window_ms: int = 300_000
    token_expiry_warning_ms: int = 60_000
    http_header_timeout_ms: int = 10_000
    ws_message_rate: int = 50
    session_start_rate: int = 20  # start_session per minute per user (per instance)
    ws_send_buffer_bytes: int = 4 << 20
    ws_send_timeout_ms: int = 10_000
    ws_audio_rate: int = 1 << 20
    ws_frame_rate: int = 400  # frames per second per connection, any frame (0: no limit)
    max_header_bytes: int = 32 * 1024
    resume_grace_ms: int = 30_000  # 0: a dropped connection ends its session at once
    playground: bool | None = None  # None: on with the stub backend, off with the real one
    utterance_upload: UtteranceUpload = "stream"
    api_connections_per_client: int = 128  # concurrent /api exchanges per client (0: no cap)
    api_body_min_rate: int = 1024  # bytes/s an /api request body must keep up with (0: off)
    api_body_rate_grace_ms: int = 10_000  # how far behind that pace a body may fall

    @property
    def api_body_rate_grace(self) -> float:
        return self.api_body_rate_grace_ms / 1000

    @property
    def playground_enabled(self) -> bool:
        return self.backend_mode == "stub" if self.playground is None else self.playground

    @property
    def resume_grace(self) -> float:
        return self.resume_grace_ms / 1000

    @property
    def token_expiry_warning(self) -> float:
        return self.token_expiry_warning_ms / 1000

    @property
    def end_retry_window(self) -> float:
        return self.end_retry_window_ms / 1000

    @property
    def backend_timeout(self) -> float:
        return self.backend_timeout_ms / 1000

    @property
    def jwt_leeway(self) -> float:
        return self.jwt_leeway_ms / 1000

    @property
    def shutdown_timeout(self) -> float:
        return self.shutdown_timeout_ms / 1000

    @property
    def heartbeat_interval(self) -> float:
        return self.ws_heartbeat_interval_ms / 1000


# Every variable, what it means and its default: `kalami-gateway serve --help` prints these.
ENVIRONMENT: Final = (
    ("JWT_SECRET", "HS256 secret the backend signs tokens with (32+ characters)", "required"),
    ("GATEWAY_HOST", "address to listen on", "0.0.0.0"),  # noqa: S104  # text for --help
    ("GATEWAY_PORT", "port to listen on", "3000"),
    (
        "BACKEND_URL",
        "FastAPI backend base URL (/api/x goes to BACKEND_URL/x)",
        "http://localhost:8000",
    ),
    ("BACKEND_MODE", "http (the real backend) or stub (built in, for development)", "http"),
    ("BACKEND_TIMEOUT", "deadline of every backend call, ms", "30000"),
    ("END_RETRY_WINDOW", "how long a failed session end is retried, ms", "300000"),
    ("JWT_LEEWAY", "clock-skew allowance on exp, ms", str(DEFAULT_LEEWAY_MS)),
    ("TOKEN_EXPIRY_WARNING", "token_expiring this long before a token expires, ms", "60000"),
    ("WS_HEARTBEAT_INTERVAL", "protocol ping interval, ms", "30000"),
    ("MAX_MESSAGE_BYTES", "largest WebSocket frame (larger: close 1009)", "3145728"),
    ("MAX_AUDIO_BYTES", "largest utterance", "10485760"),
    ("WS_PER_MESSAGE_DEFLATE", "negotiate permessage-deflate", "false"),
    ("WS_MESSAGE_RATE", "text messages/s per connection, burst 2 s (0: off)", "50"),
    ("SESSION_START_RATE", "start_session per minute per user, burst a minute's (0: off)", "20"),
    ("WS_AUDIO_RATE", "binary bytes/s per connection, burst 2 s (0: off)", "1048576"),
    ("WS_FRAME_RATE", "frames/s per connection, any kind, burst 2 s (0: off)", "400"),
    ("WS_SEND_BUFFER_BYTES", "unsent data per connection before it is let go", "4194304"),
    ("WS_SEND_TIMEOUT", "longest wait of one send on a client not reading, ms", "10000"),
    ("CORS_ORIGINS", "allowed browser origins, comma-separated, * for any", "*"),
    ("TRUSTED_PROXIES", "peers (IPs or CIDR networks) whose X-Forwarded-* are believed", "none"),
    ("LOG_LEVEL", "debug, info, warn, error", "info"),
    ("LOG_FORMAT", "json or console", "console on a terminal, else json"),
    ("SHUTDOWN_TIMEOUT", "how long a graceful shutdown may take, ms", "10000"),
    ("HTTP_HEADER_TIMEOUT", "a request's line and headers must arrive within it, ms", "10000"),
    ("MAX_HEADER_BYTES", "largest total size of a request's headers (larger: 431)", "32768"),
    ("REDIS_URL", "Redis for the cluster (empty: one process)", "empty"),
    ("REDIS_KEY_PREFIX", "prefix of every Redis key and channel", "kalami:"),
    ("MAX_CONNECTIONS_PER_USER", "open sockets per user, cluster-wide (0: no cap)", "20"),
    ("PUSH_API_KEY", "enables POST /internal/push (16+ characters)", "empty: disabled"),
    ("WORKERS", "worker processes on one port (more than 1 needs REDIS_URL)", "1"),
    ("RESUME_GRACE", "how long a dropped connection's session waits for a resume, ms", "30000"),
    ("PLAYGROUND", "serve the browser playground at /playground", "true in stub mode, else false"),
    (
        "UTTERANCE_UPLOAD",
        "stream (to the backend while the learner speaks) or buffer (upload after stop)",
        "stream",
    ),
    (
        "API_CONNECTIONS_PER_CLIENT",
        "concurrent /api requests per client address (0: no cap)",
        "128",
    ),
    ("API_BODY_MIN_RATE", "bytes/s an /api request body must keep up with (0: off)", "1024"),
    ("API_BODY_RATE_GRACE", "how far behind that pace an /api body may fall, ms", "10000"),
)


def environment_help() -> str:
    width = max(len(name) for name, _, _ in ENVIRONMENT)
    lines = ["environment variables:"]
    lines += [
        f"  {name:<{width}}  {meaning} (default: {default})"
        for name, meaning, default in ENVIRONMENT
    ]
    return "\n".join(lines)


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


T = TypeVar("T")


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

    def get(
        name: str, parse: Callable[[str], T], default: T, shown: Callable[[str], str] = repr
    ) -> T:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            problems.append(f"{name}: {exc}, got {shown(raw)}")
            return default

    secret = env.get("JWT_SECRET", "")
    if not secret:
        problems.append(f"JWT_SECRET is not set: {JWT_SETUP_HINT}")
    elif len(secret) < MIN_SECRET_LENGTH:
        problems.append(
            f"JWT_SECRET is {len(secret)} characters; HS256 needs at least {MIN_SECRET_LENGTH}"
        )
    tty = sys.stderr.isatty() if stderr_is_tty is None else stderr_is_tty
    settings = Settings(
        jwt_secret=secret,
        gateway_host=get("GATEWAY_HOST", _host, "0.0.0.0"),  # noqa: S104  # see Settings
        gateway_port=get("GATEWAY_PORT", _int_range(0, 65535), 3000),
        backend_url=get("BACKEND_URL", _http_url, "http://localhost:8000"),
        backend_mode=get("BACKEND_MODE", _choice("http", "stub"), "http"),  # type: ignore[arg-type]
        backend_timeout_ms=get("BACKEND_TIMEOUT", _int_range(1, 3_600_000), 30_000),
        jwt_leeway_ms=get("JWT_LEEWAY", _int_range(0, 600_000), DEFAULT_LEEWAY_MS),
        ws_heartbeat_interval_ms=get("WS_HEARTBEAT_INTERVAL", _int_range(1, 3_600_000), 30_000),
        max_message_bytes=get("MAX_MESSAGE_BYTES", _int_range(1024, 1 << 30), 3 << 20),
        max_audio_bytes=get("MAX_AUDIO_BYTES", _int_range(1, 1 << 31), 10_485_760),
        ws_per_message_deflate=get("WS_PER_MESSAGE_DEFLATE", _bool, False),
        cors_origins=get("CORS_ORIGINS", _origins, ("*",)),
        trusted_proxies=get("TRUSTED_PROXIES", _addresses, ()),
        log_level=get("LOG_LEVEL", _log_level, "info"),  # type: ignore[arg-type]
        log_format=get("LOG_FORMAT", _choice("json", "console"), "console" if tty else "json"),  # type: ignore[arg-type]
        shutdown_timeout_ms=get("SHUTDOWN_TIMEOUT", _int_range(0, 600_000), 10_000),
        redis_url=get("REDIS_URL", _redis_url, "", _without_password),
        redis_key_prefix=get("REDIS_KEY_PREFIX", _key_prefix, "kalami:"),
        max_connections_per_user=get("MAX_CONNECTIONS_PER_USER", _int_range(0, 1_000_000), 20),
        push_api_key=get("PUSH_API_KEY", _push_key, "", _length_only),
        workers=get("WORKERS", _int_range(1, 256), 1),
        end_retry_window_ms=get("END_RETRY_WINDOW", _int_range(0, 86_400_000), 300_000),
        token_expiry_warning_ms=get("TOKEN_EXPIRY_WARNING", _int_range(0, 86_400_000), 60_000),
        http_header_timeout_ms=get("HTTP_HEADER_TIMEOUT", _int_range(100, 600_000), 10_000),
        ws_message_rate=get("WS_MESSAGE_RATE", _int_range(0, 1_000_000), 50),
        session_start_rate=get("SESSION_START_RATE", _int_range(0, 1_000_000), 20),
        ws_send_buffer_bytes=get("WS_SEND_BUFFER_BYTES", _int_range(65536, 1 << 30), 4 << 20),
        ws_send_timeout_ms=get("WS_SEND_TIMEOUT", _int_range(100, 3_600_000), 10_000),
        ws_audio_rate=get("WS_AUDIO_RATE", _int_range(0, 1 << 30), 1 << 20),
        ws_frame_rate=get("WS_FRAME_RATE", _int_range(0, 1_000_000), 400),
        max_header_bytes=get("MAX_HEADER_BYTES", _int_range(1024, 1 << 20), 32 * 1024),
        resume_grace_ms=get("RESUME_GRACE", _int_range(0, 86_400_000), 30_000),
        playground=get("PLAYGROUND", _bool, None),
        utterance_upload=get("UTTERANCE_UPLOAD", _choice("stream", "buffer"), "stream"),  # type: ignore[arg-type]
        api_connections_per_client=get("API_CONNECTIONS_PER_CLIENT", _int_range(0, 1_000_000), 128),
        api_body_min_rate=get("API_BODY_MIN_RATE", _int_range(0, 1 << 30), 1024),
        api_body_rate_grace_ms=get("API_BODY_RATE_GRACE", _int_range(1000, 3_600_000), 10_000),
    )
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


def _redis_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    try:
        parts.port  # noqa: B018  # parsing it is the check
    except ValueError:
        raise ValueError("the port is not a number from 0 to 65535") from None
    database = parts.path.strip("/")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path")
    elif not parts.hostname:
        raise ValueError("the URL has no host")
    elif database and not database.isdigit():
        raise ValueError("the database (the path) must be a number, as in redis://host:6379/0")
    return raw


def _without_password(raw: str) -> str:
    """A URL for an error message: its password is not repeated."""
    parts = urlsplit(raw)
    if parts.password is None:
        return repr(raw)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(parts._replace(netloc=netloc).geturl())


def _length_only(raw: str) -> str:
    return f"{len(raw)} characters"


def _key_prefix(raw: str) -> str:
    if any(c.isspace() for c in raw) or len(raw) > 64:
        raise ValueError("expected up to 64 characters without spaces")
    return raw


MIN_PUSH_KEY_LENGTH: Final = 16


def _push_key(raw: str) -> str:
    if len(raw) < MIN_PUSH_KEY_LENGTH:
        raise ValueError(f"expected at least {MIN_PUSH_KEY_LENGTH} characters")
    return raw


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return parse


def _log_level(raw: str) -> str:
    value = raw.lower()
    value = {"warn": "warning"}.get(value, value)
    if value not in ("debug", "info", "warning", "error"):
        raise ValueError("expected one of debug, info, warn, warning, error")
    return value


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _host(raw: str) -> str:
    if any(c.isspace() for c in raw) or "/" in raw:
        raise ValueError("expected a host name or IP address")
    return raw


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw) <= len("https://"):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def _addresses(raw: str) -> tuple[str, ...]:
    """IP addresses or networks (CIDR), normalised: ``10.0.0.1``, ``10.0.0.0/8``, ``::1``."""
    normalised = []
    for item in _list(raw):
        try:
            if "/" in item:
                normalised.append(str(ipaddress.ip_network(item, strict=False)))
            else:
                normalised.append(ipaddress.ip_address(item).compressed)
        except ValueError:
            raise ValueError(
                f"{item!r} is not an IP address or a network like 10.0.0.0/8"
            ) from None
    return tuple(normalised)


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _origins(raw: str) -> tuple[str, ...]:
    origins = _list(raw)
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(
                f"each origin must be * or start with http:// or https:// ({origin!r})"
            )
    return tuple(origin.rstrip("/") for origin in origins)

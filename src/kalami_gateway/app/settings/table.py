"""The settings table, written once: ``Settings``, whose every field carries its environment
variable (name, parser with its range, help line) beside its type and default.

The loader, ``kalami-gateway serve --help`` and the test that holds the README's table and
``.env.example`` to it all read ``TABLE``, the fields in order with their variables.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, get_args

import msgspec

from kalami_gateway.app.settings import parse
from kalami_gateway.app.settings.variable import Secret, Setting, Variable
from kalami_gateway.domain.auth import CLOCK_LEEWAY_SECONDS
from kalami_gateway.domain.reply_audio import DEFAULT_MAX_REPLY_AUDIO_BYTES

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
WsEngine = Literal["uvicorn", "native"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of the gateway, a field each: its type, its environment variable
    (``Variable``: the name, the parser with its range, the line of ``serve --help``) and its
    default. Durations are milliseconds, as in the environment.

    The fields are in the order ``serve --help`` lists them and the loader reads them (one
    message naming several bad values names them in this order).
    """

    jwt_secret: Annotated[
        str,
        Secret(
            "JWT_SECRET",
            "HS256 secret the backend signs tokens with (32+ characters)",
            MIN_SECRET_LENGTH,
            JWT_SETUP_HINT,
        ),
    ]
    jwt_previous_secret: Annotated[
        str,
        Variable(
            "JWT_PREVIOUS_SECRET",
            parse.secret_of(MIN_SECRET_LENGTH),
            "a former JWT_SECRET, still accepted on tokens during a rotation (32+ characters)",
            default_text="empty: none",
            shown=parse.length_only,
            from_file=True,
        ),
    ] = ""  # empty: only JWT_SECRET verifies
    gateway_host: Annotated[str, Variable("GATEWAY_HOST", parse.host, "address to listen on")] = (
        "0.0.0.0"  # noqa: S104  # a gateway listens on every interface by default
    )
    gateway_port: Annotated[
        int, Variable("GATEWAY_PORT", parse.whole(0, 65535), "port to listen on")
    ] = 3000
    admin_port: Annotated[
        int,
        Variable(
            "ADMIN_PORT",
            parse.whole(0, 65535),
            "a second port on GATEWAY_HOST for /metrics, /stats and the health probes only; "
            "then GATEWAY_PORT no longer answers /metrics and /stats (0: off)",
        ),
    ] = 0
    backend_url: Annotated[
        str,
        Variable(
            "BACKEND_URL", parse.http_url, "FastAPI backend base URL (/api/x goes to BACKEND_URL/x)"
        ),
    ] = "http://localhost:8000"
    backend_mode: Annotated[
        BackendMode,
        Variable(
            "BACKEND_MODE",
            parse.choice(BackendMode),
            "http (the real backend) or stub (built in, for development)",
        ),
    ] = "http"
    backend_timeout_ms: Annotated[
        int,
        Variable(
            "BACKEND_TIMEOUT", parse.whole(1, 3_600_000), "deadline of every backend call, ms"
        ),
    ] = 30_000
    end_retry_window_ms: Annotated[
        int,
        Variable(
            "END_RETRY_WINDOW",
            parse.whole(0, 86_400_000),
            "how long a failed session end is retried, ms",
        ),
    ] = 300_000
    jwt_leeway_ms: Annotated[
        int, Variable("JWT_LEEWAY", parse.whole(0, 600_000), "clock-skew allowance on exp, ms")
    ] = DEFAULT_LEEWAY_MS
    token_expiry_warning_ms: Annotated[
        int,
        Variable(
            "TOKEN_EXPIRY_WARNING",
            parse.whole(0, 86_400_000),
            "token_expiring this long before a token expires, ms",
        ),
    ] = 60_000
    ws_heartbeat_interval_ms: Annotated[
        int,
        Variable("WS_HEARTBEAT_INTERVAL", parse.whole(1, 3_600_000), "protocol ping interval, ms"),
    ] = 30_000
    max_message_bytes: Annotated[
        int,
        Variable(
            "MAX_MESSAGE_BYTES",
            parse.whole(1024, 1 << 30),
            "largest WebSocket frame (larger: close 1009)",
        ),
    ] = 3 << 20  # an app `audio` message: ~2.3 MB of m4a as base64
    max_audio_bytes: Annotated[
        int, Variable("MAX_AUDIO_BYTES", parse.whole(1, 1 << 31), "largest utterance")
    ] = 10_485_760
    reply_audio_max_bytes: Annotated[
        int, Variable("REPLY_AUDIO_MAX_BYTES", parse.whole(1, 1 << 30), "largest reply audio sent")
    ] = DEFAULT_MAX_REPLY_AUDIO_BYTES  # either form; as JSON 2.7 MiB, under WS_SEND_BUFFER_BYTES
    ws_per_message_deflate: Annotated[
        bool, Variable("WS_PER_MESSAGE_DEFLATE", parse.flag, "negotiate permessage-deflate")
    ] = False
    ws_engine: Annotated[
        WsEngine,
        Variable(
            "WS_ENGINE",
            parse.choice(WsEngine),
            "WebSocket protocol after the upgrade: uvicorn (websockets) or native",
        ),
    ] = "uvicorn"
    ws_message_rate: Annotated[
        int,
        Variable(
            "WS_MESSAGE_RATE",
            parse.whole(0, 1_000_000),
            "text messages/s per connection, burst 2 s (0: off)",
        ),
    ] = 50
    session_start_rate: Annotated[
        int,
        Variable(
            "SESSION_START_RATE",
            parse.whole(0, 1_000_000),
            "start_session per minute per user, burst a minute's (0: off)",
        ),
    ] = 20  # start_session per minute per user (per instance)
    ws_audio_rate: Annotated[
        int,
        Variable(
            "WS_AUDIO_RATE",
            parse.whole(0, 1 << 30),
            "binary bytes/s per connection, burst 2 s (0: off)",
        ),
    ] = 1 << 20
    ws_frame_rate: Annotated[
        int,
        Variable(
            "WS_FRAME_RATE",
            parse.whole(0, 1_000_000),
            "frames/s per connection, any kind, burst 2 s (0: off)",
        ),
    ] = 400  # frames per second per connection, any frame (0: no limit)
    ws_send_buffer_bytes: Annotated[
        int,
        Variable(
            "WS_SEND_BUFFER_BYTES",
            parse.whole(65536, 1 << 30),
            "unsent data per connection before it is let go",
        ),
    ] = 4 << 20
    ws_send_timeout_ms: Annotated[
        int,
        Variable(
            "WS_SEND_TIMEOUT",
            parse.whole(100, 3_600_000),
            "longest wait of one send on a client not reading, ms",
        ),
    ] = 10_000
    cors_origins: Annotated[
        tuple[str, ...],
        Variable(
            "CORS_ORIGINS", parse.origins, "allowed browser origins, comma-separated, * for any"
        ),
    ] = ("*",)
    trusted_proxies: Annotated[
        tuple[str, ...],
        Variable(
            "TRUSTED_PROXIES",
            parse.addresses,
            "peers (IPs or CIDR networks) whose X-Forwarded-* are believed",
            default_text="none",
        ),
    ] = ()
    log_level: Annotated[
        LogLevel, Variable("LOG_LEVEL", parse.log_level, "debug, info, warn, error")
    ] = "info"
    log_format: Annotated[
        LogFormat,
        Variable(
            "LOG_FORMAT",
            parse.choice(LogFormat),
            "json or console",
            default_text="console on a terminal, else json",
            on_terminal="console",
        ),
    ] = "json"
    shutdown_timeout_ms: Annotated[
        int,
        Variable(
            "SHUTDOWN_TIMEOUT",
            parse.whole(0, 600_000),
            "how long a graceful shutdown may take, ms",
        ),
    ] = 10_000
    http_header_timeout_ms: Annotated[
        int,
        Variable(
            "HTTP_HEADER_TIMEOUT",
            parse.whole(100, 600_000),
            "a request's line and headers must arrive within it, ms",
        ),
    ] = 10_000
    max_header_bytes: Annotated[
        int,
        Variable(
            "MAX_HEADER_BYTES",
            parse.whole(1024, 1 << 20),
            "largest total size of a request's headers (larger: 431)",
        ),
    ] = 32 * 1024
    redis_url: Annotated[
        str,
        Variable(
            "REDIS_URL",
            parse.redis_url,
            "Redis for the cluster (empty: one process)",
            default_text="empty",
            shown=parse.without_password,
            from_file=True,
        ),
    ] = ""  # empty: one process, the in-memory directory
    redis_key_prefix: Annotated[
        str,
        Variable("REDIS_KEY_PREFIX", parse.key_prefix, "prefix of every Redis key and channel"),
    ] = "kalami:"
    max_connections_per_user: Annotated[
        int,
        Variable(
            "MAX_CONNECTIONS_PER_USER",
            parse.whole(0, 1_000_000),
            "open sockets per user, cluster-wide (0: no cap)",
        ),
    ] = 20  # 0: no cap
    max_client_sockets: Annotated[
        int,
        Variable(
            "MAX_CLIENT_SOCKETS",
            parse.whole(0, 10_000_000),
            "client sockets per process past which a WebSocket handshake gets 503 "
            "(0: the open-file limit less what the process keeps for itself)",
        ),
    ] = 0  # 0: computed (adapters/capacity.py)
    push_api_key: Annotated[
        str,
        Variable(
            "PUSH_API_KEY",
            parse.push_key,
            "enables POST /internal/push (16+ characters)",
            default_text="empty: disabled",
            shown=parse.length_only,
            from_file=True,
        ),
    ] = ""  # empty: POST /internal/push is disabled (404)
    push_previous_api_key: Annotated[
        str,
        Variable(
            "PUSH_PREVIOUS_API_KEY",
            parse.push_key,
            "during a rotation, the former PUSH_API_KEY, still accepted (16+ characters)",
            default_text="empty: none",
            shown=parse.length_only,
            from_file=True,
        ),
    ] = ""  # empty: only PUSH_API_KEY opens the push route
    workers: Annotated[
        int,
        Variable(
            "WORKERS",
            parse.whole(1, 256),
            "worker processes on one port (more than 1 needs REDIS_URL)",
        ),
    ] = 1
    resume_grace_ms: Annotated[
        int,
        Variable(
            "RESUME_GRACE",
            parse.whole(0, 86_400_000),
            "how long a dropped connection's session waits for a resume, ms",
        ),
    ] = 30_000  # 0: a dropped connection ends its session at once
    playground: Annotated[
        bool | None,
        Variable(
            "PLAYGROUND",
            parse.flag,
            "serve the browser playground at /playground",
            default_text="true in stub mode, else false",
        ),
    ] = None  # None: on with the stub backend, off with the real one
    utterance_upload: Annotated[
        UtteranceUpload,
        Variable(
            "UTTERANCE_UPLOAD",
            parse.choice(UtteranceUpload),
            "stream (to the backend while the learner speaks) or buffer (upload after stop)",
        ),
    ] = "stream"
    api_connections_per_client: Annotated[
        int,
        Variable(
            "API_CONNECTIONS_PER_CLIENT",
            parse.whole(0, 1_000_000),
            "concurrent /api requests per client address (0: no cap)",
        ),
    ] = 128  # concurrent /api exchanges per client (0: no cap)
    api_body_min_rate: Annotated[
        int,
        Variable(
            "API_BODY_MIN_RATE",
            parse.whole(0, 1 << 30),
            "bytes/s an /api request body must keep up with (0: off)",
        ),
    ] = 1024  # bytes/s an /api request body must keep up with (0: off)
    api_body_rate_grace_ms: Annotated[
        int,
        Variable(
            "API_BODY_RATE_GRACE",
            parse.whole(1000, 3_600_000),
            "how far behind that pace an /api body may fall, ms",
        ),
    ] = 10_000  # how far behind that pace a body may fall

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


def _rows() -> tuple[Setting, ...]:
    """Each field of ``Settings`` with the variable it is annotated with, in field order."""
    rows = []
    for field in msgspec.structs.fields(Settings):
        variables = [
            meta for meta in get_args(field.type)[1:] if isinstance(meta, Variable | Secret)
        ]
        if len(variables) != 1:
            raise TypeError(f"Settings.{field.name} needs one Variable in its annotation")
        rows.append(Setting(field.name, variables[0], field.default))
    return tuple(rows)


TABLE: Final = _rows()

# (name, meaning, default) of every variable, in the table's order.
ENVIRONMENT: Final = tuple((row.name, row.variable.help, row.default_text) for row in TABLE)


def environment_help() -> str:
    """Every variable, what it means and its default: `kalami-gateway serve --help` prints it."""
    width = max(len(name) for name, _, _ in ENVIRONMENT)
    secrets = ", ".join(row.name for row in TABLE if row.variable.from_file)
    lines = [
        f"secrets ({secrets}): or NAME_FILE=<path>, the value read from that file at start",
        "",
        "environment variables:",
    ]
    lines += [
        f"  {name:<{width}}  {meaning} (default: {default})"
        for name, meaning, default in ENVIRONMENT
    ]
    return "\n".join(lines)

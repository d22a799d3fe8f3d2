"""The parsers of the settings table: how a variable's text becomes its value, each kind of
value with its range (``parse.whole(0, 65535)``).

A parser raises ``ValueError`` saying what it expected; the message adds the variable's name
and the value it got, or for a secret only what may be repeated of it (``without_password``,
``length_only``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, Final, get_args
from urllib.parse import urlsplit

MIN_PUSH_KEY_LENGTH: Final = 16


def whole(low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``, both included."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def choice(literal: Any) -> Callable[[str], Any]:
    """One of a ``Literal`` type's words, in any case: ``choice(BackendMode)``."""
    choices: tuple[str, ...] = get_args(literal)

    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return parse


def log_level(raw: str) -> str:
    """``warn`` is ``warning``."""
    value = raw.lower()
    value = {"warn": "warning"}.get(value, value)
    if value not in ("debug", "info", "warning", "error"):
        raise ValueError("expected one of debug, info, warn, warning, error")
    return value


def flag(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def host(raw: str) -> str:
    if any(c.isspace() for c in raw) or "/" in raw:
        raise ValueError("expected a host name or IP address")
    return raw


def http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw) <= len("https://"):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def redis_url(raw: str) -> str:
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


def key_prefix(raw: str) -> str:
    if any(c.isspace() for c in raw) or len(raw) > 64:
        raise ValueError("expected up to 64 characters without spaces")
    return raw


def secret_of(min_length: int) -> Callable[[str], str]:
    """A secret of at least ``min_length`` characters, taken as written."""

    def secret(raw: str) -> str:
        if len(raw) < min_length:
            raise ValueError(f"expected at least {min_length} characters")
        return raw

    return secret


def push_key(raw: str) -> str:
    if len(raw) < MIN_PUSH_KEY_LENGTH:
        raise ValueError(f"expected at least {MIN_PUSH_KEY_LENGTH} characters")
    return raw


def addresses(raw: str) -> tuple[str, ...]:
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


def origins(raw: str) -> tuple[str, ...]:
    listed = _list(raw)
    for origin in listed:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(
                f"each origin must be * or start with http:// or https:// ({origin!r})"
            )
    return tuple(origin.rstrip("/") for origin in listed)


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def without_password(raw: str) -> str:
    """A URL for an error message: its password is not repeated."""
    parts = urlsplit(raw)
    if parts.password is None:
        return repr(raw)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(parts._replace(netloc=netloc).geturl())


def length_only(raw: str) -> str:
    """A key for an error message: only its length is repeated."""
    return f"{len(raw)} characters"

"""The auth policy: what makes a WebSocket token acceptable, and which close code a failure gets;
where a handshake's token may come from, and the protocol version it is answered with."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.ports import InvalidTokenError, TokenDecoder

MAX_TOKEN_LENGTH: Final = 8192
# The clock-skew allowance on exp unless JWT_LEEWAY says otherwise (the one default).
CLOCK_LEEWAY_SECONDS: Final = 10.0
# The last second of year 9999: a NumericDate beyond it is a forgery or a bug, not a date.
MAX_NUMERIC_DATE: Final = 253_402_300_799
# The site a scheme names: a WebSocket opened from http://h:p goes to ws://h:p, the same site.
_SITE_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# The protocol version the gateway speaks, as a WebSocket subprotocol (docs/protocol.md §1).
PROTOCOL_VERSION: Final = "kalami.v1"
# A browser can set no header on a WebSocket but Sec-WebSocket-Protocol, so its token comes
# as an entry of that list, ``bearer.<token>``, beside PROTOCOL_VERSION; never answered back.
BEARER_SUBPROTOCOL: Final = "bearer."


class CloseCode(enum.IntEnum):
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    SERVICE_RESTART = 1012
    AUTHENTICATION_REQUIRED = 4001
    INVALID_TOKEN = 4002
    TOKEN_EXPIRED = 4003
    TOO_MANY_CONNECTIONS = 4004
    RESUMED_ELSEWHERE = 4007
    ORIGIN_NOT_ALLOWED = 4008


# Why a refresh was refused: its error's ``reason`` (docs/protocol.md, §4).
RefreshRefusal = Literal["invalid_token", "other_user"]


class Principal(msgspec.Struct, frozen=True):
    """Who is on the other end of a connection, and until when."""

    user_id: str
    expires_at: float


class AuthFailure(msgspec.Struct, frozen=True):
    """A refused token: the close code and reason the client sees, and why (for the log)."""

    code: CloseCode
    reason: str
    why: str


def _invalid(why: str) -> AuthFailure:
    return AuthFailure(CloseCode.INVALID_TOKEN, "Invalid token", why)


AUTHENTICATION_REQUIRED: Final = AuthFailure(
    CloseCode.AUTHENTICATION_REQUIRED, "Authentication required", "no token"
)
TOKEN_EXPIRED: Final = AuthFailure(
    CloseCode.TOKEN_EXPIRED, "Token expired", "expired while connected"
)
ORIGIN_NOT_ALLOWED: Final = AuthFailure(
    CloseCode.ORIGIN_NOT_ALLOWED, "Origin not allowed", "origin not in CORS_ORIGINS"
)


def numeric_date(value: object) -> int | None:
    """A JWT NumericDate as whole seconds, or None unless it is a finite integer in range.

    NaN never compares as expired and Infinity never expires; a 400-digit integer overflows
    every float it meets later. A whole-valued float (``1.7e9``) is an integer and is kept.
    """
    if isinstance(value, bool):  # an int subclass, never a date
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_NUMERIC_DATE:
        return None
    return value


def same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names the site a request was sent to: the same scheme,
    host and port as ``scheme`` (``http``/``https``, or ``ws``/``wss``, the same sites) and
    ``host`` (the request's ``name[:port]``).

    Default ports are filled in and names compared case-insensitively, as browsers do.
    ``null`` (a sandboxed frame, a ``file:`` page, a request a privacy rule stripped) and
    anything malformed is no site's.
    """
    origin_scheme, separator, authority = origin.partition("://")
    if not separator:
        return False
    theirs = _site(origin_scheme, authority)
    return theirs is not None and theirs == _site(scheme, host)


def _site(scheme: str, authority: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a scheme and a ``name[:port]``; None unless well formed."""
    site_scheme = _SITE_SCHEMES.get(scheme.lower())
    if site_scheme is None or not authority or any(c in authority for c in "/?#@\\ "):
        return None
    if authority.startswith("["):  # an IPv6 literal: the port comes after the bracket
        name, bracket, rest = authority.partition("]")
        name += bracket
        if not bracket or (rest and not rest.startswith(":")):
            return None
        colon, port = rest[:1], rest[1:]
    else:
        name, colon, port = authority.partition(":")
    if not name:
        return None
    if not colon:
        return site_scheme, name.lower(), _DEFAULT_PORTS[site_scheme]
    if not (port.isdigit() and port.isascii() and len(port) <= 5 and int(port) <= 65535):
        return None
    return site_scheme, name.lower(), int(port)


def answered_subprotocol(offered: Iterable[str]) -> str | None:
    """The subprotocol a handshake is answered with: PROTOCOL_VERSION if the client offered
    it, else none (a client that offers nothing, or only versions the gateway does not
    speak, is answered as it always was: without the header).

    Never a ``bearer.`` entry, even offered alone: answering with it would echo the token
    into the response (and every log of it). A browser that offers subprotocols fails a
    handshake answered with none, so browsers must offer PROTOCOL_VERSION beside the token.
    """
    return PROTOCOL_VERSION if PROTOCOL_VERSION in offered else None


def bearer_credentials(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (the scheme in any case); None
    for another scheme: a proxy's own ``Basic`` credentials are not the gateway's to judge,
    and must not break ``?token=``."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def handshake_token(
    query: str | None, authorization: Iterable[str], subprotocols: Iterable[str]
) -> str | None:
    """The token a WebSocket handshake carries: the first of ``?token=`` (``query``), an
    ``Authorization: Bearer`` value (in the order given) and a ``bearer.<token>`` entry of
    ``Sec-WebSocket-Protocol`` (in the order offered); the others are not looked at. None
    without one; an empty one is none.

    A fixed precedence, not a refusal of a token sent two ways, and ``?token=`` first: a
    request that connected before the header ways existed connects as it did, whatever else
    it carries (an HTTP library or a proxy that adds an ``Authorization: Bearer`` of its own
    to every request; tests/integration/test_websocket.py sends one beside ``?token=``).
    Nothing is gained by refusing: a client holding two tokens may use either anyway.
    """
    if query:
        return query
    for value in authorization:
        token = bearer_credentials(value)
        if token:
            return token
    for entry in subprotocols:
        if entry.startswith(BEARER_SUBPROTOCOL) and len(entry) > len(BEARER_SUBPROTOCOL):
            return entry[len(BEARER_SUBPROTOCOL) :]
    return None


class AuthPolicy:
    """Turns a token into a Principal or an AuthFailure. Signature checks are the decoder's."""

    def __init__(
        self,
        decoder: TokenDecoder,
        leeway_seconds: float = CLOCK_LEEWAY_SECONDS,
        allowed_origins: frozenset[str] | None = None,
    ) -> None:
        """``allowed_origins``: the browser origins that may open a socket; None for any."""
        self._decoder = decoder
        self._leeway = leeway_seconds
        self._origins = allowed_origins

    def authenticate(self, token: str | None, now: float) -> Principal | AuthFailure:
        if not token:
            return AUTHENTICATION_REQUIRED
        if len(token) > MAX_TOKEN_LENGTH:
            return _invalid(f"token longer than {MAX_TOKEN_LENGTH} characters")
        try:
            claims = self._decoder.decode(token)
        except InvalidTokenError as exc:
            return _invalid(str(exc))
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return _invalid("no sub claim, or not a non-empty string")
        exp = numeric_date(claims.get("exp"))
        if exp is None:
            return _invalid("no exp claim, or not an integer date in range")
        for optional in ("nbf", "iat"):
            if optional in claims and numeric_date(claims[optional]) is None:
                return _invalid(f"{optional} claim not an integer date in range")
        if self.has_expired(float(exp), now):
            return _invalid("already expired")
        return Principal(user_id=sub, expires_at=float(exp))

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether a handshake's Origin may open a socket (no Origin: not a browser; allowed).

        A page of the gateway's own (the playground) is always allowed, whatever
        CORS_ORIGINS says: the adapter that sees the handshake's Host asks ``same_origin``
        and hands such a handshake over with no Origin to judge.
        """
        return origin is None or self._origins is None or origin in self._origins

    def refresh(self, user_id: str, token: str, now: float) -> Principal | p.Problem:
        """The principal a refresh token gives a connection of ``user_id``, or what to tell
        the client when it does not (``refresh_refused``; the old token then stays in force)."""
        verdict = self.authenticate(token, now)
        if isinstance(verdict, AuthFailure):
            return _refresh_refused(
                f"The refresh token is not valid ({verdict.why}); the current token stays in "
                "force: send a valid token of the same user.",
                "invalid_token",
            )
        if verdict.user_id != user_id:
            return _refresh_refused(
                "The refresh token belongs to another user; a connection keeps its user. "
                "The current token stays in force.",
                "other_user",
            )
        return verdict

    def has_expired(self, expires_at: float, now: float) -> bool:
        return now > expires_at + self._leeway

    def expiry_due(self, expires_at: float) -> float:
        """The moment from which ``has_expired`` says yes (give or take a tick)."""
        return expires_at + self._leeway


def _refresh_refused(message: str, reason: RefreshRefusal) -> p.Problem:
    return p.Problem(message, p.ErrorCode.REFRESH_REFUSED, reason=reason)

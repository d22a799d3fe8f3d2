"""The auth policy: what makes a WebSocket token acceptable, and which close code a failure gets."""

from __future__ import annotations

import enum
import math
from typing import Final

import msgspec

from kalami_gateway.domain.ports import InvalidTokenError, TokenDecoder

MAX_TOKEN_LENGTH: Final = 8192
# The clock-skew allowance on exp unless JWT_LEEWAY says otherwise (the one default).
CLOCK_LEEWAY_SECONDS: Final = 10.0
# The last second of year 9999: a NumericDate beyond it is a forgery or a bug, not a date.
MAX_NUMERIC_DATE: Final = 253_402_300_799


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
        """Whether a handshake's Origin may open a socket (no Origin: not a browser; allowed)."""
        return origin is None or self._origins is None or origin in self._origins

    def refresh(self, user_id: str, token: str, now: float) -> Principal | str:
        """The principal a refresh token gives a connection of ``user_id``, or what to tell
        the client when it does not (the old token then stays in force)."""
        verdict = self.authenticate(token, now)
        if isinstance(verdict, AuthFailure):
            return (
                f"The refresh token is not valid ({verdict.why}); the current token stays in "
                "force: send a valid token of the same user."
            )
        if verdict.user_id != user_id:
            return (
                "The refresh token belongs to another user; a connection keeps its user. "
                "The current token stays in force."
            )
        return verdict

    def has_expired(self, expires_at: float, now: float) -> bool:
        return now > expires_at + self._leeway

    def expiry_due(self, expires_at: float) -> float:
        """The moment from which ``has_expired`` says yes (give or take a tick)."""
        return expires_at + self._leeway

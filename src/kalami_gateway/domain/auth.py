"""The auth policy: what makes a WebSocket token acceptable, and which close code a failure gets."""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from kalami_gateway.domain.ports import InvalidTokenError, TokenDecoder

MAX_TOKEN_LENGTH: Final = 8192
CLOCK_LEEWAY_SECONDS: Final = 30.0


class CloseCode(enum.IntEnum):
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    AUTHENTICATION_REQUIRED = 4001
    INVALID_TOKEN = 4002
    TOKEN_EXPIRED = 4003


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


class AuthPolicy:
    """Turns a token into a Principal or an AuthFailure. Signature checks are the decoder's."""

    def __init__(self, decoder: TokenDecoder, leeway_seconds: float = CLOCK_LEEWAY_SECONDS) -> None:
        self._decoder = decoder
        self._leeway = leeway_seconds

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
        exp = claims.get("exp")
        # bool is an int subclass; a string exp is refused rather than coerced.
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return _invalid("no exp claim, or not a number")
        if self.has_expired(float(exp), now):
            return _invalid("already expired")
        return Principal(user_id=sub, expires_at=float(exp))

    def has_expired(self, expires_at: float, now: float) -> bool:
        return now > expires_at + self._leeway

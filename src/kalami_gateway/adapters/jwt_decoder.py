"""Token signature checks with pyjwt, HS256 only."""

from __future__ import annotations

from collections.abc import Mapping

import jwt

from kalami_gateway.domain.ports import InvalidTokenError, TokenDecoder

ALGORITHM = "HS256"


class PyJwtDecoder(TokenDecoder):
    """Verifies HS256 signatures; ``alg: none`` and every other algorithm are refused.

    Expiry is left to the auth policy, which reads time from the Clock port; pyjwt is only
    asked to insist that ``exp`` and ``sub`` are present.
    """

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def decode(self, token: str) -> Mapping[str, object]:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"], "verify_exp": False, "verify_sub": False},
            )
        except jwt.InvalidTokenError as exc:
            raise InvalidTokenError(f"{type(exc).__name__}: {exc}") from None
        return claims


def mint_token(secret: str, subject: str, expires_at: float) -> str:
    """A token this gateway accepts (for development and tests)."""
    return jwt.encode({"sub": subject, "exp": int(expires_at)}, secret, algorithm=ALGORITHM)

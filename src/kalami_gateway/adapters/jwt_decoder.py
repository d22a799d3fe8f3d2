"""Token signature checks with pyjwt, HS256 only."""

from __future__ import annotations

from collections.abc import Mapping

import jwt
import msgspec

from kalami_gateway.domain.ports import InvalidTokenError, SessionCredentials, TokenDecoder

ALGORITHM = "HS256"
# How long a bearer made for one end call is valid.
END_BEARER_SECONDS = 300


class PyJwtDecoder(TokenDecoder):
    """Verifies HS256 signatures; ``alg: none`` and every other algorithm are refused.

    Expiry is left to the auth policy, which reads time from the Clock port; pyjwt is only
    asked to insist that ``exp`` and ``sub`` are present.

    During a rotation (``previous``: JWT_PREVIOUS_SECRET) a token whose signature does not
    match JWT_SECRET is tried with the former secret too; nothing else about it differs.
    """

    def __init__(self, secret: str, previous: str = "") -> None:
        self._secrets = (secret, previous) if previous else (secret,)

    def decode(self, token: str) -> Mapping[str, object]:
        for secret in self._secrets[:-1]:
            try:
                return self._decode(token, secret)
            except InvalidTokenError as exc:
                if not isinstance(exc.__cause__, jwt.InvalidSignatureError):
                    raise
        return self._decode(token, self._secrets[-1])

    @staticmethod
    def _decode(token: str, secret: str) -> Mapping[str, object]:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"], "verify_exp": False, "verify_sub": False},
            )
        except jwt.InvalidSignatureError as exc:
            raise InvalidTokenError(f"{type(exc).__name__}: {exc}") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidTokenError(f"{type(exc).__name__}: {exc}") from None
        return claims


class ResignedCredentials(SessionCredentials):
    """Ends sessions with the learner's own claims, signed again with JWT_SECRET for a few
    minutes (``iat`` now, ``exp`` now + 5 min, no ``nbf``).

    The gateway accepts only tokens signed with JWT_SECRET, so the backend that issued them
    signs with the same secret (HS256 is symmetric) and accepts these as the learner's: a
    session parked past its token's expiry (the usual case after a 4003 close) or an end call
    retried for minutes still ends. The gateway never needs a credential of its own, and the
    session store keeps the claims (who the learner is), never a token that works."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def claims_of(self, token: str) -> str:
        # Verified when the connection was accepted; only its claims are wanted here.
        claims = jwt.decode(token, options={"verify_signature": False})
        return msgspec.json.encode(claims).decode()

    def bearer(self, claims: str, now: float) -> str:
        try:
            values = msgspec.json.decode(claims)
        except msgspec.DecodeError:
            raise ValueError("the kept claims are not JSON") from None
        if not isinstance(values, dict):
            raise ValueError("the kept claims are not an object")
        values.pop("nbf", None)
        values["iat"] = int(now)
        values["exp"] = int(now) + END_BEARER_SECONDS
        return jwt.encode(values, self._secret, algorithm=ALGORITHM)


def mint_token(secret: str, subject: str, expires_at: float) -> str:
    """A token this gateway accepts (for development and tests)."""
    return jwt.encode({"sub": subject, "exp": int(expires_at)}, secret, algorithm=ALGORITHM)

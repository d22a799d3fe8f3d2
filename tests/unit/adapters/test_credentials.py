"""Ending a session after the learner's token lapsed: its claims, signed again for minutes."""

from __future__ import annotations

import time

import jwt
import pytest

from kalami_gateway.adapters.jwt_decoder import (
    END_BEARER_SECONDS,
    PyJwtDecoder,
    ResignedCredentials,
)

SECRET = "credentials-test-secret-0123456789abcdef"


def test_a_lapsed_tokens_claims_make_a_bearer_the_issuer_accepts() -> None:
    issued = time.time() - 7200
    token = jwt.encode(
        {
            "sub": "alice@example.com",
            "exp": int(issued) + 1800,
            "iat": int(issued),
            "nbf": int(issued),
            "type": "access",
            "uid": 7,
        },
        SECRET,
        algorithm="HS256",
    )
    credentials = ResignedCredentials(SECRET)
    claims = credentials.claims_of(token)
    assert token not in claims  # what is kept is not a credential
    now = time.time()
    bearer = credentials.bearer(claims, now)
    # As the backend checks it: its secret, expiry verified (no leeway).
    decoded = jwt.decode(bearer, SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "alice@example.com"
    assert (decoded["type"], decoded["uid"]) == ("access", 7)
    assert decoded["iat"] == int(now)
    assert decoded["exp"] == int(now) + END_BEARER_SECONDS
    assert "nbf" not in decoded
    assert PyJwtDecoder(SECRET).decode(bearer)["sub"] == "alice@example.com"


def test_a_bearer_is_signed_with_the_gateways_secret_only() -> None:
    claims = ResignedCredentials(SECRET).claims_of(
        jwt.encode({"sub": "bob", "exp": 1}, SECRET, algorithm="HS256")
    )
    bearer = ResignedCredentials(SECRET).bearer(claims, time.time())
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(bearer, "another-secret-0123456789abcdefghij", algorithms=["HS256"])


@pytest.mark.parametrize("kept", ["", "None", "[1]", "{not json"])
def test_unusable_kept_claims_are_a_value_error(kept: str) -> None:
    with pytest.raises(ValueError, match="claims"):
        ResignedCredentials(SECRET).bearer(kept, time.time())

"""JWT_PREVIOUS_SECRET: during a rotation, tokens signed with the former secret still pass."""

from __future__ import annotations

import time

import jwt
import pytest

from kalami_gateway.adapters.jwt_decoder import PyJwtDecoder, mint_token
from kalami_gateway.domain.ports import InvalidTokenError

NEW = "n" * 32
OLD = "o" * 32
OTHER = "x" * 32


def token(secret: str, **claims: object) -> str:
    return jwt.encode({"sub": "u", "exp": int(time.time()) + 60, **claims}, secret, "HS256")


def test_without_a_previous_secret_only_the_current_one_passes() -> None:
    decoder = PyJwtDecoder(NEW)
    assert decoder.decode(token(NEW))["sub"] == "u"
    with pytest.raises(InvalidTokenError, match="InvalidSignatureError"):
        decoder.decode(token(OLD))


def test_during_a_rotation_both_pass_and_nothing_else() -> None:
    decoder = PyJwtDecoder(NEW, previous=OLD)
    assert decoder.decode(token(NEW))["sub"] == "u"
    assert decoder.decode(token(OLD))["sub"] == "u"
    with pytest.raises(InvalidTokenError, match="InvalidSignatureError"):
        decoder.decode(token(OTHER))


def test_the_previous_secret_is_not_a_way_around_the_other_checks() -> None:
    decoder = PyJwtDecoder(NEW, previous=OLD)
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, NEW, "HS256")
    with pytest.raises(InvalidTokenError, match="MissingRequiredClaimError"):
        decoder.decode(no_sub)
    none_alg = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, "", algorithm="none")
    with pytest.raises(InvalidTokenError):
        decoder.decode(none_alg)
    with pytest.raises(InvalidTokenError):
        decoder.decode("not.a.jwt")


def test_what_the_gateway_signs_uses_the_current_secret() -> None:
    minted = mint_token(NEW, "u", time.time() + 60)
    assert PyJwtDecoder(NEW).decode(minted)["sub"] == "u"
    with pytest.raises(InvalidTokenError):
        PyJwtDecoder(OLD).decode(minted)

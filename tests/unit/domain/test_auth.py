"""The auth policy with the real pyjwt decoder: which tokens pass, which close code the rest get."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from kalami_gateway.adapters.jwt_decoder import PyJwtDecoder, mint_token
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.auth import (
    MAX_TOKEN_LENGTH,
    AuthFailure,
    AuthPolicy,
    CloseCode,
    Principal,
    same_origin,
)
from tests.forged_tokens import signed as forged
from tests.unit.fakes import FakeDecoder

SECRET = "unit-test-secret-" + "0123456789abcdef" * 4
NOW = 1_700_000_000.0


@pytest.fixture
def policy() -> AuthPolicy:
    return AuthPolicy(PyJwtDecoder(SECRET), leeway_seconds=10)


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_valid_token_gives_the_principal(policy: AuthPolicy) -> None:
    token = mint_token(SECRET, "user-1", NOW + 60)
    assert policy.authenticate(token, NOW) == Principal("user-1", NOW + 60)


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_4001(policy: AuthPolicy, token: str | None) -> None:
    result = policy.authenticate(token, NOW)
    assert isinstance(result, AuthFailure)
    assert (result.code, result.reason) == (
        CloseCode.AUTHENTICATION_REQUIRED,
        "Authentication required",
    )


def hs512() -> str:
    return jwt.encode({"sub": "u", "exp": int(NOW + 60)}, SECRET, algorithm="HS512")


def alg_none() -> str:
    return b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "u", "exp": NOW + 60}) + "."


def string_exp() -> str:
    return jwt.encode({"sub": "u", "exp": str(int(NOW + 60))}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(mint_token(SECRET, "u", NOW - 60), id="expired"),
        pytest.param(mint_token("another-secret-" + "x" * 64, "u", NOW + 60), id="wrong-secret"),
        pytest.param(alg_none(), id="alg-none"),
        pytest.param(hs512(), id="hs512"),
        pytest.param(jwt.encode({"exp": int(NOW + 60)}, SECRET, algorithm="HS256"), id="no-sub"),
        pytest.param(jwt.encode({"sub": "u"}, SECRET, algorithm="HS256"), id="no-exp"),
        pytest.param(
            jwt.encode({"sub": 42, "exp": int(NOW + 60)}, SECRET, algorithm="HS256"), id="int-sub"
        ),
        pytest.param(
            jwt.encode({"sub": "", "exp": int(NOW + 60)}, SECRET, algorithm="HS256"), id="empty-sub"
        ),
        pytest.param(string_exp(), id="string-exp"),
        pytest.param("garbage", id="garbage"),
        pytest.param("a.b.c", id="three-garbage-segments"),
        pytest.param("x" * (MAX_TOKEN_LENGTH + 1), id="too-long"),
    ],
)
def test_invalid_tokens_are_4002(policy: AuthPolicy, token: str) -> None:
    result = policy.authenticate(token, NOW)
    assert isinstance(result, AuthFailure)
    assert (result.code, result.reason) == (CloseCode.INVALID_TOKEN, "Invalid token")


def test_an_oversized_token_is_refused_before_decoding() -> None:
    decoder = FakeDecoder()
    token = decoder.issue("t" * (MAX_TOKEN_LENGTH + 1), sub="u", exp=NOW + 60)
    result = AuthPolicy(decoder).authenticate(token, NOW)
    assert isinstance(result, AuthFailure)
    assert "longer" in result.why


def test_leeway_tolerates_a_little_clock_skew(policy: AuthPolicy) -> None:
    token = mint_token(SECRET, "u", NOW - 5)
    assert isinstance(policy.authenticate(token, NOW), Principal)
    assert isinstance(policy.authenticate(token, NOW + 6), AuthFailure)


def test_expiry_while_connected_is_judged_with_the_same_leeway(policy: AuthPolicy) -> None:
    assert not policy.has_expired(NOW, NOW + 10)
    assert policy.has_expired(NOW, NOW + 10.5)


def test_a_bool_exp_is_not_a_number() -> None:
    decoder = FakeDecoder()
    token = decoder.issue("t", sub="u", exp=True)
    assert isinstance(AuthPolicy(decoder).authenticate(token, NOW), AuthFailure)


def signed(payload: bytes) -> str:
    """A correctly signed HS256 token over raw JSON (NaN, Infinity, huge numbers included)."""
    return forged(payload, SECRET)


FAR = b"%d" % (NOW + 600)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"sub":"u","exp":NaN}', id="exp-nan"),
        pytest.param(b'{"sub":"u","exp":Infinity}', id="exp-infinity"),
        pytest.param(b'{"sub":"u","exp":-Infinity}', id="exp-minus-infinity"),
        pytest.param(b'{"sub":"u","exp":1e400}', id="exp-1e400"),
        pytest.param(b'{"sub":"u","exp":1' + b"0" * 400 + b"}", id="exp-10^400"),
        pytest.param(b'{"sub":"u","exp":' + FAR + b".5}", id="exp-fraction"),
        pytest.param(b'{"sub":"u","exp":253402300800}', id="exp-after-9999"),
        pytest.param(b'{"sub":"u","exp":' + FAR + b',"nbf":NaN}', id="nbf-nan"),
        pytest.param(b'{"sub":"u","exp":' + FAR + b',"iat":Infinity}', id="iat-infinity"),
        pytest.param(b'{"sub":"u","exp":' + FAR + b',"iat":1' + b"0" * 400 + b"}", id="iat-huge"),
    ],
)
def test_dates_must_be_finite_integers_in_range(policy: AuthPolicy, payload: bytes) -> None:
    result = policy.authenticate(signed(payload), NOW)
    assert isinstance(result, AuthFailure)
    assert result.code == CloseCode.INVALID_TOKEN


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": float("nan")}, "exp"),
        ({"exp": float("inf")}, "exp"),
        ({"exp": 10**400}, "exp"),
        ({"exp": NOW + 60, "nbf": float("nan")}, "nbf"),
        ({"exp": NOW + 60, "iat": True}, "iat"),
    ],
)
def test_the_policy_checks_dates_whatever_the_decoder_let_through(
    claims: dict[str, object], why: str
) -> None:
    decoder = FakeDecoder()
    token = decoder.issue("t", sub="u", **claims)
    result = AuthPolicy(decoder).authenticate(token, NOW)
    assert isinstance(result, AuthFailure)
    assert result.why.startswith("no exp" if why == "exp" else why)


def test_a_whole_valued_float_exp_is_an_integer(policy: AuthPolicy) -> None:
    token = signed(b'{"sub":"u","exp":' + FAR + b".0}")
    assert policy.authenticate(token, NOW) == Principal("u", NOW + 600)


def test_origins() -> None:
    anywhere = AuthPolicy(FakeDecoder())
    listed = AuthPolicy(FakeDecoder(), allowed_origins=frozenset({"https://app.test"}))
    assert anywhere.origin_allowed("https://evil.test")
    assert listed.origin_allowed("https://app.test")
    assert listed.origin_allowed(None)  # not a browser
    assert not listed.origin_allowed("https://evil.test")
    assert not listed.origin_allowed("null")


@pytest.mark.parametrize(
    ("origin", "scheme", "host"),
    [
        ("http://127.0.0.1:3000", "ws", "127.0.0.1:3000"),  # the playground's own socket
        ("http://127.0.0.1:3000", "http", "127.0.0.1:3000"),  # its token request
        ("https://gw.example", "wss", "gw.example"),
        ("https://gw.example", "wss", "gw.example:443"),  # default ports filled in
        ("http://gw.example:80", "ws", "gw.example"),
        ("https://GW.Example", "wss", "gw.example"),  # names compare case-insensitively
        ("HTTPS://gw.example", "WSS", "GW.EXAMPLE"),
        ("http://[::1]:3000", "ws", "[::1]:3000"),
        ("http://[::1]", "http", "[::1]:80"),
    ],
)
def test_a_page_of_the_site_a_request_was_sent_to_is_same_origin(
    origin: str, scheme: str, host: str
) -> None:
    assert same_origin(origin, scheme, host)


@pytest.mark.parametrize(
    ("origin", "scheme", "host"),
    [
        ("http://127.0.0.1:3001", "ws", "127.0.0.1:3000"),  # another port
        ("https://127.0.0.1:3000", "ws", "127.0.0.1:3000"),  # another scheme
        ("http://gw.example", "wss", "gw.example"),  # http page, socket sent over TLS
        ("http://localhost:3000", "ws", "127.0.0.1:3000"),  # another name for the same host
        ("https://gw.example.evil.test", "wss", "gw.example"),
        ("https://evil.test#gw.example", "wss", "gw.example"),
        ("https://user@gw.example", "wss", "gw.example"),
        ("https://gw.example/", "wss", "gw.example"),
        ("null", "ws", "null"),
        ("", "ws", "127.0.0.1:3000"),
        ("gw.example", "wss", "gw.example"),
        ("ftp://gw.example", "ftp", "gw.example"),
        ("https://gw.example:99999", "wss", "gw.example:99999"),
        ("https://gw.example:x", "wss", "gw.example:x"),
        ("https://gw.example:", "wss", "gw.example:"),
        ("http://[::1]3000", "ws", "[::1]3000"),
        ("http://[::1:3000", "ws", "[::1:3000"),
        ("https://:443", "wss", ":443"),
        ("http://127.0.0.1:3000", "ws", ""),
    ],
)
def test_another_site_or_anything_malformed_is_not_same_origin(
    origin: str, scheme: str, host: str
) -> None:
    assert not same_origin(origin, scheme, host)


def test_a_refresh_of_the_same_user_gives_the_new_expiry(policy: AuthPolicy) -> None:
    fresh = mint_token(SECRET, "u", NOW + 7200)
    assert policy.refresh("u", fresh, NOW) == Principal("u", NOW + 7200)


def test_a_refresh_of_another_user_or_an_invalid_token_is_refused(policy: AuthPolicy) -> None:
    other = policy.refresh("u", mint_token(SECRET, "someone-else", NOW + 7200), NOW)
    assert isinstance(other, p.Problem)
    assert "another user" in other.message
    assert (other.code, other.reason) == ("refresh_refused", "other_user")
    for bad in ("garbage", mint_token(SECRET, "u", NOW - 600), hs512()):
        refused = policy.refresh("u", bad, NOW)
        assert isinstance(refused, p.Problem)
        assert "not valid" in refused.message
        assert (refused.code, refused.reason) == ("refresh_refused", "invalid_token")

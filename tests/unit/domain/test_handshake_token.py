"""Where a handshake's token may come from (``?token=``, ``Authorization: Bearer``, a
``bearer.`` subprotocol entry; of several, the first in that order), and the subprotocol the
handshake is answered with: ``kalami.v1`` if offered, never a bearer entry."""

from __future__ import annotations

import re

import pytest

from kalami_gateway.adapters.jwt_decoder import mint_token
from kalami_gateway.domain.auth import (
    PROTOCOL_VERSION,
    answered_subprotocol,
    bearer_credentials,
    handshake_token,
)

SECRET = "unit-test-secret-" + "0123456789abcdef" * 4
NOW = 1_700_000_000.0
JWT = mint_token(SECRET, "user-1", NOW + 60)
# RFC 7230's tchar: what a Sec-WebSocket-Protocol entry may hold.
TOKEN_CHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@pytest.mark.parametrize(
    ("query", "authorization", "subprotocols"),
    [
        (JWT, [], []),
        (None, [f"Bearer {JWT}"], []),
        (None, [f"bearer {JWT}"], []),  # the scheme in any case
        (None, [f"BEARER   {JWT}  "], []),
        (None, [], [f"bearer.{JWT}"]),
        (None, [], [PROTOCOL_VERSION, f"bearer.{JWT}"]),
        (None, [], [f"bearer.{JWT}", PROTOCOL_VERSION]),  # either order
        (None, [f"Bearer {JWT}"], [PROTOCOL_VERSION]),
        (JWT, [], [PROTOCOL_VERSION]),
        (JWT, ["Basic dXNlcjpwYXNz"], []),  # a proxy's credentials are not a token
        (JWT, ["Bearer "], ["bearer."]),  # empty ones are none
    ],
)
def test_the_token_is_read_whichever_way_it_came(
    query: str | None, authorization: list[str], subprotocols: list[str]
) -> None:
    assert handshake_token(query, authorization, subprotocols) == JWT


@pytest.mark.parametrize(
    ("query", "authorization", "subprotocols"),
    [
        (None, [], []),
        ("", [], []),
        (None, ["Bearer"], []),
        (None, ["Bearer   "], []),
        (None, ["Basic dXNlcjpwYXNz"], []),
        (None, [], ["bearer."]),
        (None, [], [PROTOCOL_VERSION]),
        (None, [], ["Bearer.x"]),  # subprotocol names are case-sensitive
    ],
)
def test_no_token_any_way_is_none(
    query: str | None, authorization: list[str], subprotocols: list[str]
) -> None:
    assert handshake_token(query, authorization, subprotocols) is None


@pytest.mark.parametrize(
    ("query", "authorization", "subprotocols", "expected"),
    [
        # ?token= first: a request that connected before keeps connecting as it did,
        # whatever Authorization header an HTTP library or a proxy adds.
        ("q", ["Bearer h"], ["bearer.s"], "q"),
        ("q", ["Bearer h"], [], "q"),
        ("q", [], ["bearer.s"], "q"),
        ("", ["Bearer h"], [], "h"),  # an empty one is none
        (None, ["Bearer h"], ["bearer.s"], "h"),
        (None, ["Basic x", "Bearer h"], ["bearer.s"], "h"),
        (None, ["Bearer ", "Bearer h2"], [], "h2"),
        (None, ["Bearer h1", "Bearer h2"], [], "h1"),  # the first, as ?token= always was
        (None, ["Basic x"], ["bearer.s1", "bearer.s2"], "s1"),
        (None, [], ["kalami.v1", "bearer.", "bearer.s2"], "s2"),
    ],
)
def test_of_several_tokens_the_first_in_a_fixed_order(
    query: str | None, authorization: list[str], subprotocols: list[str], expected: str
) -> None:
    assert handshake_token(query, authorization, subprotocols) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bEaReR abc", "abc"),
        ("Bearer", ""),
        ("Basic abc", None),
        ("Bearerabc", None),
        ("", None),
    ],
)
def test_bearer_credentials(value: str, expected: str | None) -> None:
    assert bearer_credentials(value) == expected


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ([], None),  # nothing offered: no header, as always
        ([PROTOCOL_VERSION], PROTOCOL_VERSION),
        ([f"bearer.{JWT}", PROTOCOL_VERSION], PROTOCOL_VERSION),
        ([PROTOCOL_VERSION, f"bearer.{JWT}"], PROTOCOL_VERSION),
        ([f"bearer.{JWT}"], None),  # never the bearer entry, even alone
        (["kalami.v2"], None),  # a version the gateway does not speak
        (["kalami.v2", PROTOCOL_VERSION], PROTOCOL_VERSION),
    ],
)
def test_the_answered_subprotocol(offered: list[str], answered: str | None) -> None:
    assert answered_subprotocol(offered) == answered


def test_a_jwt_fits_in_a_subprotocol_entry() -> None:
    """base64url and dots are all RFC 7230 token characters, so a browser's ``new
    WebSocket(url, ["kalami.v1", "bearer." + jwt])`` takes it."""
    assert TOKEN_CHARS.fullmatch(f"bearer.{JWT}")
    assert TOKEN_CHARS.fullmatch(PROTOCOL_VERSION)

"""Request-line and Host checks, tested as an attacker would probe them."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kalami_gateway.adapters.http.checks import climbs_out, valid_host

SEGMENTS = st.sampled_from(
    [b"a", b"files", b"", b".", b"..", b"%2e", b"%2e%2e", b".%2E", b"%2E.", b"...", b"a.b"]
)
SEPARATORS = st.sampled_from([b"/", b"/", b"/", b"%2f", b"%2F", b"\\", b"%5c"])


@st.composite
def paths(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(SEPARATORS, SEGMENTS), max_size=8))
    return b"/" + b"".join(sep + seg if i else seg for i, (sep, seg) in enumerate(parts))


def resolver_climbs(segments: list[bytes], keep_empty: bool) -> bool:
    """A server resolving dot-segments: does a ``..`` ever pop above the root?"""
    stack: list[bytes] = []
    for segment in segments:
        decoded = unquote_to_bytes(segment)
        if decoded == b"..":
            if not stack:
                return True
            stack.pop()
        elif decoded == b"." or (not segment and not keep_empty):
            continue
        else:
            stack.append(segment)
    return False


def any_server_climbs(path: bytes) -> bool:
    narrow = path.split(b"/")[1:]
    wide = re.split(rb"/|\\|%2[Ff]|%5[Cc]", path)[1:]
    return any(
        resolver_climbs(view, keep_empty) for view in (narrow, wide) for keep_empty in (True, False)
    )


@given(paths())
def test_a_path_is_refused_exactly_when_some_server_would_resolve_it_out_of_the_base(
    path: bytes,
) -> None:
    assert climbs_out(path) == any_server_climbs(path)


@pytest.mark.parametrize(
    "path",
    [
        b"/..",
        b"/../admin",
        b"/a/../../admin",
        b"/%2e%2e/x",
        b"/a%2f..%2f..",
        b"/a/b%5c..%5c..%5c..",
    ],
)
def test_climbing_paths(path: bytes) -> None:
    assert climbs_out(path)


@pytest.mark.parametrize(
    "path", [b"/", b"/users/me", b"/a/../b", b"/files/a%2Fb/", b"/v.1/x..y/...", b"/a/./b"]
)
def test_paths_that_stay_inside(path: bytes) -> None:
    assert not climbs_out(path)


@pytest.mark.parametrize(
    "host", [b"gateway", b"api.kalami.app", b"api.kalami.app:443", b"127.0.0.1:3000", b"[::1]:80"]
)
def test_well_formed_hosts(host: bytes) -> None:
    assert valid_host(host)


@pytest.mark.parametrize(
    "host",
    [
        b"",
        b"evil.test/admin",
        b"a b",
        b"a@b",
        b"host:port",
        b"a:1:2",
        b"[::1",
        b"x\r\ny",
        b"h:123456",
    ],
)
def test_malformed_hosts(host: bytes) -> None:
    assert not valid_host(host)

"""Which requests come from a page of the gateway's own: the request's scheme and Host, or,
from a trusted proxy only, its X-Forwarded-Proto and X-Forwarded-Host."""

from __future__ import annotations

from typing import Any

import pytest

from kalami_gateway.adapters.http.websocket import SameOrigin

PROXY = "10.0.0.5"


def scope(
    *headers: tuple[str, str], scheme: str = "ws", peer: str = "203.0.113.9"
) -> dict[str, Any]:
    return {
        "type": "websocket",
        "scheme": scheme,
        "client": (peer, 50000),
        "headers": [(name.encode(), value.encode()) for name, value in headers],
    }


def test_an_origin_with_the_requests_scheme_host_and_port_is_the_gateways_own() -> None:
    judge = SameOrigin().judge
    assert judge(scope(("host", "gw.test:3000"), ("origin", "http://gw.test:3000"))) == (
        "http://gw.test:3000",
        True,
    )
    http = scope(("host", "gw.test:3000"), ("origin", "http://gw.test:3000"), scheme="http")
    assert judge(http) == ("http://gw.test:3000", True)
    assert judge(scope(("host", "gw.test:3000"), ("origin", "https://app.test"))) == (
        "https://app.test",
        False,
    )
    assert judge(scope(("host", "gw.test:3000"))) == (None, False)  # not a browser


@pytest.mark.parametrize(
    "headers",
    [
        [("origin", "http://gw.test")],  # no Host (HTTP/1.0): nothing to be the same as
        [("host", "gw.test"), ("host", "evil.test"), ("origin", "http://gw.test")],
        [("host", "gw.test"), ("origin", "http://gw.test"), ("origin", "http://evil.test")],
    ],
)
def test_no_host_or_more_than_one_host_or_origin_is_never_the_gateways_own(
    headers: list[tuple[str, str]],
) -> None:
    origin, own = SameOrigin().judge(scope(*headers))
    assert origin == "http://gw.test"
    assert not own


def test_forwarding_headers_are_believed_only_from_a_trusted_proxy() -> None:
    behind_proxy = (
        ("host", "10.0.0.7:3000"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "gw.example"),
        ("origin", "https://gw.example"),
    )
    trusting = SameOrigin([PROXY])
    assert trusting.judge(scope(*behind_proxy, peer=PROXY)) == ("https://gw.example", True)
    # The same headers from anyone else say nothing: the Host is what was addressed.
    assert trusting.judge(scope(*behind_proxy)) == ("https://gw.example", False)
    assert SameOrigin().judge(scope(*behind_proxy, peer=PROXY)) == ("https://gw.example", False)
    # A network in TRUSTED_PROXIES; the first entry of a list is the client's hop.
    listed = (
        ("host", "10.0.0.7:3000"),
        ("x-forwarded-proto", "https, http"),
        ("x-forwarded-host", "gw.example, 10.0.0.7:3000"),
        ("origin", "https://gw.example"),
    )
    assert SameOrigin(["10.0.0.0/8"]).judge(scope(*listed, peer=PROXY))[1]
    # A trusted proxy that sends only one of them: the other comes from the request.
    proto_only = (("host", "gw.example"), ("x-forwarded-proto", "https"))
    assert trusting.judge(scope(*proto_only, ("origin", "https://gw.example"), peer=PROXY))[1]
    assert not trusting.judge(scope(*proto_only, ("origin", "http://gw.example"), peer=PROXY))[1]

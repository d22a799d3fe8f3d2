"""The forwarding-header policy as pure functions: what goes up, what comes down, and which
client claims are believed (only a trusted proxy's)."""

from __future__ import annotations

from kalami_gateway.adapters.http.checks import TrustedPeers
from kalami_gateway.adapters.proxy.forwarding import (
    CLIENT_CLAIMS,
    HOP_BY_HOP,
    reported_client,
    request_headers,
    response_headers,
)

NOBODY = TrustedPeers(())
PROXY = TrustedPeers(("10.0.0.2", "192.168.0.0/16"))


def lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n")[:-1]


def test_hop_by_hop_headers_and_those_the_gateway_sets_do_not_go_up() -> None:
    headers = [
        (b"accept", b"*/*"),
        (b"connection", b"keep-alive, x-secret"),
        (b"x-secret", b"named by Connection"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"upgrade", b"websocket"),
        (b"proxy-authorization", b"Basic x"),
        (b"host", b"gw.test"),
        (b"expect", b"100-continue"),
        (b"x-request-id", b"forged"),
        (b"content-length", b"2"),
    ]
    forwarded = request_headers(headers, "203.0.113.9", "https", "rid-1", NOBODY)
    assert lines(forwarded.lines) == [
        b"accept: */*",
        b"x-forwarded-for: 203.0.113.9",
        b"x-forwarded-proto: https",
        b"x-forwarded-host: gw.test",
        b"x-request-id: rid-1",
    ]
    assert (forwarded.body_length, forwarded.chunked, forwarded.client) == (
        2,
        False,
        b"203.0.113.9",
    )


def test_a_clients_claims_are_dropped_unless_it_is_a_trusted_proxy() -> None:
    claims = [(name, b"claimed") for name in sorted(CLIENT_CLAIMS)]
    sent = [
        *claims,
        (b"x-forwarded-for", b"198.51.100.7"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"public.test"),
        (b"host", b"internal:3000"),
    ]
    untrusted = lines(request_headers(sent, "203.0.113.9", "http", "r", PROXY).lines)
    assert untrusted == [
        b"x-forwarded-for: 203.0.113.9",
        b"x-forwarded-proto: http",
        b"x-forwarded-host: internal:3000",
        b"x-request-id: r",
    ]
    trusted = request_headers(sent, "10.0.0.2", "http", "r", PROXY)
    assert lines(trusted.lines) == [
        *(name + b": claimed" for name, _ in claims),
        b"x-forwarded-for: 198.51.100.7, 10.0.0.2",
        b"x-forwarded-proto: https",
        b"x-forwarded-host: public.test",
        b"x-request-id: r",
    ]
    assert trusted.client == b"198.51.100.7"


def test_the_client_a_trusted_proxy_reports_is_the_last_untrusted_address() -> None:
    assert reported_client(b"198.51.100.7, 192.168.1.1, 10.0.0.2", PROXY) == b"198.51.100.7"
    assert reported_client(b"1.1.1.1, 198.51.100.7", PROXY) == b"198.51.100.7"
    assert reported_client(b"192.168.1.1, 10.0.0.2", PROXY) == b"192.168.1.1"
    assert reported_client(b" , ", PROXY) == b""


def test_the_body_framing_the_client_sent_is_reported_not_forwarded() -> None:
    chunked = request_headers([(b"transfer-encoding", b"chunked")], None, "http", "r", NOBODY)
    assert (chunked.body_length, chunked.chunked) == (None, True)
    assert b"transfer-encoding" not in chunked.lines
    assert lines(chunked.lines)[0] == b"x-forwarded-for: "  # no peer known
    both = request_headers(
        [(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], None, "http", "r", NOBODY
    )
    assert (both.body_length, both.chunked) == (3, False)
    nonsense = request_headers([(b"content-length", b"x")], None, "http", "r", NOBODY)
    assert nonsense.body_length is None


def test_what_comes_down_leaves_the_hop_and_cors_to_the_gateway() -> None:
    sent = [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"5"),
        (b"Connection", b"x-internal"),
        (b"X-Internal", b"1"),
        *((name.title(), b"v") for name in sorted(HOP_BY_HOP - {b"connection"})),
        (b"Date", b"Mon"),
        (b"Server", b"uvicorn"),
        (b"X-Request-ID", b"theirs"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Access-Control-Allow-Origin", b"*"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert response_headers(200, sent) == [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"5"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    for bodiless in (204, 304):
        assert response_headers(bodiless, sent) == [
            (b"Content-Type", b"text/plain"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]

"""What the ``/api`` proxy forwards, as tables and pure functions: which headers go up to the
backend and which come down to the client (hop-by-hop ones never, RFC 9110 7.6.1), and the
``X-Forwarded-*`` headers the gateway sets — believing a client's own claims about where a
request came from only from a peer in ``TRUSTED_PROXIES``.

Headers are forwarded as the raw bytes uvicorn hands over (names lower-cased by uvicorn on the
way up; the backend's as sent on the way down). The body's framing header is not set here: it
is the exchange's (``exchange.py``), with the body it frames.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from kalami_gateway.adapters.http.checks import TrustedPeers

Header = tuple[bytes, bytes]

# Hop-by-hop headers (RFC 9110 7.6.1), and what only this hop may set.
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# What a client says about where a request came from. Believed (forwarded) only from a peer in
# TRUSTED_PROXIES; from anyone else it is a forgery and is dropped. X-Forwarded-For/-Proto/
# -Host are then set by the gateway itself.
CLIENT_CLAIMS: Final = frozenset(
    {
        b"forwarded",
        b"x-real-ip",
        b"x-forwarded-prefix",
        b"x-forwarded-port",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"x-forwarded-uri",
        b"x-original-url",
        b"x-original-uri",
        b"x-original-host",
        b"x-rewrite-url",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
    }
)
NOT_FORWARDED_UP: Final = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",  # uvicorn answers 100-continue itself when the body is read
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
}
NOT_FORWARDED_UP_UNTRUSTED: Final = NOT_FORWARDED_UP | CLIENT_CLAIMS
# Date and Server describe the hop: uvicorn adds its own Date, and two would be sent.
NOT_FORWARDED_DOWN: Final = HOP_BY_HOP | {b"date", b"server", b"x-request-id"}
# A 204 has no body and a 304's Content-Length describes another response; forwarded, either
# would make uvicorn wait for body bytes that never come.
NOT_FORWARDED_DOWN_BODILESS: Final = NOT_FORWARDED_DOWN | {b"content-length"}


class ForwardedRequest(NamedTuple):
    """What goes up of a request's headers, and what they said of its body and its client."""

    # The header lines for the backend (each ending in CRLF; no Host, no body framing).
    lines: bytes
    # The client's Content-Length (None: none, or not a number).
    body_length: int | None
    # The body is chunked: a Transfer-Encoding and no Content-Length.
    chunked: bool
    # The client address: the peer's; from a trusted proxy, the one its X-Forwarded-For reports.
    client: bytes


def not_forwarded(headers: list[Header], always: frozenset[bytes]) -> frozenset[bytes]:
    """``always``, plus the headers a ``Connection`` header names (they are hop-by-hop too)."""
    named = [
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    ]
    return always.union(named) if named else always


def request_headers(
    headers: list[Header],
    peer: str | None,
    scheme: str,
    request_id: str,
    trusted_peers: TrustedPeers,
) -> ForwardedRequest:
    """The headers of a request from ``peer`` (None: unknown) over ``scheme`` as they go up:
    the client's own, less the hop-by-hop ones, the ones the gateway sets, and (from a peer
    not trusted) the client's claims; then X-Forwarded-For/-Proto/-Host and X-Request-ID."""
    trusted = peer is not None and peer in trusted_peers
    dropped = not_forwarded(headers, NOT_FORWARDED_UP if trusted else NOT_FORWARDED_UP_UNTRUSTED)
    parts: list[bytes] = []
    incoming_xff = incoming_proto = incoming_host = host = None
    body_length: int | None = None
    chunked = False
    for name, value in headers:
        if name in dropped or name.startswith(b"proxy-"):
            if name == b"content-length":
                try:
                    body_length = int(value)
                except ValueError:
                    body_length = None
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"host":
                host = value
            elif name == b"x-forwarded-for":
                incoming_xff = value if incoming_xff is None else incoming_xff + b", " + value
            elif name == b"x-forwarded-proto":
                incoming_proto = value
            elif name == b"x-forwarded-host":
                incoming_host = value
            continue
        parts += (name, b": ", value, b"\r\n")
    peer_address = peer.encode() if peer is not None else b""
    if trusted and incoming_xff:
        forwarded_for = incoming_xff + b", " + peer_address
        client = reported_client(incoming_xff, trusted_peers) or peer_address
    else:
        forwarded_for = client = peer_address
    proto = incoming_proto if trusted and incoming_proto else scheme.encode()
    parts += (b"x-forwarded-for: ", forwarded_for, b"\r\nx-forwarded-proto: ", proto, b"\r\n")
    forwarded_host = incoming_host if trusted and incoming_host else host
    if forwarded_host:
        parts += (b"x-forwarded-host: ", forwarded_host, b"\r\n")
    parts += (b"x-request-id: ", request_id.encode(), b"\r\n")
    return ForwardedRequest(b"".join(parts), body_length, chunked and body_length is None, client)


def reported_client(forwarded_for: bytes, trusted_peers: TrustedPeers) -> bytes:
    """The client a trusted proxy reports: the last address in X-Forwarded-For that is not
    itself a trusted proxy (each appends the peer it saw), else the first."""
    addresses = [a for a in (e.strip() for e in forwarded_for.split(b",")) if a]
    for address in reversed(addresses):
        if address.decode("latin-1") not in trusted_peers:
            return address
    return addresses[0] if addresses else b""


def response_headers(status: int, headers: list[Header]) -> list[Header]:
    """The headers of the backend's response as they go down to the client."""
    dropped = not_forwarded(
        headers, NOT_FORWARDED_DOWN_BODILESS if status in (204, 304) else NOT_FORWARDED_DOWN
    )
    return [
        (name, value)
        for name, value in headers
        if (lower := name.lower()) not in dropped
        and not lower.startswith(b"proxy-")
        # CORS is the gateway's to answer (the edge adds its own).
        and not lower.startswith(b"access-control-")
    ]

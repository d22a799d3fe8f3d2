"""The opening handshake of the native engine (``WS_ENGINE=native``): the upgrade request
uvicorn hands over, judged as websockets' ``ServerProtocol.accept`` judges it, and the
server's answers as bytes (the 101, the 403 of a close before the accept, the 500 of an app
that failed before it, the app's own denial response).

uvicorn's HTTP protocol has parsed the request already (httptools, the gateway's limits) and
hands it over rebuilt: ``GET <target> HTTP/1.1``, one ``name: value`` line per header (names
lower-cased by uvicorn), an empty line (``HttpToolsProtocol.handle_websocket_upgrade``). A
request that is plainly a good handshake is read here (``read_request``), a few string
comparisons; anything else is handed to websockets' own ``ServerProtocol``
(``judged_by_websockets``), which answers it exactly as the uvicorn engine does (426, 400,
405, 505 with websockets' words), and whose 101, if it gives one, is taken as it is."""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import logging
from http import HTTPStatus
from typing import Final, NamedTuple

from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request, Response
from websockets.server import ServerProtocol

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# The Connection values a handshake is taken on without websockets' parsing (lower-cased);
# any other goes to websockets, which accepts or refuses it.
_CONNECTION_UPGRADE: Final = frozenset((b"upgrade", b"keep-alive, upgrade", b"upgrade, keep-alive"))
# Headers that make websockets refuse a handshake (a body) or that it reads in a way the
# fast path does not: such a request goes to websockets.
_TO_WEBSOCKETS: Final = frozenset((b"content-length", b"transfer-encoding"))
_HEAD_END: Final = b"\r\n\r\n"
# A subprotocol is an RFC 7230 token (websockets.headers); anything else is websockets' call.
_TOKEN_CHARS: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# A line websockets would find too long (it counts the line's CRLF; a margin either way).
_LONGEST_LINE: Final = MAX_LINE_LENGTH - 2


class Handshake(NamedTuple):
    """A good handshake request: what the scope and the 101 are built from."""

    target: str  # the request target, path and query, ASCII
    headers: list[tuple[bytes, bytes]]  # as sent (uvicorn lower-cases the names)
    subprotocols: list[str]
    accept: str  # Sec-WebSocket-Accept


def accept_key(key: bytes) -> str:
    """RFC 6455 §4.2.2: the base64 SHA-1 of the client's key and the protocol's GUID."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()  # noqa: S324


def read_request(head: bytes) -> Handshake | None:
    """``head`` read as a good WebSocket handshake, or None when websockets must judge it
    (which may still accept it). Everything websockets checks is checked: the method, the
    protocol, ``Connection`` with ``upgrade``, exactly one ``Upgrade: websocket``, exactly one
    ``Sec-WebSocket-Key`` of 16 base64 bytes, exactly one ``Sec-WebSocket-Version: 13``, at
    most one ``Origin``, subprotocols that are tokens, no line or header count past websockets'
    limits."""
    if not head.endswith(_HEAD_END):
        return None
    lines = head[: -len(_HEAD_END)].split(b"\r\n")
    if len(lines) > MAX_NUM_HEADERS or max(map(len, lines)) > _LONGEST_LINE:
        return None
    request_line = lines[0]
    if not (request_line.startswith(b"GET ") and request_line.endswith(b" HTTP/1.1")):
        return None
    raw_target = request_line[4:-9]
    if not raw_target.isascii() or b" " in raw_target:
        return None
    headers: list[tuple[bytes, bytes]] = []
    connection = upgrade = key = version = None
    upgrades = keys = versions = origins = 0
    subprotocols: list[str] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        value = value.strip(b" \t")
        headers.append((name, value))
        lower = name.lower()
        if lower == b"connection":
            if connection is not None:
                return None
            connection = value.lower()
        elif lower == b"upgrade":
            upgrade, upgrades = value.lower(), upgrades + 1
        elif lower == b"sec-websocket-key":
            key, keys = value, keys + 1
        elif lower == b"sec-websocket-version":
            version, versions = value, versions + 1
        elif lower == b"sec-websocket-protocol":
            for item in value.split(b","):
                token = item.strip(b" \t")
                if not token or not _TOKEN_CHARS.issuperset(token):
                    return None
                subprotocols.append(token.decode("ascii"))
        elif lower == b"origin":
            origins += 1
        elif lower in _TO_WEBSOCKETS:
            return None
    if connection not in _CONNECTION_UPGRADE or upgrade != b"websocket" or upgrades != 1:
        return None
    if keys != 1 or versions != 1 or version != b"13" or key is None or origins > 1:
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return Handshake(raw_target.decode("ascii"), headers, subprotocols, accept_key(key))


class Judged(NamedTuple):
    """websockets' verdict on a handshake the fast path did not take: the request (None if
    it could not be parsed) and the response to send (a 101, or a refusal)."""

    request: Request | None
    response: Response | None
    refusal: bytes  # the whole refusal to write (empty when the response is a 101)


def judged_by_websockets(head: bytes, max_size: int | None) -> Judged:
    """What the uvicorn engine does with ``head``: websockets' ``ServerProtocol`` parses it
    and ``accept`` judges it; a request it cannot parse gets what it queued (a 414 or 431)
    or uvicorn's 400."""
    conn = ServerProtocol(max_size=max_size, logger=logging.getLogger("uvicorn.error"))
    conn.receive_data(head)
    requests = [event for event in conn.events_received() if isinstance(event, Request)]
    if not requests:
        output = b"".join(conn.data_to_send())
        if not output:
            output = conn.reject(
                400, "Failed to open a WebSocket connection: invalid request.\n"
            ).serialize()
        return Judged(None, None, output)
    request = requests[0]
    response = conn.accept(request)
    if response.status_code == 101:
        return Judged(request, response, b"")
    conn.send_response(response)
    return Judged(request, response, b"".join(conn.data_to_send()))


def handshake_of(request: Request, response: Response) -> Handshake:
    """A request websockets accepted, as the fast path would have read it."""
    headers = [
        (name.encode("ascii"), value.encode("latin-1"))
        for name, value in request.headers.raw_items()
    ]
    subprotocols = [
        token.strip()
        for header in request.headers.get_all("Sec-WebSocket-Protocol")
        for token in header.split(",")
    ]
    return Handshake(request.path, headers, subprotocols, response.headers["Sec-WebSocket-Accept"])


def switching_protocols(
    accept: str, extra: list[tuple[bytes, bytes]], subprotocol: str | None
) -> bytes:
    """The 101, as the uvicorn engine writes it: websockets' headers, then the server's
    default headers and the app's (names lower-cased), then the chosen subprotocol."""
    lines = [
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n"
    ]
    for name, value in extra:
        lines.append(f"{name.decode('latin-1').lower()}: {value.decode('latin-1')}\r\n")
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def rejection(status: int, text: str) -> bytes:
    """A refusal as websockets' ``ServerProtocol.reject`` makes it (the 403 of a close before
    the accept, the 500 of an app that failed before it)."""
    body = text.encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", "text/plain; charset=utf-8"),
        ]
    )
    phrase = HTTPStatus(status).phrase
    return Response(status, phrase, headers, body).serialize()


def denial(status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The app's own response instead of the accept (the ``websocket.http.response``
    extension), completed as uvicorn completes it."""
    headers = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw_headers])
    headers.setdefault("Date", email.utils.formatdate(usegmt=True))
    headers.setdefault("Connection", "close")
    headers.setdefault("Content-Length", str(len(body)))
    headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return Response(status, phrase, headers, body).serialize()

"""The ``/api`` pass-through: a raw ASGI reverse proxy on one shared aiohttp session.

Measured (issue 3): Litestar's routing and httpx's ``AsyncClient`` cost more per request than
the whole proxy budget, so this path bypasses both. Bodies stream both ways unchanged; small
ones (with a known length) are forwarded in one piece, which is cheaper than a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final

import aiohttp
import yarl
from multidict import CIMultiDict

from kalami_gateway.adapters.asgi import Receive, Scope, Send, send_json_error

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) and what only this hop may set.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_UP: Final = _HOP_BY_HOP | {
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
}
_NOT_FORWARDED_DOWN: Final = frozenset(
    {name.encode() for name in _HOP_BY_HOP} | {b"date", b"server", b"x-request-id"}
)
# Bodies up to this size (with a Content-Length) are read whole and sent in one write.
SMALL_BODY: Final = 256 * 1024
STREAM_CHUNK: Final = 64 * 1024


class ApiProxy:
    """Forwards ``/api/{path}?{query}`` to ``{backend_url}/{path}?{query}``."""

    def __init__(
        self,
        backend_url: str,
        timeout_seconds: float,
        trusted_proxies: Iterable[str],
        observe_latency: Callable[[float], None],
        pool_size: int = 512,
    ) -> None:
        self._base = backend_url.rstrip("/")
        self._timeout = timeout_seconds
        self._trusted = frozenset(trusted_proxies)
        self._observe_latency = observe_latency
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the shared upstream session (inside the running event loop)."""
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._pool_size, limit_per_host=self._pool_size, keepalive_timeout=30
            ),
            # A shared jar would hand one learner's cookies to the next: never store any.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            # Forward the client's own headers, not the library's defaults.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout, sock_read=self._timeout
            ),
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        session = self._session
        if session is None:
            await send_json_error(send, 503, "Gateway is starting or stopping")
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        upstream_path = raw_path[len(b"/api") :] or b"/"
        query: bytes = scope["query_string"]
        target = self._base + upstream_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        url = yarl.URL(target, encoded=True)
        headers, body_length, chunked = self._upstream_headers(scope, request_id)
        body: bytes | AsyncIterator[bytes] | None = None
        if body_length is not None and body_length <= SMALL_BODY:
            try:
                body = await _read_body(receive) if body_length else None
            except ConnectionAbortedError:
                return
        elif body_length is not None or chunked:
            body = _stream_body(receive)
            if body_length is not None:
                headers["Content-Length"] = str(body_length)

        started = time.perf_counter()
        try:
            response = await session.request(
                scope["method"], url, headers=headers, data=body, allow_redirects=False
            )
        except TimeoutError:
            await send_json_error(send, 504, "Backend timed out")
            return
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("proxy_backend_unavailable", extra={"error": type(exc).__name__})
            await send_json_error(send, 502, "Backend service unavailable")
            return
        self._observe_latency(time.perf_counter() - started)
        try:
            await self._relay(response, receive, send, request_id)
        finally:
            response.release()

    def _upstream_headers(
        self, scope: Scope, request_id: str
    ) -> tuple[CIMultiDict[str], int | None, bool]:
        headers: CIMultiDict[str] = CIMultiDict()
        connection_tokens: set[str] = set()
        incoming_xff = incoming_proto = incoming_host = host = None
        body_length: int | None = None
        chunked = False
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name == "connection":
                connection_tokens.update(t.strip().lower() for t in value.split(","))
            elif name == "content-length":
                with contextlib.suppress(ValueError):
                    body_length = int(value)
            elif name == "transfer-encoding":
                chunked = True
            elif name == "host":
                host = value
            elif name == "x-forwarded-for":
                incoming_xff = value if incoming_xff is None else f"{incoming_xff}, {value}"
            elif name == "x-forwarded-proto":
                incoming_proto = value
            elif name == "x-forwarded-host":
                incoming_host = value
            if name in _NOT_FORWARDED_UP or name.startswith("proxy-"):
                continue
            headers.add(name, value)
        for token in connection_tokens:
            headers.popall(token, None)
        client = scope.get("client")
        peer = client[0] if client else ""
        trusted = peer in self._trusted
        headers["X-Forwarded-For"] = f"{incoming_xff}, {peer}" if trusted and incoming_xff else peer
        headers["X-Forwarded-Proto"] = (
            incoming_proto if trusted and incoming_proto else scope.get("scheme", "http")
        )
        forwarded_host = incoming_host if trusted and incoming_host else host
        if forwarded_host:
            headers["X-Forwarded-Host"] = forwarded_host
        headers["X-Request-ID"] = request_id
        return headers, body_length, chunked

    async def _relay(
        self, response: aiohttp.ClientResponse, receive: Receive, send: Send, request_id: str
    ) -> None:
        connection_tokens = {
            t.strip().lower().encode()
            for t in response.headers.getall("Connection", ())
            for t in t.split(",")
        }
        headers = [
            (name.lower(), value)
            for name, value in response.raw_headers
            if name.lower() not in _NOT_FORWARDED_DOWN
            and name.lower() not in connection_tokens
            and not name.lower().startswith(b"proxy-")
        ]
        headers.append((b"x-request-id", request_id.encode("latin-1")))
        length = response.content_length
        if length is not None and length <= SMALL_BODY:
            try:
                content = await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError):
                await send_json_error(send, 502, "Backend service unavailable")
                return
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": content, "more_body": False})
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            async for chunk in response.content.iter_chunked(STREAM_CHUNK):
                if gone.is_set():
                    # The client left: drop the upstream connection instead of reading on.
                    response.close()
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # Headers are out; the only honest signal left is an aborted body.
            log.warning("proxy_upstream_body_failed", extra={"error": type(exc).__name__})
            response.close()
            raise
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected while sending the body")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def _stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return

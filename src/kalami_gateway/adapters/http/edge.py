"""The outermost ASGI layer: request ids, CORS, one log line and metrics per request, dispatch.

``/api`` and ``/api/...`` go to the raw proxy; everything else (the gateway's own routes and
the WebSocket) to the Litestar app. Dispatch reads the raw path, as sent: the proxy forwards
the raw path, so routing on the decoded one (``/%61pi/x`` is ``/api/x``) would forward a
path the router never saw. CORS lives here, not in Litestar, so that one policy covers both
(the proxy drops the backend's own ``Access-Control-*`` headers). A request with no Host
(HTTP/1.1) or more than one, or a Host that is not ``name[:port]``, is refused with 400
before anything else sees it. Paths that serve the gateway's own pages only (the playground:
its token route must never be readable by another site) get no CORS headers at all, and
their preflights a 403.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import structlog

from kalami_gateway.adapters.asgi import ASGIApp, Message, Receive, Scope, Send, send_json_error
from kalami_gateway.adapters.errors import INVALID_HOST, error_body
from kalami_gateway.adapters.http.checks import valid_host

ProxyCall = Callable[[Scope, Receive, Send, str], Awaitable[None]]
RecordRequest = Callable[[str, int], None]


_MAX_REQUEST_ID: Final = 128
_CORS_MAX_AGE: Final = b"600"
_CORS_METHODS: Final = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# Whether CORS headers are sent depends on the request's Origin, so every response says so.
_VARY_ORIGIN: Final = (b"vary", b"Origin")
# nginx's convention: the client closed the connection before it got a response.
CLIENT_CLOSED_REQUEST: Final = 499


class CorsPolicy:
    """Which origins may call the gateway from a browser: exact origins, or ``*`` for any."""

    def __init__(self, origins: Iterable[str]) -> None:
        listed = tuple(origins)
        self.any_origin = "*" in listed
        self._origins = frozenset(o.encode("latin-1") for o in listed if o != "*")

    def allows(self, origin: bytes) -> bool:
        return self.any_origin or origin in self._origins

    def response_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if self.any_origin:
            return [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-expose-headers", b"x-request-id"),
            ]
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", b"x-request-id"),
        ]

    def preflight_headers(
        self, origin: bytes, requested_headers: bytes | None
    ) -> list[tuple[bytes, bytes]]:
        headers = [
            *self.response_headers(origin),
            (b"access-control-allow-methods", _CORS_METHODS),
            (b"access-control-max-age", _CORS_MAX_AGE),
        ]
        if requested_headers:
            headers.append((b"access-control-allow-headers", requested_headers))
        return headers


_ORIGIN_REFUSED: Final = error_body(403, "Origin not allowed")


def _unserved_schema_page(path: str, prefix: str, served: frozenset[str]) -> bool:
    routed = "/" + "/".join(segment for segment in path.split("/") if segment)
    return (routed == prefix or routed.startswith(prefix + "/")) and routed not in served


class HttpEdge:
    """Wraps the Litestar app and the ``/api`` proxy into the ASGI app uvicorn serves."""

    def __init__(
        self,
        app: ASGIApp,
        proxy: ProxyCall,
        cors: CorsPolicy,
        record_request: RecordRequest,
        known_routes: Iterable[str],
        same_origin_only: Iterable[str] = (),
        schema: tuple[str, Iterable[str]] | None = None,
        admin: tuple[int, Iterable[str]] | None = None,
    ) -> None:
        """``same_origin_only``: path prefixes (``/playground``: it and all below it) never
        answered with CORS headers. ``schema``: (prefix, the paths served under it): every
        other path under the prefix is answered 404 here, in the gateway's error shape (the
        Litestar schema router answers them with an HTML page of its own). ``admin``:
        (ADMIN_PORT, the operators' paths): on that port only those are answered (anything
        else 404, a WebSocket refused), and on the others those paths that the health probes
        are not answer 404 (``/metrics`` and ``/stats`` need not be public)."""
        self._app = app
        self._proxy = proxy
        self._cors = cors
        self._record = record_request
        self._known_routes = frozenset(known_routes)
        self._same_origin_only = tuple(same_origin_only)
        self._schema = None if schema is None else (schema[0], frozenset(schema[1]))
        self._admin_port = None if admin is None else admin[0]
        self._admin_paths = frozenset(() if admin is None else admin[1])
        # Made here, after logging is configured: structlog caches a logger's level and output
        # on first use, so a module-level one would keep the first configuration it met.
        self._log = structlog.get_logger("kalami_gateway.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self._admin_port is not None and self._on_admin_port(scope):
                await send({"type": "websocket.close", "code": 1008})  # 403 to the handshake
                return
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id: str | None = None
        origin: bytes | None = None
        requested_method: bytes | None = None
        requested_headers: bytes | None = None
        hosts: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"host":
                hosts.append(value)
            elif name == b"x-request-id":
                request_id = _clean_request_id(value)
            elif name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                requested_method = value
            elif name == b"access-control-request-headers":
                requested_headers = value
        if request_id is None:
            request_id = new_request_id()
        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        is_api = raw_path == b"/api" or raw_path.startswith(b"/api/")
        route = "/api/{path}" if is_api else (path if path in self._known_routes else "other")
        status = 500
        started_response = False
        client_left = False
        extra_headers: list[tuple[bytes, bytes]] = [
            (b"x-request-id", request_id.encode()),
            _VARY_ORIGIN,
        ]
        no_cors = origin is not None and not is_api and self._no_cors(path)
        if origin is not None and not no_cors and self._cors.allows(origin):
            extra_headers.extend(self._cors.response_headers(origin))

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                # The proxy drops the backend's X-Request-ID and Litestar's routes set none,
                # so the edge's is the only one.
                message["headers"] = [*message.get("headers", ()), *extra_headers]
            await send(message)

        async def receive_watching() -> Message:
            nonlocal client_left
            message = await receive()
            if message["type"] == "http.disconnect" and not started_response:
                client_left = True
            return message

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            host_problem = _host_problem(hosts, scope.get("http_version", "1.1"))
            if host_problem is not None:
                await send_json_error(send_with_headers, 400, host_problem, code=INVALID_HOST)
            elif self._admin_port is not None and self._not_on_this_port(scope, path):
                await send_json_error(send_with_headers, 404, "Not Found")
            elif (
                scope["method"] == "OPTIONS" and origin is not None and requested_method is not None
            ):
                status = await self._preflight(
                    send, origin, requested_headers, request_id, allowed=not no_cors
                )
            elif is_api:
                await self._proxy(scope, receive_watching, send_with_headers, request_id)
            elif self._schema is not None and _unserved_schema_page(path, *self._schema):
                await send_json_error(send_with_headers, 404, "Not Found")
            else:
                await self._app(scope, receive_watching, send_with_headers)
        finally:
            if client_left and not started_response:
                status = CLIENT_CLOSED_REQUEST
            self._record(route, status)
            self._log.info(
                "http_request",
                method=scope["method"],
                path=path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )

    def _on_admin_port(self, scope: Scope) -> bool:
        server = scope.get("server")
        return server is not None and server[1] == self._admin_port

    def _not_on_this_port(self, scope: Scope, path: str) -> bool:
        """ADMIN_PORT is set: whether ``path`` is not answered on the port it came to (as the
        router sees it: Litestar collapses repeated and trailing slashes)."""
        routed = "/" + "/".join(segment for segment in path.split("/") if segment)
        if self._on_admin_port(scope):
            return routed not in self._admin_paths
        return routed in self._admin_paths and not routed.startswith("/health")

    def _no_cors(self, path: str) -> bool:
        """Whether ``path`` is one of the same-origin-only ones, as the router sees it
        (Litestar collapses repeated slashes: ``//playground//token`` is the token route)."""
        if not self._same_origin_only:
            return False
        routed = "/" + "/".join(segment for segment in path.split("/") if segment)
        return any(
            routed == prefix or routed.startswith(prefix + "/") for prefix in self._same_origin_only
        )

    async def _preflight(
        self,
        send: Send,
        origin: bytes,
        requested_headers: bytes | None,
        request_id: str,
        allowed: bool = True,
    ) -> int:
        if not allowed or not self._cors.allows(origin):
            body = _ORIGIN_REFUSED
            status = 403
            headers = [(b"content-type", b"application/json")]
        else:
            body = b""
            status = 204
            headers = self._cors.preflight_headers(origin, requested_headers)
        headers.append((b"x-request-id", request_id.encode()))
        headers.append(_VARY_ORIGIN)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return status


def _host_problem(hosts: list[bytes], http_version: str) -> str | None:
    """Why the request's Host header(s) are refused, or None."""
    if len(hosts) > 1:
        return "More than one Host header"
    if not hosts:
        return None if http_version == "1.0" else "Missing Host header"
    if not valid_host(hosts[0]):
        return "Invalid Host header"
    return None


_random = random.Random()  # noqa: S311  # request ids are correlation ids, not secrets


def new_request_id() -> str:
    """32 hex digits. A correlation id, not a secret: a fast PRNG will do (uuid4 reads
    os.urandom, a system call per request, ~6% of the proxy's CPU in the profile)."""
    return f"{_random.getrandbits(128):032x}"  # an id, not a secret


def _clean_request_id(value: bytes) -> str | None:
    """A client's request id, if it is short printable ASCII; otherwise we make our own."""
    if not value or len(value) > _MAX_REQUEST_ID:
        return None
    if not all(0x21 <= b <= 0x7E for b in value):
        return None
    return value.decode("ascii")

"""The browser playground: ``GET /playground`` (one page, its ES module and stylesheet, shipped
in this package) and, in stub mode only, ``POST /playground/token`` for development tokens.

The token route never exists in front of the real backend: it is built only when the
gateway runs its built-in stub backend, so nothing can mint tokens for real learners. And
only the playground page itself may drive it: another site's page could otherwise read a
token from a developer's gateway. So it wants a JSON body (a foreign page cannot send one
without a CORS preflight, which the edge refuses on the playground's paths) and an
``Origin`` naming the gateway's own site (browsers send one with every POST); it never
answers with CORS headers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Final, cast

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from kalami_gateway.adapters.asgi import Scope
from kalami_gateway.adapters.errors import HttpError, error_body

PAGE_PATH: Final = "/playground"
TOKEN_PATH: Final = "/playground/token"  # noqa: S105  # a route, not a secret
ASSETS: Final = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PLAYGROUND_ROUTES: Final = (PAGE_PATH, TOKEN_PATH, *(f"{PAGE_PATH}/{name}" for name in ASSETS))
MAX_TOKEN_REQUEST_BYTES: Final = 4096
# The page runs only code and styles of its own, talks only to its own gateway.
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; "
        "media-src 'self' data: blob:; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


MAX_SUB_CHARS: Final = 256
MIN_TTL: Final = 10  # seconds
MAX_TTL: Final = 86_400
DEFAULT_TTL: Final = 3600


class TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sub: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SUB_CHARS)]
    ttl: Annotated[int, msgspec.Meta(ge=MIN_TTL, le=MAX_TTL)] = DEFAULT_TTL  # seconds


class TokenIssued(msgspec.Struct, frozen=True):
    token: str


Mint = Callable[[str, float], str]  # (sub, expires_at) -> a token the gateway accepts
# A request's Origin (None without one) and whether it is the gateway's own site.
JudgeOrigin = Callable[[Scope], tuple[str | None, bool]]
_TOKEN_HEADERS: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_TOKEN_REQUEST: Final = msgspec.json.Decoder(TokenRequest)


@dataclass
class _TokenOperation(Operation):
    """The token route's schema entry: the handler reads its body itself (after the Origin
    and Content-Type checks), so Litestar cannot see the body's shape and is told it here."""

    def __post_init__(self) -> None:
        body = Schema(
            type=OpenAPIType.OBJECT,
            required=["sub"],
            properties={
                "sub": Schema(
                    type=OpenAPIType.STRING,
                    min_length=1,
                    max_length=MAX_SUB_CHARS,
                    description="The learner the token is for",
                ),
                "ttl": Schema(
                    type=OpenAPIType.INTEGER,
                    minimum=MIN_TTL,
                    maximum=MAX_TTL,
                    default=DEFAULT_TTL,
                    description="Seconds until the token expires",
                ),
            },
            additional_properties=False,
        )
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=body)}, required=True
        )


def _token_responses() -> dict[int, ResponseSpec]:
    issued = "A token for sub, expiring in ttl seconds, that this gateway accepts"
    return {
        200: ResponseSpec(TokenIssued, description=issued, generate_examples=False),
        **{
            status: ResponseSpec(HttpError, description=description, generate_examples=False)
            for status, description in (
                (400, "Not JSON, or not {sub, ttl} within their limits (bad_request)"),
                (403, "No Origin, or not the gateway's own site (forbidden)"),
                (413, f"Body over {MAX_TOKEN_REQUEST_BYTES // 1024} KiB (payload_too_large)"),
                (415, "Not Content-Type: application/json (unsupported_media_type)"),
            )
        },
    }


def _asset(name: str) -> str:
    return (resources.files(__package__) / name).read_text(encoding="utf-8")


def _asset_route(name: str, media_type: str) -> HTTPRouteHandler:
    body = _asset(name)

    @get(f"{PAGE_PATH}/{name}", sync_to_thread=False, include_in_schema=False, name=name)
    def playground_asset() -> Response[str]:
        return Response(body, media_type=media_type, headers=_HEADERS)

    return playground_asset


def _refusal(status: int, error: str) -> Response[bytes]:
    return Response(
        error_body(status, error),
        status_code=status,
        media_type=MediaType.JSON,
        headers=_TOKEN_HEADERS,
    )


def _is_json(scope: Scope) -> bool:
    """Whether the request's one Content-Type is ``application/json`` (parameters aside).
    ``text/plain``, forms and multipart are what another site's page can send without a
    preflight: never these."""
    types: list[bytes] = [value for name, value in scope["headers"] if name == b"content-type"]
    if len(types) != 1:
        return False
    return types[0].split(b";", 1)[0].strip().lower() == b"application/json"


def playground_routes(
    stub_mode: bool, mint: Mint, judge_origin: JudgeOrigin
) -> list[HTTPRouteHandler]:
    """The page (its mode, ``stub`` or ``http``, written into it) and, in stub mode, the
    development token route (``judge_origin``: whether a request comes from the gateway's
    own page)."""
    page = _asset("index.html").replace("{{MODE}}", "stub" if stub_mode else "http")

    @get(
        PAGE_PATH,
        media_type=MediaType.HTML,
        sync_to_thread=False,
        operation_id="playgroundPage",
        summary="The browser playground",
        response_description="The page (its script and stylesheet are under /playground/)",
    )
    def playground_page() -> Response[str]:
        return Response(page, media_type=MediaType.HTML, headers=_HEADERS)

    routes = [
        playground_page,
        *(_asset_route(name, media_type) for name, media_type in ASSETS.items()),
    ]
    if stub_mode:

        @post(
            TOKEN_PATH,
            status_code=200,
            request_max_body_size=MAX_TOKEN_REQUEST_BYTES,
            operation_class=_TokenOperation,
            responses=_token_responses(),
            operation_id="playgroundToken",
            summary="A development token, for the playground page only (BACKEND_MODE=stub only)",
            description=(
                "Only the playground page itself may ask: a request needs an Origin naming "
                "the gateway's own site and a JSON body, and is never answered with CORS "
                "headers."
            ),
        )
        async def playground_token(request: Request[Any, Any, Any]) -> Response[bytes]:
            scope = cast("Scope", request.scope)
            origin, own = judge_origin(scope)
            if not own:
                # Behind a TLS-terminating proxy the page's Origin is https://… while the
                # request reached the gateway over http: the proxy must be in TRUSTED_PROXIES.
                return _refusal(
                    403,
                    ("No Origin" if origin is None else "Origin not allowed")
                    + ": only the playground page itself may ask for a development token "
                    "(behind a proxy, list it in TRUSTED_PROXIES)",
                )
            if not _is_json(scope):
                return _refusal(415, "Send the body as Content-Type: application/json")
            try:
                data = _TOKEN_REQUEST.decode(await request.body())
            except msgspec.ValidationError as exc:
                return _refusal(400, f"Invalid body: {exc}")
            except msgspec.DecodeError:
                return _refusal(400, 'Invalid body: expected JSON like {"sub": "me"}')
            issued = TokenIssued(mint(data.sub, time.time() + data.ttl))
            return Response(
                msgspec.json.encode(issued), media_type=MediaType.JSON, headers=_TOKEN_HEADERS
            )

        routes.append(playground_token)
    return routes

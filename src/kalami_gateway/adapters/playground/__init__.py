"""The browser playground: ``GET /playground`` (one page, its ES module and stylesheet, shipped
in this package) and, in stub mode only, ``POST /playground/token`` for development tokens.

The token route never exists in front of the real backend: it is built only when the
gateway runs its built-in stub backend, so nothing can mint tokens for real learners.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Final

import msgspec
from litestar import MediaType, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

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


class TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sub: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    ttl: Annotated[int, msgspec.Meta(ge=10, le=86_400)] = 3600  # seconds


class TokenIssued(msgspec.Struct, frozen=True):
    token: str


Mint = Callable[[str, float], str]  # (sub, expires_at) -> a token the gateway accepts


def _asset(name: str) -> str:
    return (resources.files(__package__) / name).read_text(encoding="utf-8")


def _asset_route(name: str, media_type: str) -> HTTPRouteHandler:
    body = _asset(name)

    @get(f"{PAGE_PATH}/{name}", sync_to_thread=False, include_in_schema=False, name=name)
    def playground_asset() -> Response[str]:
        return Response(body, media_type=media_type, headers=_HEADERS)

    return playground_asset


def playground_routes(stub_mode: bool, mint: Mint) -> list[HTTPRouteHandler]:
    """The page (its mode, ``stub`` or ``http``, written into it) and, in stub mode, the
    development token route."""
    page = _asset("index.html").replace("{{MODE}}", "stub" if stub_mode else "http")

    @get(PAGE_PATH, media_type=MediaType.HTML, sync_to_thread=False, include_in_schema=False)
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
            include_in_schema=False,
        )
        async def playground_token(data: JSONBody[TokenRequest]) -> TokenIssued:
            return TokenIssued(mint(data.sub, time.time() + data.ttl))

        routes.append(playground_token)
    return routes

"""``GET /schema/asyncapi.json``: the route serving the document."""

from __future__ import annotations

import functools

import msgspec
from litestar import MediaType, get
from litestar.handlers import HTTPRouteHandler

from kalami_gateway.adapters.http.asyncapi.document import ASYNCAPI_PATH, asyncapi_document


@functools.cache
def encoded_document() -> bytes:
    """The document, built and encoded on its first request, not at every worker's start
    (3 ms and 70 KB each, for a page few ever ask for)."""
    return msgspec.json.encode(asyncapi_document())


def asyncapi_route() -> HTTPRouteHandler:
    """The WebSocket protocol as an AsyncAPI 3.0 document, encoded once (on its first
    request). Like /schema/openapi.json, not itself in the OpenAPI schema."""

    @get(ASYNCAPI_PATH, sync_to_thread=False, include_in_schema=False, media_type=MediaType.JSON)
    def asyncapi() -> bytes:
        return encoded_document()

    return asyncapi

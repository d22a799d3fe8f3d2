"""``GET /schema/asyncapi.json``: the route serving the document."""

from __future__ import annotations

import msgspec
from litestar import MediaType, get
from litestar.handlers import HTTPRouteHandler

from kalami_gateway.adapters.http.asyncapi.document import ASYNCAPI_PATH, asyncapi_document


def asyncapi_route() -> HTTPRouteHandler:
    """The WebSocket protocol as an AsyncAPI 3.0 document, encoded once (when the app is
    made). Like /schema/openapi.json, not itself in the OpenAPI schema."""
    document = msgspec.json.encode(asyncapi_document())

    @get(ASYNCAPI_PATH, sync_to_thread=False, include_in_schema=False, media_type=MediaType.JSON)
    def asyncapi() -> bytes:
        return document

    return asyncapi

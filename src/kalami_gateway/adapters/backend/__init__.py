"""The FastAPI backend, as the gateway calls it for sessions and turns: over HTTP
(``HttpxBackend``, on aiohttp's transport through httpx; ``read_turn_reply`` reads a turn's
answer liberally, as the real backend writes it) or, with ``BACKEND_MODE=stub``, in process
(``StubBackend``). Both implement the domain's ``Backend`` port. ``BackendDeadlines`` names
the deadlines the HTTP client makes of BACKEND_TIMEOUT.

The HTTP side is imported on first use, so that a stub gateway never loads httpx and aiohttp
(10 MiB of every such process, measured in docs/operations.md, "Memory per worker")."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from kalami_gateway.adapters.backend.deadlines import BackendDeadlines
from kalami_gateway.adapters.backend.replies import read_turn_reply
from kalami_gateway.adapters.backend.stub import StubBackend

if TYPE_CHECKING:
    from kalami_gateway.adapters.backend.http import (
        MAX_BACKEND_CONNECTIONS,
        HttpxBackend,
        build_client,
    )

__all__ = [
    "MAX_BACKEND_CONNECTIONS",
    "BackendDeadlines",
    "HttpxBackend",
    "StubBackend",
    "build_client",
    "read_turn_reply",
]

_HTTP: Final = frozenset({"MAX_BACKEND_CONNECTIONS", "HttpxBackend", "build_client"})


def __getattr__(name: str) -> Any:
    if name not in _HTTP:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.http"), name)

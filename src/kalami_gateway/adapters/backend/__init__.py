"""The FastAPI backend, as the gateway calls it for sessions and turns: over HTTP
(``HttpxBackend``, on aiohttp's transport through httpx; ``read_turn_reply`` reads a turn's
answer liberally, as the real backend writes it) or, with ``BACKEND_MODE=stub``, in process
(``StubBackend``). Both implement the domain's ``Backend`` port. ``BackendDeadlines`` names
the deadlines the HTTP client makes of BACKEND_TIMEOUT."""

from kalami_gateway.adapters.backend.deadlines import BackendDeadlines
from kalami_gateway.adapters.backend.http import MAX_BACKEND_CONNECTIONS, HttpxBackend, build_client
from kalami_gateway.adapters.backend.replies import read_turn_reply
from kalami_gateway.adapters.backend.stub import StubBackend

__all__ = [
    "MAX_BACKEND_CONNECTIONS",
    "BackendDeadlines",
    "HttpxBackend",
    "StubBackend",
    "build_client",
    "read_turn_reply",
]

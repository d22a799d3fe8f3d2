"""The connections' calls to the backend: each bounded by its deadline, each failure counted
and logged one way (the caller then tells the connection's state machine)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Final, TypeVar

from kalami_gateway.application.limits import ServiceLimits
from kalami_gateway.domain import protocol as p
from kalami_gateway.domain.ports import (
    Backend,
    BackendError,
    BackendErrorKind,
    BackendHealth,
    Metrics,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# The code a failed call's error carries, by the way it failed (the same words as the HTTP
# side's 502 and 504 where the meaning is the same).
BACKEND_ERROR_CODES: Final[Mapping[BackendErrorKind, p.ErrorCode]] = {
    BackendErrorKind.UNREACHABLE: p.ErrorCode.BACKEND_UNAVAILABLE,
    BackendErrorKind.TIMEOUT: p.ErrorCode.BACKEND_TIMEOUT,
    BackendErrorKind.REJECTED: p.ErrorCode.BACKEND_REJECTED,
    BackendErrorKind.INVALID_REPLY: p.ErrorCode.BACKEND_INVALID_REPLY,
}


def backend_problem(exc: BackendError, message: str) -> p.Problem:
    """What the client is told of a failed backend call: ``message`` (which names the call and
    carries ``exc.detail``), the code of the way it failed, and the backend's status when it
    rejected the call."""
    status = exc.status if exc.kind is BackendErrorKind.REJECTED else None
    return p.Problem(message, BACKEND_ERROR_CODES[exc.kind], status=status)


class BackendCalls:
    def __init__(self, backend: Backend, metrics: Metrics, limits: ServiceLimits) -> None:
        self._backend = backend
        self._metrics = metrics
        self._deadline = limits.backend_call_deadline
        self._readiness_deadline = limits.readiness_deadline

    async def on_time(self, call: Awaitable[T]) -> T:
        """A backend call that finishes or fails within BACKEND_TIMEOUT of its start, whatever
        the backend does (httpx's own timeouts bound each read, not the call)."""
        try:
            async with asyncio.timeout(self._deadline):
                return await call
        except TimeoutError:
            raise BackendError(BackendErrorKind.TIMEOUT, "the backend timed out.") from None

    def failed(self, what: str, connection_id: str, exc: BackendError) -> None:
        """A connection's backend call failed: counted by kind, logged as ``what``."""
        self._metrics.backend_error(exc.kind)
        log.warning(
            what,
            extra={"connection_id": connection_id, "kind": exc.kind.value, "status": exc.status},
        )

    async def health(self) -> BackendHealth:
        """The backend's readiness, within the lower of 5 s and BACKEND_TIMEOUT."""
        try:
            async with asyncio.timeout(self._readiness_deadline):
                return await self._backend.health()
        except TimeoutError:
            return BackendHealth.UNREACHABLE

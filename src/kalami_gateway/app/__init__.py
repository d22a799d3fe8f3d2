"""Composition root: settings, container, app factory, server and CLI.

``create_app`` is imported on first use, so reading settings does not load the web stack.

Importing this package also keeps a few packages' optional extras out of the process (see
``UNUSED_EXTRAS``): every serving process (``serve``, each ``--workers`` worker) imports it
before any of them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from kalami_gateway.app.factory import GatewayApp, create_app

__all__ = ["UNUSED_EXTRAS", "GatewayApp", "create_app"]

# Modules some of the gateway's dependencies import if they are installed, for features the
# gateway never uses, and the packages that do so: those packages find them missing and go
# without. Measured per worker (docs/operations.md, "Memory per worker"): 6 MiB of a 74 MiB
# worker, 13 MiB where the development set is installed (FastAPI and Starlette).
# - structlog: rich, for its default console tracebacks (app/logs.py sets plain ones); httpx:
#   rich and pygments, for its command-line client.
# - uvicorn: watchfiles, for --reload.
# - redis: the OpenTelemetry metrics SDK and API, for its own metrics, off unless started.
# - dependency-injector: FastAPI, Flask, Starlette and fast-depends (installed only with the
#   development set), for wiring their handlers, which the gateway does not do.
UNUSED_EXTRAS: Final = {
    "rich": ("structlog", "httpx"),
    "pygments": ("httpx",),
    "watchfiles": ("uvicorn",),
    "opentelemetry.sdk.metrics": ("redis",),
    "opentelemetry.metrics": ("redis",),
    "fastapi": ("dependency_injector",),
    "flask": ("dependency_injector",),
    "werkzeug": ("dependency_injector",),
    "starlette": ("dependency_injector",),
    "fast_depends": ("dependency_injector",),
}


class UnusedExtras:
    """A finder that answers "not installed" when a module of ``UNUSED_EXTRAS`` is imported by
    one of the packages named for it; any other import of it (the code importing it
    directly, a test) is left alone, and so is one already imported."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        importers = UNUSED_EXTRAS.get(name)
        if importers is None:
            return None
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith("importlib"):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame is not None else ""
        if importer.partition(".")[0] in importers:
            raise ModuleNotFoundError(f"{name} is not loaded for {importer}", name=name)
        return None


if not any(isinstance(finder, UnusedExtras) for finder in sys.meta_path):
    sys.meta_path.insert(0, UnusedExtras())


def __getattr__(name: str) -> Any:
    if name in ("GatewayApp", "create_app"):
        from kalami_gateway.app import factory

        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

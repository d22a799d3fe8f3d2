"""Composition root: settings, container, app factory, server and CLI.

``create_app`` is imported on first use, so reading settings does not load the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kalami_gateway.app.factory import GatewayApp, create_app

__all__ = ["GatewayApp", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kalami_gateway.app import factory

        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

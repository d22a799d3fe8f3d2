"""Composition root: settings, container, app factory, server and CLI."""

from kalami_gateway.app.factory import GatewayApp, create_app

__all__ = ["GatewayApp", "create_app"]

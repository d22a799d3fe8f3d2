"""Kalami Gateway: the real-time WebSocket and REST edge of the Kalami language-learning app."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kalami-gateway")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]

"""What can go wrong on the way to the backend, as the relay tells it apart: the backend
unreachable or breaking the protocol (502), too slow (504), or every connection busy (503)."""

from __future__ import annotations


class UpstreamError(Exception):
    """The backend could not be reached, or broke the connection or the protocol."""


class UpstreamTimeout(UpstreamError):  # a kind of UpstreamError, named for the domain
    """The backend took longer than the timeout."""


class PoolExhausted(UpstreamError):
    """Every upstream connection stayed busy for the whole wait."""

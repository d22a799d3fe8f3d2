"""Checks on what a client put in a request line and its Host header, before anything is routed.

Pure functions on raw bytes, so they can be tested exhaustively and as an attacker would.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote_to_bytes

# A host (a DNS name, IPv4 address or bracketed IPv6 literal) and an optional port.
_HOST: Final = re.compile(rb"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# What some backends treat as a path separator once they have decoded the path.
_WIDE_SEPARATORS: Final = re.compile(rb"/|\\|%2[Ff]|%5[Cc]")


def valid_host(value: bytes) -> bool:
    """A Host header value a client may send: ``name[:port]``, nothing else."""
    return _HOST.fullmatch(value) is not None


def climbs_out(path: bytes) -> bool:
    """Whether ``path`` (the part after a base path, starting with ``/``) would leave the
    base once a server resolves its dot-segments.

    Judged twice, pessimistically: with ``/`` as the only separator, and with ``\\``,
    ``%2F`` and ``%5C`` as separators too (as a server that decodes before normalising
    sees it). A segment is a dot-segment after percent-decoding (``%2e%2e`` is ``..``).
    """
    if b"." not in path and b"%" not in path:
        return False  # no dot-segment can hide in it (the common case: ~0.1 µs, not ~2)
    return _climbs(path.split(b"/")) or _climbs(_WIDE_SEPARATORS.split(path))


def _climbs(segments: list[bytes]) -> bool:
    depth = 0
    for segment in segments[1:]:  # the first is what precedes the leading "/"
        if not segment:
            continue  # "a//b": many servers collapse it, so it earns no depth
        if b"." in segment or b"%" in segment:
            decoded = unquote_to_bytes(segment)
            if decoded == b"..":
                depth -= 1
                if depth < 0:
                    return True
                continue
            if decoded == b".":
                continue
        depth += 1
    return False


class TrustedPeers:
    """The peers (addresses, or networks in CIDR form) whose forwarding headers are believed."""

    _CACHE_LIMIT: Final = 4096

    def __init__(self, entries: Iterable[str]) -> None:
        listed = tuple(entries)
        self._exact = frozenset(e for e in listed if "/" not in e)
        self._networks = tuple(ipaddress.ip_network(e, strict=False) for e in listed if "/" in e)
        self._seen: dict[str, bool] = {}

    def __contains__(self, peer: str) -> bool:
        if peer in self._exact:
            return True
        if not self._networks:
            return False
        known = self._seen.get(peer)
        if known is None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                known = False
            else:
                known = any(address in network for network in self._networks)
            if len(self._seen) < self._CACHE_LIMIT:
                self._seen[peer] = known
        return known

from __future__ import annotations

import pytest

from kalami_gateway.domain.ports import ConnectionEntry
from kalami_gateway.domain.registry import InMemoryConnectionRegistry


def entry(connection_id: str, user_id: str) -> ConnectionEntry:
    return ConnectionEntry(connection_id, user_id, token_expires_at=100.0, connected_at=1.0)


def test_counts_connections_and_distinct_users() -> None:
    registry = InMemoryConnectionRegistry()
    registry.add(entry("c1", "alice"))
    registry.add(entry("c2", "alice"))
    registry.add(entry("c3", "bob"))
    stats = registry.stats()
    assert (stats.connections, stats.users, stats.accepted_total, stats.peak_connections) == (
        3,
        2,
        3,
        3,
    )
    assert {e.connection_id for e in registry.for_user("alice")} == {"c1", "c2"}
    assert registry.get("c3") == entry("c3", "bob")


def test_removal_goes_back_to_zero_and_keeps_the_history() -> None:
    registry = InMemoryConnectionRegistry()
    registry.add(entry("c1", "alice"))
    registry.add(entry("c2", "alice"))
    assert registry.remove("c1") == entry("c1", "alice")
    assert registry.stats().users == 1
    registry.remove("c2")
    stats = registry.stats()
    assert (stats.connections, stats.users, stats.accepted_total, stats.peak_connections) == (
        0,
        0,
        2,
        2,
    )
    assert registry.for_user("alice") == []
    assert registry.entries() == []


def test_removing_twice_or_unknown_is_harmless() -> None:
    registry = InMemoryConnectionRegistry()
    registry.add(entry("c1", "alice"))
    registry.remove("c1")
    assert registry.remove("c1") is None
    assert registry.remove("nope") is None
    assert registry.get("c1") is None


def test_a_connection_id_cannot_be_registered_twice() -> None:
    registry = InMemoryConnectionRegistry()
    registry.add(entry("c1", "alice"))
    with pytest.raises(ValueError, match="already registered"):
        registry.add(entry("c1", "bob"))
    assert registry.stats().users == 1

"""This instance's own connections: by user, accepted total and peak."""

from __future__ import annotations

import pytest

from kalami_gateway.domain.instance import InstanceConnections, InstanceStats


def test_connections_by_user_and_the_figures() -> None:
    mine = InstanceConnections()
    mine.add("c1", "alice")
    mine.add("c2", "alice")
    mine.add("c3", "bob")
    assert mine.stats() == InstanceStats(3, 2, 3, 3)
    assert mine.of_user("alice") == {"c1", "c2"}
    assert mine.remove("c1") == "alice"
    assert mine.remove("c1") is None  # twice is harmless
    assert mine.remove("nope") is None
    mine.remove("c2")
    assert mine.of_user("alice") == frozenset()
    assert mine.of_user("bob") == {"c3"}
    assert mine.stats() == InstanceStats(1, 1, 3, 3)  # accepted and peak stay


def test_a_connection_id_is_added_once() -> None:
    mine = InstanceConnections()
    mine.add("c1", "alice")
    with pytest.raises(ValueError, match="already"):
        mine.add("c1", "bob")
    assert mine.stats().users == 1

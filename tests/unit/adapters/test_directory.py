"""Directory rules: the cap, and the in-memory directory's bookkeeping (the full contract runs
against both directories in tests/integration/test_directory_contract.py)."""

from __future__ import annotations

import pytest

from kalami_gateway.adapters.memory.directory import InMemoryDirectory
from kalami_gateway.domain.directory import admits
from kalami_gateway.domain.ports import ConnectionEntry, DirectoryCounts


@pytest.mark.parametrize(
    ("open_now", "cap", "expected"),
    [(0, 1, True), (1, 1, False), (19, 20, True), (20, 20, False), (10_000, 0, True)],
)
def test_admits(open_now: int, cap: int, expected: bool) -> None:
    assert admits(open_now, cap) is expected


async def test_a_refused_user_leaves_no_trace() -> None:
    directory = InMemoryDirectory()
    first = ConnectionEntry("c1", "alice", 0, 0)
    assert await directory.register(first, cap=1)
    assert not await directory.register(ConnectionEntry("c2", "alice", 0, 0), cap=1)
    await directory.unregister(first)
    assert await directory.counts() == DirectoryCounts(1, 0, 0)
    assert await directory.connections_of("alice") == frozenset()

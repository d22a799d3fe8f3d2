"""The expiry queue: what comes due, in what order, and only once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kalami_gateway.domain.expiry import Due, DueItem, ExpiryQueue


def item(name: str, kind: Due = Due.EXPIRE) -> DueItem:
    return DueItem(name, kind, 100.0)


def test_entries_come_due_in_time_order_and_once() -> None:
    queue = ExpiryQueue()
    queue.schedule(30.0, item("c"))
    queue.schedule(10.0, item("a", Due.WARN))
    queue.schedule(20.0, item("b"))
    assert queue.due(9.9) == []
    assert queue.due(20.0) == [item("a", Due.WARN), item("b")]
    assert queue.due(20.0) == []
    assert len(queue) == 1
    assert queue.due(1e9) == [item("c")]


def test_ties_keep_the_order_they_were_scheduled_in() -> None:
    queue = ExpiryQueue()
    for name in "xyz":
        queue.schedule(5.0, item(name))
    assert [i.connection_id for i in queue.due(5.0)] == ["x", "y", "z"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1000), max_size=60), st.lists(st.floats(0, 1000), max_size=10))
def test_every_entry_comes_due_exactly_when_its_time_has_come(
    times: list[float], ticks: list[float]
) -> None:
    queue = ExpiryQueue()
    for n, at in enumerate(times):
        queue.schedule(at, DueItem(str(n), Due.EXPIRE, at))
    seen: list[DueItem] = []
    for now in sorted(ticks):
        for due in queue.due(now):
            assert due.expires_at <= now
            seen.append(due)
        taken = {s.connection_id for s in seen}
        assert all(at > now for n, at in enumerate(times) if str(n) not in taken)
    seen += queue.due(float("inf"))
    assert sorted(int(s.connection_id) for s in seen) == list(range(len(times)))


def test_retain_keeps_only_what_is_asked_and_the_order() -> None:
    queue = ExpiryQueue()
    for n in range(10):
        queue.schedule(float(10 - n), item(f"c{n}"))
    queue.retain(lambda i: int(i.connection_id[1:]) % 2 == 0)
    assert len(queue) == 5
    assert [i.connection_id for i in queue.due(100.0)] == ["c8", "c6", "c4", "c2", "c0"]

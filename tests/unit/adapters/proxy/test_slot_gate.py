"""The upstream pool's slot gate: never more holders than slots, waiters served in order,
a timed-out or cancelled waiter never swallows a slot."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kalami_gateway.adapters.proxy.errors import PoolExhausted
from kalami_gateway.adapters.proxy.pool import SlotGate


async def test_a_free_slot_is_taken_at_once_and_a_full_gate_times_out() -> None:
    gate = SlotGate(1)
    await gate.take(1)
    with pytest.raises(PoolExhausted):
        await gate.take(0.01)
    gate.give()
    await gate.take(0.01)  # the timed-out waiter left nothing behind
    assert gate.free == 0


async def test_waiters_are_served_in_arrival_order() -> None:
    gate = SlotGate(1)
    await gate.take(1)
    order: list[int] = []

    async def waiter(n: int) -> None:
        await gate.take(5)
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        gate.give()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    gate = SlotGate(1)
    await gate.take(1)
    first = asyncio.create_task(gate.take(5))
    second = asyncio.create_task(gate.take(5))
    await asyncio.sleep(0)
    gate.give()  # resolves first's waiter...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)  # the slot went on to the next waiter
    assert gate.free == 0


# An action: take (with a wait that may lapse), give back a held slot, or cancel a waiter.
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.sampled_from([0.0, 0.001, 1.0])),
        st.tuples(st.just("give"), st.just(0.0)),
        st.tuples(st.just("cancel"), st.just(0.0)),
        st.tuples(st.just("tick"), st.just(0.0)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 3), actions=ACTIONS)
def test_never_more_holders_than_slots_and_every_slot_comes_back(
    size: int, actions: list[tuple[str, float]]
) -> None:
    async def run() -> None:
        gate = SlotGate(size)
        holders = 0
        waiting: list[asyncio.Task[None]] = []

        async def take(wait: float) -> None:
            nonlocal holders
            await gate.take(wait)
            holders += 1
            assert holders <= size

        for action, wait in actions:
            if action == "take":
                waiting.append(asyncio.create_task(take(wait)))
            elif action == "give" and holders:
                holders -= 1
                gate.give()
            elif action == "cancel" and waiting:
                waiting.pop(0).cancel()
            await asyncio.sleep(0 if action != "tick" else 0.0015)
        for task in waiting:
            task.cancel()  # whoever still waits gives up now
        await asyncio.gather(*waiting, return_exceptions=True)
        for _ in range(holders):
            gate.give()
        assert gate.free == size  # nothing leaked, nothing invented

    asyncio.run(run())

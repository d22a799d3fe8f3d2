"""The light stand-ins given to uvicorn's WebSocket protocol: asyncio.Queue's semantics for the
three calls uvicorn makes, and asyncio.Event's for the writable flag."""

from __future__ import annotations

import asyncio

import pytest

from kalami_gateway.adapters.server.standins import ReceiveQueue, WritableFlag


async def test_items_come_out_in_order_and_empty_says_so() -> None:
    queue = ReceiveQueue()
    assert queue.empty()
    for n in range(5):
        queue.put_nowait(n)
    assert not queue.empty()
    assert [await queue.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert queue.empty()


async def test_a_waiting_get_is_woken_by_a_put() -> None:
    queue = ReceiveQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait("event")
    assert await getter == "event"


async def test_a_cancelled_get_loses_nothing() -> None:
    queue = ReceiveQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("kept")  # wakes the getter...
    getter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert not queue.empty()
    assert await queue.get() == "kept"


async def test_the_writable_flag_holds_senders_until_set() -> None:
    flag = WritableFlag()
    await flag.wait()  # set from the start
    flag.clear()
    senders = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in senders)
    flag.set()
    await asyncio.gather(*senders)
    assert flag.is_set()

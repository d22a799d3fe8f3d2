"""SocketControl.pause: a rate limit's wait, cut short when the socket goes (issue 24, row 8:
a throttled client that vanished was held for minutes while its queued messages were read
at its rate)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from kalami_gateway.adapters.server.socket_control import SocketControl, wake


def fake_protocol(lost: bool = False) -> SimpleNamespace:
    return SimpleNamespace(loop=asyncio.get_running_loop(), _lost=lost, _pausing=None, _slow=False)


async def test_a_pause_ends_when_the_socket_goes() -> None:
    protocol = fake_protocol()
    control = SocketControl(cast(Any, protocol))
    pausing = asyncio.create_task(control.pause(3600))
    for _ in range(3):
        await asyncio.sleep(0)
    assert protocol._pausing is not None
    protocol._lost = True
    wake(protocol._pausing)  # what connection_lost does
    await asyncio.wait_for(pausing, 1)
    assert protocol._pausing is None


async def test_no_pause_once_the_socket_is_gone() -> None:
    protocol = fake_protocol(lost=True)
    await asyncio.wait_for(SocketControl(cast(Any, protocol)).pause(3600), 1)


async def test_slow_says_whether_the_protocol_let_the_peer_go() -> None:
    protocol = fake_protocol()
    control = SocketControl(cast(Any, protocol))
    assert not control.slow
    protocol._slow = True
    assert control.slow

"""Per-connection rate limits by back-pressure (issue 11): a flooding socket is read at its
rate, loses nothing and is not mistaken for dead; other sockets are not slowed."""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.client import connect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import make_settings, recv_json, running_gateway, token_for

PING = '{"type":"ping"}'


async def test_a_flooder_is_read_at_its_rate_loses_nothing_and_stays_connected(
    backend: BackendServer,
) -> None:
    rate, count = 400, 2000  # a burst of 800 passes, the other 1200 take about 3 s
    settings = make_settings(
        backend.url, ws_message_rate=rate, ws_heartbeat_interval_ms=500, ws_audio_rate=0
    )
    async with (
        running_gateway(settings) as gw,
        connect(gw.ws(token_for("flood")), max_queue=None) as flooder,
        connect(gw.ws(token_for("calm"))) as calm,
    ):
        await recv_json(flooder)
        await recv_json(calm)
        started = time.monotonic()
        for _ in range(count):
            await flooder.send(PING)  # as fast as the socket takes them

        async def all_pongs() -> float:
            for _ in range(count):
                assert (await recv_json(flooder, within=15))["type"] == "pong"
            return time.monotonic() - started

        counting = asyncio.create_task(all_pongs())
        worst = 0.0
        while not counting.done():  # meanwhile another socket pings: it is not slowed
            sent = time.monotonic()
            await calm.send(PING)
            assert (await recv_json(calm))["type"] == "pong"
            worst = max(worst, time.monotonic() - sent)
            await asyncio.sleep(0.05)
        took = await counting
        # every ping answered (nothing lost), no faster than the rate allows after the
        # burst, and the flooder outlived many 0.5 s heartbeat deadlines
        assert took >= (count - 2 * rate) / rate * 0.8
        assert worst < 0.5
        await flooder.send(PING)
        assert (await recv_json(flooder))["type"] == "pong"


async def test_zero_turns_the_limit_off(backend: BackendServer) -> None:
    settings = make_settings(backend.url, ws_message_rate=0)
    async with running_gateway(settings) as gw, connect(gw.ws(token_for("a"))) as ws:
        await recv_json(ws)
        started = time.monotonic()
        for _ in range(500):
            await ws.send(PING)
        for _ in range(500):
            assert (await recv_json(ws))["type"] == "pong"
        assert time.monotonic() - started < 5  # at a limit of 1/s this would take minutes

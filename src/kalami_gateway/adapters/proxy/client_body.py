"""Reading a request body from the client, within its deadlines (``BodyPace``), and noticing
the client leave: what the relay needs of ASGI ``receive``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from kalami_gateway.adapters.asgi import Receive
from kalami_gateway.adapters.proxy.deadlines import BodyPace


class ClientGone(Exception):
    """The client disconnected before its exchange finished."""


class ClientStalled(Exception):
    """The client stopped sending its request body, or sent it too slowly."""


async def next_message(receive: Receive, pace: BodyPace) -> tuple[bytes, bool]:
    """The client's next body bytes and whether more follow, within the body's pace."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(pace.deadline(loop.time())):
            message = await receive()
    except TimeoutError:
        if pace.behind(loop.time()):
            raise ClientStalled("the client sent the body slower than the minimum") from None
        raise ClientStalled("the client sent no body bytes within the timeout") from None
    if message["type"] == "http.disconnect":
        raise ClientGone("client disconnected while sending the body")
    chunk: bytes = message.get("body", b"")
    pace.received(len(chunk))
    return chunk, message.get("more_body", False)


async def read_body(
    receive: Receive, first_wait: float, pace_from: Callable[[float], BodyPace]
) -> bytes:
    """A small body, whole. Its first message (usually all of it) has one plain deadline,
    ``first_wait``, which is what its pace allows before any byte: no pace is kept for a body
    that comes at once (~0.7 µs a request). One in several messages is paced from there."""
    try:
        async with asyncio.timeout(first_wait) as first_deadline:
            message = await receive()
    except TimeoutError:
        raise ClientStalled("the client sent no body bytes within the timeout") from None
    if message["type"] == "http.disconnect":
        raise ClientGone("client disconnected while sending the body")
    chunk: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return chunk
    when = first_deadline.when()
    pace = pace_from((when if when is not None else 0.0) - first_wait)  # when() is set here
    pace.received(len(chunk))
    parts = [chunk]
    while True:
        chunk, more = await next_message(receive, pace)
        parts.append(chunk)
        if not more:
            return b"".join(parts)


async def stream_body(receive: Receive, pace: BodyPace) -> AsyncIterator[bytes]:
    """A body as it comes, message by message (empty ones skipped), within its pace."""
    while True:
        chunk, more = await next_message(receive, pace)
        if chunk:
            yield chunk
        if not more:
            return


async def watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    """Sets ``gone`` when the client disconnects (every other message is let go)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return

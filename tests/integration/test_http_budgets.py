"""Request heads and pipelined requests are budgeted where the bytes arrive (issue 24, rows 1
and 2), as an attacker without a token would use them, against a real ``kalami-gateway serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from pathlib import Path

from tests.integration.test_lifecycle import free_port, gateway_env, process

GATEWAY = [sys.executable, "-m", "kalami_gateway", "serve"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def answer_to_an_endless_head(port: int, head: bytes, budget: int) -> bytes:
    """Send ``head`` then one byte after another of the same line, never ending it, until
    the gateway answers or ``budget`` bytes are sent; what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(head)
        sent = len(head)
        while sent < budget:
            writer.write(b"a" * 16384)
            sent += 16384
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(4096), 0.001)
                if answer:
                    break
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        if not answer:
            answer = await asyncio.wait_for(reader.read(4096), 5)
    except ConnectionError:
        pass
    finally:
        writer.close()
    return answer


async def test_a_head_line_that_never_ends_is_431_long_before_the_deadline() -> None:
    port = free_port()
    env = gateway_env("http://127.0.0.1:9", port, BACKEND_MODE="stub", HTTP_HEADER_TIMEOUT="60000")
    async with process(GATEWAY, env, port) as proc:
        before = rss_kib(proc.pid)
        for head in (
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Value: ",  # a header value
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Name-",  # a header name
            b"GET /health?",  # the request line
        ):
            answer = await answer_to_an_endless_head(port, head, budget=8 << 20)
            assert answer.split(b"\r\n", 1)[0] in (
                b"HTTP/1.1 431 Request Header Fields Too Large",
                b"HTTP/1.1 414 URI Too Long",
            ), answer[:200]
        # The head was refused by its raw size: the gateway never held megabytes of it.
        assert rss_kib(proc.pid) - before < 20 * 1024


async def test_pipelined_requests_that_are_never_read_are_not_all_parsed() -> None:
    port = free_port()
    env = gateway_env("http://127.0.0.1:9", port, BACKEND_MODE="stub")
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    async with process(GATEWAY, env, port) as proc:
        before = rss_kib(proc.pid)
        socks = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            socks.append(sock)
        blob = request * 100_000  # 3.3 MB, never read back
        for sock in socks:
            sent = 0
            for _ in range(200):
                try:
                    sent += sock.send(blob[sent:])
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                if sent == len(blob):
                    break
        await asyncio.sleep(1.0)
        grown = rss_kib(proc.pid) - before
        for sock in socks:
            sock.close()
        # Unbounded, 100,000 parsed and queued requests took ~470 MiB; bounded, a few
        # requests each and the unparsed rest of one read.
        assert grown < 30 * 1024, f"RSS grew {grown} KiB"
        # And the gateway still serves.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_pipelined_requests_are_all_answered_in_order() -> None:
    """Within the bound, pipelining still works: every request answered, in order."""
    port = free_port()
    env = gateway_env("http://127.0.0.1:9", port, BACKEND_MODE="stub")
    async with process(GATEWAY, env, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        paths = [b"/health", b"/stats", b"/nope"] * 40
        writer.write(b"".join(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % path for path in paths))
        statuses = []
        for _ in paths:
            status = await asyncio.wait_for(reader.readline(), 10)
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            statuses.append(int(status.split()[1]))
        writer.close()
        assert statuses == [200, 200, 404] * 40


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the gateway sends until it closes the connection (bounded)."""
    got = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            got += chunk
    return got


async def test_a_body_no_route_reads_is_not_drained_at_the_clients_pace() -> None:
    port = free_port()
    env = gateway_env("http://127.0.0.1:9", port, BACKEND_MODE="stub")
    async with process(GATEWAY, env, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /no-such-route HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
        )
        writer.write(b"x" * 1000)

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(0.1)

        dripping = asyncio.create_task(drip())
        answer = await read_until_closed(reader, within=5)
        dripping.cancel()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 404"), answer[:100]


async def test_a_body_that_stalls_on_the_gateways_own_route_is_408_at_the_deadline() -> None:
    port = free_port()
    env = gateway_env(
        "http://127.0.0.1:9",
        port,
        BACKEND_MODE="stub",
        HTTP_HEADER_TIMEOUT="1000",
        REDIS_URL="redis://127.0.0.1:6379/0",
        REDIS_KEY_PREFIX=f"kalami-test-{port}:",
        PUSH_API_KEY="push-key-for-tests-0123456789",
    )
    async with process(GATEWAY, env, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /internal/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer push-key-for-tests-0123456789\r\n"
            b"Content-Length: 200\r\n\r\n"
            b'{"userId": "a", "payload": {'
        )

        async def drip() -> None:  # a byte every 300 ms: never a 1 s stall
            with contextlib.suppress(ConnectionError):
                for _ in range(30):
                    await asyncio.sleep(0.3)
                    writer.write(b" ")
                    await writer.drain()

        dripping = asyncio.create_task(drip())
        answer = await read_until_closed(reader, within=5)
        dripping.cancel()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b"Request body timed out" in answer

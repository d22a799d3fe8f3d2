"""The pool invariant under adversarial interleavings (issue 16), over real sockets.

Many concurrent clients mix ordinary requests with aborted large and chunked uploads, early
answers, HEADs, 500s, slow, dropping and protocol-breaking backend answers, in an order and with
timings hypothesis picks. Whatever the mix: every client that gets a 200 gets its own (the
backend echoes a tag unique to each request), a well-behaved request to a well-behaved route
is never answered 502/504, and the backend parses exactly the requests clients sent — once
each, never a request hidden in a body, never a parse error. A final sweep through every
pooled connection checks that none was left desynced.

``PROXY_FUZZ_EXAMPLES`` sets the number of examples (default 20, what CI runs).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Gateway, make_settings, running_gateway
from tests.integration.raw_backend import RawBackend
from tests.integration.raw_client import RawResponse, connect, read_response
from tests.integration.test_proxy_attacks import SMUGGLED, chunk, small_pool

POOL_SIZE = 3
TIMEOUT_MS = 500

# kind -> (method, route, whether the request and the route are both well behaved)
KINDS: dict[str, tuple[str, str, bool]] = {
    "get": ("GET", "ok", True),
    "head": ("HEAD", "ok", True),
    "post_small": ("POST", "ok", True),
    "post_large": ("POST", "ok", True),
    "chunked": ("POST", "ok", True),
    "early_finish": ("POST", "early", False),
    "abort_early_cl": ("POST", "early", False),
    "abort_early_chunked": ("POST", "early", False),
    "abort_head_early": ("HEAD", "early", False),
    "abort_ok": ("POST", "ok", False),
    "slow": ("GET", "slow/700", False),
    "drop": ("POST", "drop", False),
    "extra": ("GET", "extra", False),
    "head_body": ("HEAD", "head-body", False),
    "fail": ("POST", "fail", False),  # a 500, the connection kept open: it must be retired
}


@dataclass(frozen=True)
class Op:
    kind: str
    delay_ms: int
    split: int  # where an aborted body is cut


@dataclass
class Outcome:
    tag: str
    op: Op
    response: RawResponse | None = None


OPS = st.builds(
    Op,
    kind=st.sampled_from(sorted(KINDS)),
    delay_ms=st.integers(0, 60),
    split=st.integers(1, 200_000),
)


def request_bytes(op: Op, tag: str) -> tuple[bytes, bytes, bool]:
    """(head and the body that is sent, what is sent after the answer, whether to abort)."""
    method, route, _ = KINDS[op.kind]
    head = f"{method} /api/{route}/{tag} HTTP/1.1\r\nhost: gw\r\nx-tag: {tag}\r\n"
    if op.kind in ("get", "head", "slow", "extra", "head_body"):
        return (head + "\r\n").encode(), b"", False
    if op.kind in ("post_small", "fail"):
        return (head + "content-length: 5\r\n\r\nhello").encode(), b"", False
    if op.kind == "post_large":
        return (head + "content-length: 300000\r\n\r\n").encode() + b"L" * 300_000, b"", False
    if op.kind == "chunked":
        body = chunk(b"C" * op.split) + chunk(SMUGGLED) + b"0\r\n\r\n"
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + body, b"", False
    if op.kind == "drop":
        return (head + "content-length: 2\r\n\r\n{}").encode(), b"", False
    if op.kind == "early_finish":
        first = (head + "transfer-encoding: chunked\r\n\r\n").encode() + chunk(b"E" * 1000)
        return first, chunk(SMUGGLED) + b"0\r\n\r\n", False
    if op.kind in ("abort_early_chunked", "abort_head_early"):
        first = (head + "transfer-encoding: chunked\r\n\r\n").encode()
        return first + chunk(b"A" * op.split) + chunk(SMUGGLED), b"", True
    size = 300_000 + op.split  # abort_early_cl, abort_ok: a head promising more than is sent
    return (
        (head + f"content-length: {size}\r\n\r\n").encode() + b"A" * op.split + SMUGGLED,
        b"",
        True,
    )


async def run_op(gw: Gateway, op: Op, outcome: Outcome) -> None:
    await asyncio.sleep(op.delay_ms / 1000)
    method = KINDS[op.kind][0]
    first, after, abort = request_bytes(op, outcome.tag)
    reader, writer = await connect(gw.port)
    try:
        writer.write(first)
        await writer.drain()
        if op.kind == "abort_ok":
            await asyncio.sleep(0.02)
            return  # leaves mid-body without waiting for anything
        outcome.response = await read_response(reader, method, within=10)
        if after and not abort:
            writer.write(after)
            await writer.drain()
    except (ConnectionError, TimeoutError):
        outcome.response = None
    finally:
        writer.close()


def check_outcome(outcome: Outcome) -> None:
    response = outcome.response
    _, _, well_behaved = KINDS[outcome.op.kind]
    if response is None:
        assert not well_behaved, f"{outcome.op} got no response"
        return
    if response.status == 200 or (response.status == 500 and outcome.op.kind == "fail"):
        assert response.header("x-echo") == outcome.tag, f"{outcome.op} got another's response"
        if outcome.op.kind != "head":
            assert response.body == f"tag={outcome.tag}".encode()
    if well_behaved:
        assert response.status in (200, 503), f"{outcome.op} answered {response.status}"


async def run_example(ops: list[Op]) -> None:
    raw = RawBackend()
    await raw.start()
    try:
        config = make_settings(raw.url, backend_timeout_ms=TIMEOUT_MS)
        async with running_gateway(config, small_pool(config, POOL_SIZE)) as gw:
            outcomes = [Outcome(f"t{n}", op) for n, op in enumerate(ops)]
            await asyncio.gather(*(run_op(gw, o.op, o) for o in outcomes))
            for outcome in outcomes:
                check_outcome(outcome)
            # Every connection the pool kept must still carry exactly one exchange each.
            for n in range(POOL_SIZE + 1):
                probe = Outcome(f"probe{n}", Op("get", 0, 1))
                await run_op(gw, probe.op, probe)
                assert probe.response is not None
                assert (probe.response.status, probe.response.body) == (
                    200,
                    f"tag=probe{n}".encode(),
                )
        sent = {o.tag: KINDS[o.op.kind][0] for o in outcomes} | {
            f"probe{n}": "GET" for n in range(POOL_SIZE + 1)
        }
        parsed = raw.requests
        assert [r.tag for r in parsed if r.tag not in sent] == [], "a request nobody sent"
        assert all(c.parse_error is None for c in raw.connections)
        tags = [r.tag for r in parsed]
        assert len(tags) == len(set(tags)), "a request reached the backend twice"
        for request in parsed:
            assert request.method == sent[request.tag]
            assert request.target.split("/")[-1] == request.tag
    finally:
        await raw.stop()


@settings(
    max_examples=int(os.environ.get("PROXY_FUZZ_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("PROXY_FUZZ_RANDOM") is None,
)
@given(st.lists(OPS, min_size=2, max_size=10))
def test_every_client_gets_its_own_response_and_nothing_is_smuggled(ops: list[Op]) -> None:
    asyncio.run(run_example(ops))

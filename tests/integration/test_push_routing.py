"""The push API on real sockets: only the exact raw path ``/internal/push`` reaches it (a
load balancer's rule on the raw prefix ``/internal/`` cannot be sidestepped by spelling the
path another way), and a body is refused with 422 when it is nested past the limit or repeats
a key, at any level: never a 500, never a traceback in the log."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import ClientConnection

from kalami_gateway.adapters.errors import code_for
from kalami_gateway.adapters.http.routes import MAX_PUSH_DEPTH
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import Gateway, recv_json
from tests.integration.raw_client import RawResponse, exchange
from tests.integration.test_cluster import PUSH_KEY, cluster, device

GOOD_BODY = b'{"userId":"alice","payload":{"n":1}}'
OTHER_SPELLINGS = [
    "/%69nternal/push",
    "/internal%2Fpush",
    "/internal%2fpush",
    "//internal/push",
    "/internal//push",
    "/internal/push/",
    "/internal/push//",
    "/%2Finternal/push",
    "/internal/%70ush",
]


async def post(
    gateway: Gateway, target: str, body: bytes, key: str | None = PUSH_KEY
) -> RawResponse:
    """``POST target`` exactly as written: no client library normalises the path on the way."""
    auth = f"authorization: Bearer {key}\r\n" if key is not None else ""
    head = (
        f"POST {target} HTTP/1.1\r\nhost: gw\r\n{auth}content-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return await exchange(gateway.port, head.encode() + body, method="POST")


async def nothing_was_pushed(ws: ClientConnection) -> bool:
    """The device's next message answers a ping: no push arrived before it."""
    await ws.send('{"type":"ping"}')
    return bool((await recv_json(ws))["type"] == "pong")


def error_of(response: RawResponse) -> str:
    assert response.header("content-type") == "application/json"
    body = json.loads(response.body)
    assert list(body) == ["error", "code"]
    assert body["code"] == code_for(response.status)
    return str(body["error"])


@pytest.mark.parametrize("target", OTHER_SPELLINGS)
async def test_only_the_exact_raw_path_reaches_the_push_route(
    backend: BackendServer, prefix: str, target: str
) -> None:
    async with cluster(backend, prefix, size=1) as (gw,):
        phone = await device(gw, "alice")
        with_key = await post(gw, target, GOOD_BODY)
        without_key = await post(gw, target, GOOD_BODY, key=None)
        assert await nothing_was_pushed(phone)
        canonical = await post(gw, "/internal/push?from=test", GOOD_BODY)
        assert json.loads(canonical.body) == {"userId": "alice", "connections": 1}
        assert await recv_json(phone) == {"type": "push", "payload": {"n": 1}}
    assert (with_key.status, without_key.status, canonical.status) == (404, 404, 202)
    assert error_of(with_key)  # the gateway's error shape, not the framework's
    assert error_of(without_key)


def nested(depth: int) -> bytes:
    """A push body whose deepest value sits ``depth`` levels down (the body is level 1)."""
    levels = depth - 1  # the payload object and the objects inside it
    payload = '{"a":' * levels + "1" + "}" * levels
    return f'{{"userId":"alice","payload":{payload}}}'.encode()


async def test_a_deeply_nested_body_is_422_without_a_traceback(
    backend: BackendServer, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with cluster(backend, prefix, size=1) as (gw,):
        phone = await device(gw, "alice")
        deep = await post(gw, "/internal/push", nested(1000))
        past_limit = await post(gw, "/internal/push", nested(MAX_PUSH_DEPTH + 1))
        deep_list = await post(
            gw,
            "/internal/push",
            b'{"userId":"alice","payload":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}",
        )
        assert await nothing_was_pushed(phone)
        at_limit = await post(gw, "/internal/push", nested(MAX_PUSH_DEPTH))
        assert at_limit.status == 202
        assert (await recv_json(phone))["type"] == "push"
    for refused in (deep, past_limit, deep_list):
        assert refused.status == 422
        assert "nested" in error_of(refused)
    log = capsys.readouterr()
    assert "RecursionError" not in log.out + log.err
    assert "Traceback" not in log.out + log.err
    assert "unhandled_exception" not in log.out + log.err


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"userId":"a","userId":"alice","payload":{}}', "userId"),
        (b'{"userId":"alice","payload":{},"payload":{"n":1}}', "payload"),
        (b'{"userId":"alice","\\u0075serId":"bob","payload":{}}', "userId"),
        (b'{"userId":"alice","payload":{"kind":"a","kind":"b"}}', "kind"),
        (b'{"userId":"alice","payload":{"list":[{"x":{"deep":1,"deep":2}}]}}', "deep"),
    ],
)
async def test_a_repeated_key_at_any_level_is_422(
    backend: BackendServer, prefix: str, body: bytes, key: str
) -> None:
    async with cluster(backend, prefix, size=1) as (gw,):
        phone = await device(gw, "alice")
        response = await post(gw, "/internal/push", body)
        assert await nothing_was_pushed(phone)
    assert response.status == 422
    message = error_of(response)
    assert "Invalid push" in message
    assert "duplicate" in message
    assert repr(key) in message


async def test_the_limits_and_checks_still_hold_on_the_exact_path(
    backend: BackendServer, prefix: str
) -> None:
    async with cluster(backend, prefix, size=1) as (gw,):
        no_key = await post(gw, "/internal/push", GOOD_BODY, key=None)
        wrong_key = await post(gw, "/internal/push", GOOD_BODY, key="x" * len(PUSH_KEY))
        too_big = await post(
            gw, "/internal/push", b'{"userId":"a","payload":{"b":"' + b"x" * 70_000 + b'"}}'
        )
        not_json = await post(gw, "/internal/push", b"{not json")
        nan = await post(gw, "/internal/push", b'{"userId":"a","payload":{"n":NaN}}')
        no_user = await post(gw, "/internal/push", b'{"payload":{}}')
        array = await post(gw, "/internal/push", b'{"userId":"a","payload":[1]}')
    assert [r.status for r in (no_key, wrong_key, too_big)] == [401, 401, 413]
    assert [r.status for r in (not_json, nan, no_user, array)] == [422] * 4
    assert "userId" in error_of(no_user)
    assert "payload" in error_of(array)
    for response in (no_key, wrong_key, too_big, not_json, nan):
        assert error_of(response)

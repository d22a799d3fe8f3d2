"""The HTTP side as a newcomer meets it (issue 30): one error shape for everything the gateway
answers itself, a route map that lists what this configuration serves, no documentation UI
fetching scripts from a CDN, readiness that says what stub mode does. Over real sockets."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from kalami_gateway.adapters.errors import CODES
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import Gateway, make_settings, running_gateway

README = Path(__file__).resolve().parents[2] / "README.md"
PUSH_KEY = "push-key-0123456789abcdef"


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The gateway's one error shape, with the documented code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "code"}, body
    assert isinstance(body["error"], str)
    assert body["error"]
    assert body["code"] == code
    assert CODES[code] == status


async def raw_exchange(port: int, data: bytes, within: float = 15.0) -> tuple[int, dict[str, Any]]:
    """Send raw bytes, read the whole answer (the gateway closes after these): its status and
    JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    decoded: dict[str, Any] = json.loads(body)
    return status, decoded


@pytest.fixture
async def stub_gateway() -> Any:
    settings = make_settings(
        "http://127.0.0.1:9",
        backend_mode="stub",
        push_api_key=PUSH_KEY,
        http_header_timeout_ms=500,
        max_header_bytes=4096,
    )
    async with running_gateway(settings) as gw:
        yield gw


async def test_litestar_refusals_have_the_gateways_shape(
    stub_gateway: Gateway, client: httpx.AsyncClient
) -> None:
    base = stub_gateway.http
    assert_error(await client.get(f"{base}/no-such-route"), 404, "not_found")
    assert_error(await client.delete(f"{base}/health"), 405, "method_not_allowed")
    assert_error(await client.post(f"{base}/stats"), 405, "method_not_allowed")


async def test_the_gateways_own_refusals_have_one_shape(
    stub_gateway: Gateway, client: httpx.AsyncClient
) -> None:
    base = stub_gateway.http
    assert_error(await client.get(f"{base}/api/users"), 404, "api_not_served")
    assert_error(await client.get(f"{base}/health", headers={"host": "a b"}), 400, "invalid_host")
    push = f"{base}/internal/push"
    assert_error(await client.post(push, json={"userId": "u", "payload": {}}), 401, "unauthorized")
    auth = {"authorization": f"Bearer {PUSH_KEY}"}
    assert_error(await client.post(push, headers=auth, content=b"{"), 422, "invalid_payload")
    too_big = b'{"userId":"u","payload":{"x":"' + b"a" * 70_000 + b'"}}'
    assert_error(await client.post(push, headers=auth, content=too_big), 413, "payload_too_large")
    token = f"{base}/playground/token"
    assert_error(await client.post(token, json={"sub": "me"}), 403, "forbidden")  # no Origin
    own = {"origin": base}
    plain = {**own, "content-type": "text/plain"}
    assert_error(
        await client.post(token, content=b"sub=me", headers=plain), 415, "unsupported_media_type"
    )
    assert_error(await client.post(token, json={"sub": ""}, headers=own), 400, "bad_request")
    preflight = {"origin": "https://elsewhere.example", "access-control-request-method": "POST"}
    assert_error(await client.options(token, headers=preflight), 403, "forbidden")


async def test_refusals_written_by_the_server_protocol_have_the_same_shape(
    stub_gateway: Gateway,
) -> None:
    port = stub_gateway.port
    status, body = await raw_exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert (status, body["code"]) == (408, "request_timeout")
    status, body = await raw_exchange(port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
    assert (status, body["code"]) == (414, "uri_too_long")
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nx-big: " + b"b" * 8192 + b"\r\n\r\n"
    status, body = await raw_exchange(port, big)
    assert (status, body["code"]) == (431, "headers_too_large")
    assert set(body) == {"error", "code"}


async def test_every_code_is_documented_in_the_readme() -> None:
    text = README.read_text()
    section = text[text.index("### Errors") :]
    section = section[: section.index("\n## ")]
    documented = set(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, re.MULTILINE))
    assert documented == {(code, str(status)) for code, status in CODES.items()}


async def test_the_index_lists_every_route_this_configuration_serves(
    stub_gateway: Gateway, client: httpx.AsyncClient
) -> None:
    endpoints = (await client.get(f"{stub_gateway.http}/")).json()["endpoints"]
    assert endpoints["playground"] == "/playground"
    assert endpoints["push"] == "/internal/push"
    assert endpoints["schema"] == "/schema/openapi.json"
    assert "api" not in endpoints  # stub mode serves no /api
    for name, path in endpoints.items():
        if name == "websocket":
            continue
        answer = await client.get(f"{stub_gateway.http}{path}")
        assert answer.status_code in (200, 405), (name, path, answer.status_code)  # push: POST


async def test_the_index_of_a_gateway_with_a_backend_lists_api_and_nothing_switched_off(
    backend: BackendServer, client: httpx.AsyncClient
) -> None:
    async with running_gateway(make_settings(backend.url, playground=False)) as gw:
        endpoints = (await client.get(f"{gw.http}/")).json()["endpoints"]
        assert endpoints["api"] == "/api/{path}"
        assert "push" not in endpoints
        assert "playground" not in endpoints
        assert (await client.get(f"{gw.http}/playground")).status_code == 404
        assert (await client.get(f"{gw.http}/api/health")).status_code == 200


async def test_no_documentation_ui_and_nothing_from_a_cdn(
    stub_gateway: Gateway, client: httpx.AsyncClient
) -> None:
    base = stub_gateway.http
    for path in ("/schema", "/schema/", "/schema/swagger", "/schema/redoc", "/schema/elements"):
        answer = await client.get(f"{base}{path}")
        assert_error(answer, 404, "not_found")
        assert "cdn" not in answer.text
    schema = await client.get(f"{base}/schema/openapi.json")
    assert schema.status_code == 200
    assert schema.json()["info"]["title"] == "Kalami Gateway"


async def test_stub_readiness_says_api_is_not_served(
    stub_gateway: Gateway, client: httpx.AsyncClient
) -> None:
    ready = await client.get(f"{stub_gateway.http}/health/ready")
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ready", "backend": "stub", "api": "not served"},
    )

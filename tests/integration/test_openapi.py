"""The schema at /schema/openapi.json against the gateway's real answers, over real sockets.

Every route is driven into each answer it can give (a push without its key, too big, not
JSON, published, with Redis away; readiness with the backend healthy, unhealthy, away; the
playground's token asked for by its page, by another site, as a form, ...). Each answer's
status must be declared for its route, and its body must match the schema declared for that
status and media type; and every status a route declares must have been seen. A route that
starts answering a status it does not declare, or stops giving one it declares, fails here.
The schema's own structure (one error component, the push route's bearer key, routes present
exactly when served) is checked alongside.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from kalami_gateway.adapters.errors import HttpError
from kalami_gateway.app.settings import Settings
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    Gateway,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)
from tests.integration.raw_client import exchange
from tests.integration.redis_fixtures import REDIS_URL
from tests.json_schema import problems, references, resolve

PUSH_KEY = "push-key-for-the-schema-test-0123456789"
GOOD_PUSH = {"userId": "alice", "payload": {"n": 1}}
ERROR_REF = "#/components/schemas/HttpError"
EVIL = "https://evil.example"

Json = Any
Operation = tuple[str, str]  # (METHOD, path as the schema names it)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def assert_matches(document: Json, schema: Json, value: Json, what: str) -> None:
    found = list(problems(document, schema, value))
    assert not found, f"{what}: {found}"


def test_the_checker_refuses_what_the_schema_forbids() -> None:
    """The checker itself, on the shapes the gateway's schema uses: a checker that passes
    everything would make every other assertion here empty."""
    document = {
        "components": {
            "schemas": {
                "E": {
                    "type": "object",
                    "required": ["error", "code"],
                    "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
                }
            }
        }
    }
    error = {"$ref": "#/components/schemas/E"}
    assert not list(problems(document, error, {"error": "x", "code": "y"}))
    assert list(problems(document, error, {"error": "x"}))
    assert list(problems(document, error, {"error": 1, "code": "y"}))
    assert list(problems(document, error, ["error"]))
    maybe = {"oneOf": [{"type": "integer"}, {"type": "null"}]}
    assert not list(problems(document, maybe, None))
    assert list(problems(document, maybe, "1"))
    assert list(problems(document, {"type": "integer"}, True))
    assert list(problems(document, {"type": "string", "enum": ["a"]}, "b"))
    assert list(problems(document, {"type": "string", "const": "a"}, "b"))
    closed = {"type": "object", "properties": {"a": {}}, "additionalProperties": False}
    assert list(problems(document, closed, {"a": 1, "b": 2}))
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    assert list(problems(document, strings, {"a": 1}))


# --- driving routes and recording what they answer ------------------------------------------


@dataclass
class Answers:
    """What the routes answered, checked against the schema of the gateway that answered."""

    declared: dict[Operation, set[int]] = field(default_factory=dict)
    seen: dict[Operation, set[int]] = field(default_factory=dict)

    async def schema_of(self, gw: Gateway, client: httpx.AsyncClient) -> Json:
        response = await client.get(f"{gw.http}/schema/openapi.json")
        assert response.status_code == 200
        schema = response.json()
        for operation, statuses in operations(schema):
            # The same route declares the same answers whatever else is configured.
            assert self.declared.setdefault(operation, statuses) == statuses, operation
        return schema

    async def answer(
        self,
        client: httpx.AsyncClient,
        gw: Gateway,
        schema: Json,
        method: str,
        path: str,
        expect: int,
        **request: Any,
    ) -> httpx.Response:
        """``method path`` (``request``: httpx's arguments), meant to be answered ``expect``."""
        response = await client.request(method, f"{gw.http}{path}", **request)
        assert response.status_code == expect, (method, path, response.text[:200])
        route = path.split("?", 1)[0]
        operation = schema["paths"].get(route, {}).get(method.lower())
        assert operation is not None, f"{method} {route} answers but is not in the schema"
        declared = operation["responses"].get(str(response.status_code))
        assert declared is not None, f"{method} {route} answered {response.status_code}, undeclared"
        check_body(schema, declared, response, f"{method} {route} {response.status_code}")
        self.seen.setdefault((method, route), set()).add(response.status_code)
        return response


def operations(schema: Json) -> Iterator[tuple[Operation, set[int]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield (method.upper(), path), {int(status) for status in operation["responses"]}


def check_body(schema: Json, declared: Json, response: httpx.Response, what: str) -> None:
    """The body matches the schema declared for its media type."""
    media_type = response.headers["content-type"].split(";", 1)[0].strip()
    content = declared.get("content") or {}
    assert media_type in content, f"{what}: {media_type} answered, {list(content)} declared"
    body_schema = content[media_type]["schema"]
    if media_type == "application/json":
        assert_matches(schema, body_schema, response.json(), what)
    else:  # text: the page, the metrics
        assert_matches(schema, body_schema, response.text, what)


def settings_for(backend_url: str, **overrides: Any) -> Settings:
    return make_settings(backend_url, push_api_key=PUSH_KEY, **overrides)


def keyed(key: str = PUSH_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def device(gw: Gateway, user: str) -> ClientConnection:
    ws = await connect(gw.ws(token_for(user)))
    assert (await recv_json(ws))["type"] == "connected"
    return ws


async def drive_a_cluster_member(
    answers: Answers, client: httpx.AsyncClient, backend: BackendServer, prefix: str
) -> None:
    """In front of the real backend, on the real Redis: every route's everyday answers, the
    push API's refusals, and readiness with the backend failing its health check."""
    settings = settings_for(
        backend.url, redis_url=REDIS_URL, redis_key_prefix=prefix, playground=True
    )
    async with running_gateway(settings) as gw:
        schema = await answers.schema_of(gw, client)
        assert "/playground" in schema["paths"]
        assert "/playground/token" not in schema["paths"]  # never in front of a real backend
        phone = await device(gw, "alice")

        async def answer(method: str, path: str, expect: int, **request: Any) -> httpx.Response:
            return await answers.answer(client, gw, schema, method, path, expect, **request)

        await answer("GET", "/", 200)
        await answer("GET", "/health", 200)
        ready = await answer("GET", "/health/ready", 200)
        assert ready.json() == {"status": "ready", "backend": "connected", "redis": "connected"}
        stats = await answer("GET", "/stats", 200)
        assert stats.json()["websocket"]["connections"] == 1
        await answer("GET", "/metrics", 200)
        await answer("GET", "/playground", 200)

        push = "/internal/push"
        await answer("POST", push, 401, json=GOOD_PUSH)
        await answer("POST", push, 401, json=GOOD_PUSH, headers=keyed("x" * len(PUSH_KEY)))
        await answer("POST", push, 401, json=GOOD_PUSH, headers={"X-Api-Key": PUSH_KEY})
        big = {"userId": "alice", "payload": {"blob": "x" * 70_000}}
        await answer("POST", push, 413, json=big, headers=keyed())
        for refused in (
            b"{not json",
            b'{"payload":{}}',
            b'{"userId":"alice","payload":[1]}',
            b'{"userId":"alice","payload":{"k":1,"k":2}}',
            b'{"userId":"alice","payload":' + b"[" * 100 + b"]" * 100 + b"}",
        ):
            headers = {**keyed(), "Content-Type": "application/json"}
            await answer("POST", push, 422, content=refused, headers=headers)
        accepted = await answer("POST", push, 202, json=GOOD_PUSH, headers=keyed())
        assert accepted.json() == {"userId": "alice", "connections": 1}
        assert await recv_json(phone) == {"type": "push", "payload": {"n": 1}}
        await phone.close()

        backend.health_status = 500
        unhealthy = await answer("GET", "/health/ready", 503)
        assert unhealthy.json()["backend"] == "unhealthy"


async def drive_a_gateway_with_nothing_behind_it(
    answers: Answers, client: httpx.AsyncClient
) -> None:
    """Neither the backend nor Redis can be reached: readiness and the push API say so."""
    settings = settings_for(
        f"http://127.0.0.1:{free_port()}", redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    async with running_gateway(settings) as gw:
        schema = await answers.schema_of(gw, client)
        assert "/playground" not in schema["paths"]

        async def answer(method: str, path: str, expect: int, **request: Any) -> httpx.Response:
            return await answers.answer(client, gw, schema, method, path, expect, **request)

        ready = await answer("GET", "/health/ready", 503)
        assert ready.json() == {
            "status": "not ready",
            "backend": "unreachable",
            "redis": "unreachable",
        }
        unavailable = await answer("POST", "/internal/push", 503, json=GOOD_PUSH, headers=keyed())
        assert unavailable.json()["code"] == "push_unavailable"
        stats = await answer("GET", "/stats", 200)
        assert stats.json()["sessions"] == {"parked": None}  # unknown while Redis is away


async def drive_stub_mode(answers: Answers, client: httpx.AsyncClient) -> None:
    """The built-in stub backend: readiness says so, and the playground's token route gives
    each of its answers."""
    settings = settings_for("http://127.0.0.1:9", backend_mode="stub")
    async with running_gateway(settings) as gw:
        schema = await answers.schema_of(gw, client)

        async def answer(method: str, path: str, expect: int, **request: Any) -> httpx.Response:
            return await answers.answer(client, gw, schema, method, path, expect, **request)

        ready = await answer("GET", "/health/ready", 200)
        assert ready.json() == {"status": "ready", "backend": "stub", "api": "not served"}
        await answer("GET", "/playground", 200)
        await answer("GET", "/stats", 200)

        token = "/playground/token"
        own = {"Origin": gw.http}
        issued = await answer("POST", token, 200, json={"sub": "pat"}, headers=own)
        async with connect(gw.ws(issued.json()["token"]), origin=gw.http) as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["type"] == "connected"
        await answer("POST", token, 403, json={"sub": "pat"})
        await answer("POST", token, 403, json={"sub": "pat"}, headers={"Origin": EVIL})
        plain = {**own, "Content-Type": "text/plain"}
        await answer("POST", token, 415, content=b'{"sub":"pat"}', headers=plain)
        await answer("POST", token, 415, data={"sub": "pat"}, headers=own)
        await answer("POST", token, 400, json={"sub": ""}, headers=own)
        await answer("POST", token, 400, json={"sub": "pat", "admin": True}, headers=own)
        json_type = {**own, "Content-Type": "application/json"}
        await answer("POST", token, 400, content=b"not json", headers=json_type)
        await answer("POST", token, 413, json={"sub": "x" * 5000}, headers=own)


async def test_every_route_declares_exactly_the_answers_it_gives_each_with_its_body(
    backend: BackendServer, prefix: str
) -> None:
    answers = Answers()
    async with httpx.AsyncClient(timeout=10) as client:
        await drive_a_cluster_member(answers, client, backend, prefix)
        await drive_a_gateway_with_nothing_behind_it(answers, client)
        await drive_stub_mode(answers, client)
    assert set(answers.seen) == set(answers.declared)  # every route in the schema was driven
    for operation, declared in answers.declared.items():
        assert answers.seen[operation] == declared, operation


# --- the schema's structure ---------------------------------------------------------------


async def schema_served(settings: Settings) -> Json:
    async with running_gateway(settings) as gw, httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{gw.http}/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def schemas_within(value: Json) -> Iterator[Json]:
    """Every object in ``value`` that has ``properties``: each body's shape, at any depth."""
    if isinstance(value, dict):
        if "properties" in value:
            yield value
        for item in value.values():
            yield from schemas_within(item)
    elif isinstance(value, list):
        for item in value:
            yield from schemas_within(item)


async def test_every_error_is_the_one_error_component_and_every_reference_resolves() -> None:
    schema = await schema_served(settings_for("http://127.0.0.1:9", backend_mode="stub"))
    for ref in references(schema):
        resolve(schema, ref)
    error = schema["components"]["schemas"]["HttpError"]
    assert set(error["properties"]) == set(HttpError.__struct_fields__) == set(error["required"])
    # No copy of it inline: the error body is described once.
    assert [s for s in schemas_within(schema) if "error" in s["properties"]] == [error]
    for (method, path), statuses in operations(schema):
        for status in statuses:
            content = schema["paths"][path][method.lower()]["responses"][str(status)]["content"]
            bodies = [media["schema"] for media in content.values()]
            # Readiness answers 503 with its report, in the same shape as its 200.
            refusal = status >= 400 and (method, path) != ("GET", "/health/ready")
            assert [body == {"$ref": ERROR_REF} for body in bodies] == [refusal] * len(bodies), (
                method,
                path,
                status,
            )


async def test_the_push_route_is_secured_by_the_bearer_key_it_checks() -> None:
    schema = await schema_served(settings_for("http://127.0.0.1:9", backend_mode="stub"))
    push = schema["paths"]["/internal/push"]["post"]
    assert push["security"] == [{"pushApiKey": []}]
    scheme = schema["components"]["securitySchemes"]["pushApiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert push["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "userId",
        "payload",
    ]
    secured = [
        (method, path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if operation.get("security")
    ]
    assert secured == [("post", "/internal/push")]  # no other route asks for a credential


async def test_the_push_api_and_the_playground_are_in_the_schema_only_when_served(
    backend: BackendServer,
) -> None:
    always = {"/", "/health", "/health/ready", "/stats", "/metrics"}
    plain = await schema_served(make_settings(backend.url))
    assert set(plain["paths"]) == always
    page = await schema_served(settings_for(backend.url, playground=True))
    assert set(page["paths"]) == always | {"/internal/push", "/playground"}
    stub = await schema_served(make_settings(backend.url, backend_mode="stub"))
    assert set(stub["paths"]) == always | {"/playground", "/playground/token"}


async def test_answers_common_to_every_path_have_the_error_shape(backend: BackendServer) -> None:
    """An unknown path's 404, a wrong method's 405 and a bad Host's 400 belong to no route:
    the schema's description names them, and their bodies are the error component."""
    settings = settings_for(backend.url, playground=True)
    async with running_gateway(settings) as gw, httpx.AsyncClient(timeout=10) as client:
        schema = (await client.get(f"{gw.http}/schema/openapi.json")).json()
        error = {"$ref": ERROR_REF}
        for path in ("/nowhere", "/health/nowhere", "/schema/swagger"):
            response = await client.get(f"{gw.http}{path}")
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/json")
            assert_matches(schema, error, response.json(), path)
            assert response.json()["code"] == "not_found"
        for path, item in schema["paths"].items():
            assert "delete" not in item
            response = await client.delete(f"{gw.http}{path}")
            assert response.status_code == 405, path
            assert_matches(schema, error, response.json(), f"DELETE {path}")
            assert response.json()["code"] == "method_not_allowed"
        bad_host = await exchange(gw.port, b"GET /health HTTP/1.1\r\nhost: a b\r\n\r\n")
    assert bad_host.status == 400
    assert_matches(schema, error, httpx.Response(400, content=bad_host.body).json(), "Host")
    for status in (400, 404, 405):
        assert str(status) in schema["info"]["description"]

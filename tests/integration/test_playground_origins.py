"""The playground and other sites, over real sockets: the gateway's own page may always open
/ws (whatever CORS_ORIGINS says), another site's is judged by CORS_ORIGINS; only the
playground page may mint a development token; and stub mode forwards nothing to a backend,
/api included (its tokens are for any user)."""

from __future__ import annotations

import re

import httpx
import pytest
from websockets.asyncio.client import connect

from kalami_gateway.app.settings import Settings
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import (
    Gateway,
    closed_with,
    make_settings,
    recv_json,
    running_gateway,
    token_for,
)

APP = "https://app.example"  # the operator's web app: the only origin CORS_ORIGINS names
EVIL = "https://evil.example"


def stub_settings(**overrides: object) -> Settings:
    return make_settings("http://127.0.0.1:9", backend_mode="stub", **overrides)


def token_answers(metrics: str) -> dict[int, int]:
    """How often the token route answered each status, from ``/metrics``."""
    found = re.findall(
        r'kalami_http_requests_total\{route="/playground/token",status="(\d+)"\} (\d+)', metrics
    )
    return {int(status): int(float(count)) for status, count in found}


async def minted(gw: Gateway, client: httpx.AsyncClient) -> int:
    """Tokens the token route has handed out (its 200 answers)."""
    return token_answers((await client.get(f"{gw.http}/metrics")).text).get(200, 0)


# --- /ws: the gateway's own page always, another site's by CORS_ORIGINS ------------------


async def test_the_gateways_own_page_opens_a_socket_whatever_cors_origins_says() -> None:
    async with running_gateway(stub_settings(cors_origins=(APP,))) as gw:
        url = gw.ws(token_for("pat"))
        # A page from http://127.0.0.1:<port> opens ws://127.0.0.1:<port>: the same site.
        own = f"http://127.0.0.1:{gw.port}"
        for origin in (own, APP, None):
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                assert (await recv_json(ws))["type"] == "connected", origin
        for foreign in (
            EVIL,
            f"https://127.0.0.1:{gw.port}",  # another scheme
            f"http://127.0.0.1:{gw.port + 1}",  # another port
            f"http://localhost:{gw.port}",  # another name: the socket was sent to 127.0.0.1
            "null",
        ):
            async with connect(url, origin=foreign) as ws:  # type: ignore[arg-type]
                assert await closed_with(ws) == (4008, "Origin not allowed"), foreign


async def test_behind_a_trusted_proxy_the_forwarded_site_is_the_gateways_own() -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example"}
    for trusted, expected in ((("127.0.0.1",), "connected"), ((), "closed")):
        settings = stub_settings(cors_origins=(APP,), trusted_proxies=trusted)
        async with (
            running_gateway(settings) as gw,
            connect(
                gw.ws(token_for("pat")),
                origin="https://gw.example",  # type: ignore[arg-type]
                additional_headers=forwarded,
            ) as ws,
        ):
            if expected == "connected":
                assert (await recv_json(ws))["type"] == "connected"
            else:  # from an untrusted peer the headers say nothing: 4008
                assert await closed_with(ws) == (4008, "Origin not allowed")


# --- POST /playground/token: the playground page only --------------------------------------


async def test_the_playground_page_gets_a_token_and_nothing_else_does() -> None:
    async with running_gateway(stub_settings()) as gw, httpx.AsyncClient() as client:
        own = {"Origin": gw.http}
        url = f"{gw.http}/playground/token"
        answer = await client.post(url, json={"sub": "pat"}, headers=own)
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "no-store"
        async with connect(gw.ws(answer.json()["token"]), origin=gw.http) as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["type"] == "connected"
        charset = {**own, "Content-Type": "Application/JSON; charset=utf-8"}
        answer = await client.post(url, content=b'{"sub":"pat"}', headers=charset)
        assert answer.status_code == 200

        body = b'{"sub":"admin","ttl":86400}'
        # What another site's page can send without a preflight: refused, even when the
        # Origin is the gateway's own (a form posted from a page of its own, say).
        for content_type in ("text/plain", "text/plain;charset=UTF-8"):
            plain = await client.post(
                url, content=body, headers={**own, "Content-Type": content_type}
            )
            assert plain.status_code == 415
            assert "token" not in plain.json()
        form = await client.post(url, data={"sub": "admin"}, headers=own)
        assert form.status_code == 415
        multipart = await client.post(
            url, data={"sub": "admin"}, files={"f": ("a.json", body)}, headers=own
        )
        assert multipart.status_code == 415
        bare = await client.post(url, content=body, headers=own)  # no Content-Type at all
        assert bare.status_code == 415
        twice = await client.post(
            url,
            content=body,
            headers=[
                ("Origin", gw.http),
                ("Content-Type", "application/json"),
                ("Content-Type", "text/plain"),
            ],
        )
        assert twice.status_code == 415

        # JSON, but not from the playground page: refused.
        for origin in (EVIL, "null", f"http://localhost:{gw.port}", f"https://127.0.0.1:{gw.port}"):
            foreign = await client.post(url, json={"sub": "admin"}, headers={"Origin": origin})
            assert foreign.status_code == 403, origin
            assert "token" not in foreign.json()
        no_origin = await client.post(url, json={"sub": "admin"})
        assert no_origin.status_code == 403
        assert "No Origin" in no_origin.json()["error"]

        # A bad body from the page itself is still a 400.
        for bad in ({}, {"sub": ""}, {"sub": "x", "ttl": 5}, {"sub": "x", "admin": True}):
            assert (await client.post(url, json=bad, headers=own)).status_code == 400
        junk = await client.post(
            url, content=b"not json", headers={**own, "Content-Type": "application/json"}
        )
        assert junk.status_code == 400
        assert await minted(gw, client) == 2


@pytest.mark.parametrize("path", ["/playground/token", "//playground//token/"])
async def test_the_token_route_never_sends_cors_headers_even_with_any_origin(path: str) -> None:
    async with (
        running_gateway(stub_settings(cors_origins=("*",))) as gw,
        httpx.AsyncClient() as client,
    ):
        url = f"{gw.http}{path}"
        preflight = await client.options(
            url,
            headers={
                "Origin": EVIL,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 403
        answers = [preflight]
        for origin in (EVIL, gw.http):
            answers.append(
                await client.post(url, json={"sub": "admin"}, headers={"Origin": origin})
            )
            answers.append(
                await client.post(
                    url,
                    content=b'{"sub":"admin"}',
                    headers={"Origin": origin, "Content-Type": "text/plain"},
                )
            )
        assert [a.status_code for a in answers[1:]] == [403, 403, 200, 415]
        for answer in answers:
            cors = [h for h in answer.headers if h.lower().startswith("access-control-")]
            assert cors == [], (answer.request.headers.get("origin"), answer.status_code)
        # The page and its assets are the gateway's own too; other routes keep CORS.
        for own_path in ("/playground", "/playground/app.js"):
            page = await client.get(f"{gw.http}{own_path}", headers={"Origin": EVIL})
            assert "access-control-allow-origin" not in page.headers
        health = await client.get(f"{gw.http}/health", headers={"Origin": EVIL})
        assert health.headers["access-control-allow-origin"] == "*"
        health_preflight = await client.options(
            f"{gw.http}/health",
            headers={"Origin": EVIL, "Access-Control-Request-Method": "GET"},
        )
        assert health_preflight.status_code == 204


# --- stub mode forwards nothing --------------------------------------------------------------


async def test_stub_mode_does_not_proxy_api_so_a_minted_token_reaches_no_backend(
    backend: BackendServer,
) -> None:
    """A backend sharing JWT_SECRET would take a minted ``sub: admin`` token as real."""
    settings = make_settings(backend.url, backend_mode="stub")
    async with running_gateway(settings) as gw, httpx.AsyncClient() as client:
        token = (
            await client.post(
                f"{gw.http}/playground/token",
                json={"sub": "admin"},
                headers={"Origin": gw.http},
            )
        ).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        for method, path in (("GET", "/api/users/me"), ("POST", "/api/conversations/sessions")):
            answer = await client.request(method, f"{gw.http}{path}", headers=auth, json={})
            assert answer.status_code == 404
            assert answer.json() == {
                "error": "No backend: BACKEND_MODE=stub does not proxy /api",
                "code": "api_not_served",
            }
        assert (await client.get(f"{gw.http}/api", headers=auth)).status_code == 404
        # The connection is still good for the next request.
        assert (await client.get(f"{gw.http}/health")).status_code == 200
    assert backend.requests == []

"""ADMIN_PORT (issue 25): /metrics, /stats and the health probes on a second listener of a
real ``kalami-gateway serve``, one process and ``--workers``; the public port no longer
answers /metrics and /stats, and the admin port answers nothing else."""

from __future__ import annotations

import uuid

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from kalami_gateway.app.settings import SettingsError, load_settings
from tests.integration.conftest import recv_json, token_for
from tests.integration.redis_fixtures import REDIS_URL
from tests.integration.test_lifecycle import free_port
from tests.integration.test_ws_budgets import serving


@pytest.mark.parametrize("workers", [1, 2])
async def test_operators_routes_move_to_the_admin_port(workers: int) -> None:
    admin = free_port()
    env = {"ADMIN_PORT": str(admin)}
    if workers > 1:
        env |= {"WORKERS": str(workers), "REDIS_URL": REDIS_URL}
        env["REDIS_KEY_PREFIX"] = f"kgw-admin-{uuid.uuid4().hex[:8]}:"
    async with serving(**env) as served, httpx.AsyncClient(timeout=10) as client:
        public, private = served.http, f"http://127.0.0.1:{admin}"
        for path in ("/metrics", "/stats", "//metrics", "/stats/"):
            answer = await client.get(public + path)
            assert answer.status_code == 404, path
            assert answer.json()["code"] == "not_found"
        for path in ("/health", "/health/ready"):
            assert (await client.get(public + path)).status_code == 200
            assert (await client.get(private + path)).status_code == 200
        assert "kalami_build_info" in (await client.get(private + "/metrics")).text
        assert "websocket" in (await client.get(private + "/stats")).json()
        for path in ("/", "/api/users", "/playground", "/schema/openapi.json"):
            assert (await client.get(private + path)).status_code == 404, path
        index = (await client.get(public + "/")).json()["endpoints"]
        assert index["admin"].startswith(f"port {admin}: /metrics")
        assert "metrics" not in index
        async with connect(f"ws://127.0.0.1:{served.port}/ws?token={token_for('op')}") as ws:
            assert (await recv_json(ws))["type"] == "connected"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{admin}/ws?token={token_for('op')}"):
                pass
        assert refused.value.response.status_code == 403


async def test_the_admin_port_must_differ_from_the_public_one() -> None:
    secret = "s" * 32
    with pytest.raises(SettingsError, match="ADMIN_PORT must differ from GATEWAY_PORT"):
        load_settings({"JWT_SECRET": secret, "ADMIN_PORT": "3000"}, env_file=None)

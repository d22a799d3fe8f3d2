"""Secrets as production handles them (issue 25, item 5): read from files by a real
``kalami-gateway serve``, and a JWT secret rotated without cutting anyone off."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from kalami_gateway.adapters.jwt_decoder import mint_token
from tests.integration.conftest import SECRET, closed_with, recv_json
from tests.integration.test_ws_budgets import serving

NEW = "rotated-secret-" + "fedcba9876543210" * 3
PUSH_KEY = "push-key-from-a-file-0123"


def token(secret: str, user: str) -> str:
    return mint_token(secret, user, time.time() + 600)


async def test_a_gateway_reads_its_secrets_from_files(tmp_path: Path) -> None:
    jwt_file = tmp_path / "jwt"
    jwt_file.write_text(NEW + "\n", encoding="utf-8")
    push_file = tmp_path / "push"
    push_file.write_text(PUSH_KEY + "\n", encoding="utf-8")
    async with serving(
        JWT_SECRET="", JWT_SECRET_FILE=str(jwt_file), PUSH_API_KEY_FILE=str(push_file)
    ) as served:
        url = f"ws://127.0.0.1:{served.port}/ws?token="
        async with connect(url + token(NEW, "filed")) as ws:
            assert (await recv_json(ws))["type"] == "connected"
        async with connect(url + token(SECRET, "stale")) as ws:
            assert await closed_with(ws) == (4002, "Invalid token")
        async with httpx.AsyncClient() as client:
            pushed = await client.post(
                f"{served.http}/internal/push",
                headers={"authorization": f"Bearer {PUSH_KEY}"},
                json={"userId": "nobody", "payload": {}},
            )
        assert pushed.status_code == 202
        assert NEW not in served.output()
        assert PUSH_KEY not in served.output()


async def test_during_a_rotation_tokens_of_both_secrets_connect_and_no_other(
    tmp_path: Path,
) -> None:
    async with serving(JWT_SECRET=NEW, JWT_PREVIOUS_SECRET=SECRET) as served:
        url = f"ws://127.0.0.1:{served.port}/ws?token="
        for secret, user in ((NEW, "fresh"), (SECRET, "before-the-switch")):
            async with connect(url + token(secret, user)) as ws:
                assert (await recv_json(ws))["type"] == "connected"
        async with connect(url + token("another-secret-" + "0" * 32, "forged")) as ws:
            assert await closed_with(ws) == (4002, "Invalid token")


async def test_during_a_push_key_rotation_both_keys_push_and_no_other() -> None:
    old, new = "former-push-key-0123", "current-push-key-4567"
    statuses = []
    async with (
        serving(PUSH_API_KEY=new, PUSH_PREVIOUS_API_KEY=old) as served,
        httpx.AsyncClient() as client,
    ):
        for key in (new, old, "another-push-key-890", f"{new}{old}"):
            pushed = await client.post(
                f"{served.http}/internal/push",
                headers={"authorization": f"Bearer {key}"},
                json={"userId": "nobody", "payload": {}},
            )
            statuses.append(pushed.status_code)
    assert statuses == [202, 202, 401, 401]

"""The playground sends its token the browser's header way (issue 26, item 4): as a
``bearer.<token>`` entry of Sec-WebSocket-Protocol beside ``kalami.v1``, never in the URL,
and the gateway answers ``kalami.v1``. In Debian's Chromium, as the other page tests."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Browser, expect

from tests.integration.backend_server import BackendServer
from tests.integration.conftest import make_settings, running_gateway
from tests.integration.test_playground import (  # noqa: F401  # the fixtures, by name
    browser,
    microphone,
    stub_settings,
)

# Every WebSocket the page opens: its URL, the subprotocols offered, the one answered.
WATCH_SOCKETS = """
window.openedSockets = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    window.openedSockets.push({ url: String(url), offered: protocols, socket: this });
  }
};
"""
SOCKETS = """() => window.openedSockets.map(
  (s) => ({ url: s.url, offered: s.offered, answered: s.socket.protocol }))"""


async def test_the_page_sends_its_token_as_a_subprotocol_not_in_the_url(
    browser: Browser,  # noqa: F811
) -> None:
    async with running_gateway(stub_settings()) as gw:
        page = await browser.new_page()
        await page.add_init_script(WATCH_SOCKETS)
        await page.goto(f"{gw.http}/playground")
        await page.get_by_test_id("connect").click()
        await expect(page.get_by_test_id("status")).to_have_text("connected")
        sockets: list[dict[str, Any]] = await page.evaluate(SOCKETS)
    [opened] = sockets
    assert opened["url"] == f"ws://127.0.0.1:{gw.port}/ws"
    version, entry = opened["offered"]
    assert version == "kalami.v1"
    assert entry.startswith("bearer.ey")  # a JWT
    assert opened["answered"] == "kalami.v1"


async def test_a_pasted_token_no_subprotocol_can_hold_is_shown_readably(
    browser: Browser,  # noqa: F811
    backend: BackendServer,
) -> None:
    async with running_gateway(make_settings(backend.url, playground=True)) as gw:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{gw.http}/playground")
        await page.get_by_label("Token (a JWT from the backend)").fill("not a jwt")
        await page.get_by_test_id("connect").click()
        await expect(page.get_by_test_id("error")).to_contain_text(
            "That token cannot be sent: it is not a JWT"
        )
        await expect(page.get_by_test_id("status")).to_have_text("disconnected")
        await expect(page.get_by_test_id("connect")).to_be_enabled()
    assert errors == []

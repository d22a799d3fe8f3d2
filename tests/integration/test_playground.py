"""The browser playground: its routes, and the page itself in a real headless Chromium
(Debian's, driven by Playwright) with a fake microphone playing a WAV the test writes."""

from __future__ import annotations

import asyncio
import math
import os
import re
import struct
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from websockets.asyncio.client import connect

from kalami_gateway.app.settings import Settings
from tests.integration.backend_server import BackendServer
from tests.integration.conftest import eventually, make_settings, recv_json, running_gateway
from tests.integration.tcp_relay import TcpRelay
from tests.integration.test_playground_origins import token_answers

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("KALAMI_TEST_ARTIFACTS", "test-artifacts"))
TEST_IDS = (
    "connect",
    "disconnect",
    "status",
    "profile",
    "topic",
    "start-session",
    "end-session",
    "record",
    "transcript",
    "reply",
    "corrections",
    "reply-audio",
    "log",
)


def stub_settings(**overrides: object) -> Settings:
    return make_settings("http://127.0.0.1:9", backend_mode="stub", **overrides)


async def test_the_page_and_its_assets_are_served_in_stub_mode() -> None:
    async with running_gateway(stub_settings()) as gw, httpx.AsyncClient() as client:
        page = await client.get(f"{gw.http}/playground")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<meta name="kalami-mode" content="stub">' in page.text
        for test_id in TEST_IDS:
            assert f'data-testid="{test_id}"' in page.text
        script = await client.get(f"{gw.http}/playground/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "MediaRecorder" in script.text
        style = await client.get(f"{gw.http}/playground/style.css")
        assert style.headers["content-type"].startswith("text/css")
        assert (await client.get(f"{gw.http}/playground/secret.py")).status_code == 404


async def test_the_token_route_mints_a_token_the_gateway_accepts() -> None:
    async with running_gateway(stub_settings()) as gw, httpx.AsyncClient() as client:
        # As the page asks: JSON, with its own Origin (tests/integration/test_playground_origins.py
        # has everything else, refused).
        page = {"Origin": gw.http}
        answer = await client.post(f"{gw.http}/playground/token", json={"sub": "pat"}, headers=page)
        assert answer.status_code == 200
        token = answer.json()["token"]
        async with connect(gw.ws(token)) as ws:
            assert (await recv_json(ws))["type"] == "connected"
        for bad in ({}, {"sub": ""}, {"sub": "x", "ttl": 5}, {"sub": "x", "admin": True}):
            refused = await client.post(f"{gw.http}/playground/token", json=bad, headers=page)
            assert refused.status_code == 400
        junk = await client.post(
            f"{gw.http}/playground/token",
            content=b"not json",
            headers={**page, "Content-Type": "application/json"},
        )
        assert junk.status_code == 400


@pytest.mark.parametrize(
    ("overrides", "page_status"),
    [
        ({"backend_mode": "http"}, 404),  # off by default in front of the real backend
        ({"backend_mode": "http", "playground": True}, 200),  # on, but it never mints tokens
        ({"backend_mode": "stub", "playground": False}, 404),
    ],
)
async def test_no_token_is_ever_minted_in_front_of_the_real_backend(
    backend: BackendServer, overrides: dict[str, object], page_status: int
) -> None:
    settings = make_settings(backend.url, **overrides)
    async with running_gateway(settings) as gw, httpx.AsyncClient() as client:
        page = await client.get(f"{gw.http}/playground")
        assert page.status_code == page_status
        if page_status == 200:
            assert '<meta name="kalami-mode" content="http">' in page.text
        minted = await client.post(
            f"{gw.http}/playground/token", json={"sub": "x"}, headers={"Origin": gw.http}
        )
        assert minted.status_code == 404
    assert backend.requests == []  # nothing went to /api either


# --- in a real browser ---------------------------------------------------------------------


def speech_like_wav(path: Path, seconds: float = 4.0) -> Path:
    """A tone that rises and falls, 16 kHz mono: something for the level meter to show."""
    rate = 16000
    frames = bytearray()
    for i in range(int(rate * seconds)):
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 3 * i / rate)
        frames += struct.pack("<h", int(12000 * envelope * math.sin(2 * math.pi * 220 * i / rate)))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))
    return path


@pytest.fixture
def microphone(tmp_path: Path) -> Path:
    """What the fake microphone plays (and a browser to play it to: never skipped)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return speech_like_wav(tmp_path / "speech.wav")


@pytest.fixture
async def browser(microphone: Path) -> AsyncIterator[Browser]:
    wav = microphone
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield launched
        finally:
            await launched.close()


async def talk(page: Page, seconds: float = 1.5) -> None:
    record = page.get_by_test_id("record")
    await expect(record).to_be_enabled()
    await record.click()
    await expect(record).to_have_attribute("aria-pressed", "true")
    await page.wait_for_timeout(seconds * 1000)
    await record.click()
    await expect(record).to_have_attribute("aria-pressed", "false")


async def test_a_conversation_in_a_real_browser_survives_a_dropped_socket(
    browser: Browser,
) -> None:
    async with running_gateway(stub_settings()) as gw:
        relay = await TcpRelay(gw.port).start()  # the browser's network, which we will cut
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{relay.port}/playground")
            await page.get_by_label("User id").fill("pw-learner")
            await page.get_by_test_id("connect").click()
            status = page.get_by_test_id("status")
            await expect(status).to_have_text("connected")
            await page.get_by_test_id("topic").fill("the market")
            await page.get_by_test_id("start-session").click()
            await expect(page.get_by_test_id("end-session")).to_be_enabled()

            await talk(page)
            transcript = page.get_by_test_id("transcript")
            await expect(transcript).to_contain_text("bytes of webm audio", timeout=10_000)
            await expect(page.get_by_test_id("reply")).to_contain_text("Well done")
            corrections = page.get_by_test_id("corrections")
            await expect(corrections).to_contain_text("I goed to the market")
            await expect(corrections).to_contain_text("I went to the market")
            await expect(corrections).to_contain_text("irregular")
            audio = page.get_by_test_id("reply-audio")
            await expect(audio).to_have_attribute("src", _starts_with("data:audio/mpeg;base64,"))
            await page.wait_for_function(
                "() => document.querySelector('[data-testid=reply-audio]').readyState >= 2"
                " && !document.querySelector('[data-testid=reply-audio]').error"
            )
            first_heard = await transcript.text_content()
            assert first_heard is not None
            assert int(first_heard.split()[2]) > 1000  # ~1.5 s of opus, in 100 ms timeslices
            await page.screenshot(path=ARTIFACTS / "playground.png", full_page=True)
            await page.set_viewport_size({"width": 390, "height": 844})  # a phone
            await page.screenshot(path=ARTIFACTS / "playground-phone.png", full_page=True)
            await page.set_viewport_size({"width": 900, "height": 1100})

            # The network drops (a reset, no close frame): the page reconnects and resumes.
            relay.cut()
            relay.mend()
            await expect(status).to_have_text("connected · session resumed", timeout=10_000)
            log = page.get_by_test_id("log")
            await expect(log).to_contain_text('"type":"session_resumed"')
            await expect(log).to_contain_text('"state":"active"')
            await talk(page, 0.8)  # the same session goes on
            await expect(transcript).not_to_have_text(first_heard, timeout=10_000)
            await expect(page.get_by_test_id("chat")).to_contain_text("resumed (active)")
            await page.get_by_test_id("end-session").click()
            await expect(page.get_by_test_id("chat")).to_contain_text("ended")
            assert errors == []
        finally:
            await relay.close()


def _starts_with(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix))


async def test_space_is_push_to_talk_the_meter_moves_and_tokens_are_refreshed(
    browser: Browser,
) -> None:
    # A warning window as long as the token's life: token_expiring comes at once.
    settings = stub_settings(token_expiry_warning_ms=3_599_000)
    async with running_gateway(settings) as gw:
        page = await browser.new_page()
        await page.goto(f"{gw.http}/playground")
        await page.get_by_test_id("connect").click()
        await expect(page.get_by_test_id("status")).to_have_text("connected")
        chat = page.get_by_test_id("chat")
        await expect(chat).to_contain_text("Token refreshed")  # a new token, minted and sent
        await expect(page.get_by_test_id("log")).to_contain_text('"type":"refreshed"')
        await page.get_by_test_id("start-session").click()
        record = page.get_by_test_id("record")
        await expect(record).to_be_enabled()
        await page.locator("h1").click()  # focus on the page, not on a text field
        await page.keyboard.down("Space")
        await expect(record).to_have_attribute("aria-pressed", "true")
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=level]').value > 0.05"
        )
        await page.wait_for_timeout(800)
        await page.keyboard.up("Space")
        await expect(record).to_have_attribute("aria-pressed", "false")
        await expect(page.get_by_test_id("transcript")).to_contain_text("bytes of webm audio")


async def test_a_refused_token_is_shown_readably_in_http_mode(
    browser: Browser, backend: BackendServer
) -> None:
    settings = make_settings(backend.url, playground=True)
    async with running_gateway(settings) as gw:
        page = await browser.new_page()
        await page.goto(f"{gw.http}/playground")
        await expect(page.get_by_label("Token (a JWT from the backend)")).to_be_visible()
        await expect(page.get_by_label("User id")).to_be_hidden()
        await page.get_by_test_id("connect").click()
        error = page.get_by_test_id("error")
        await expect(error).to_have_text("Paste a token (a JWT from the backend) first.")
        await page.get_by_label("Token (a JWT from the backend)").fill("not-a-jwt")
        await page.get_by_test_id("connect").click()
        await expect(page.get_by_test_id("status")).to_have_text("closed: 4002 Invalid token")
        await expect(error).to_contain_text("4002 Invalid token")
        await expect(page.get_by_test_id("connect")).to_be_enabled()  # and it does not retry


async def test_the_playground_holds_a_turn_when_cors_origins_names_only_the_app(
    browser: Browser,
) -> None:
    """CORS_ORIGINS lists the operator's app; the playground, a page of the gateway's own, is
    let in all the same (it used to get 4008)."""
    settings = stub_settings(cors_origins=("https://app.example",))
    async with running_gateway(settings) as gw:
        page = await browser.new_page()
        await page.goto(f"{gw.http}/playground")
        await page.get_by_test_id("connect").click()
        await expect(page.get_by_test_id("status")).to_have_text("connected")
        await page.get_by_test_id("start-session").click()
        await talk(page, 0.8)
        await expect(page.get_by_test_id("transcript")).to_contain_text(
            "bytes of webm audio", timeout=10_000
        )
        await expect(page.get_by_test_id("reply")).to_contain_text("Well done")


class ForeignSite:
    """Another site, on another local port: one page, whatever path is asked for."""

    PAGE = b"<!doctype html><title>Not the gateway</title><h1>elsewhere</h1>"

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def __aenter__(self) -> ForeignSite:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n" % len(self.PAGE)
            )
            writer.write(head + self.PAGE)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


# Every way a page can send the token route a request: fetch in each mode with a simple body
# (no preflight), a JSON one (preflighted), and a plain HTML form posted into a frame.
STEAL_A_TOKEN = """async (url) => {
  const body = JSON.stringify({ sub: "admin", ttl: 86400 });
  const plain = { "content-type": "text/plain" };
  const attempts = {
    "no-cors text/plain": { method: "POST", mode: "no-cors", headers: plain, body },
    "cors text/plain": { method: "POST", mode: "cors", headers: plain, body },
    "cors text/plain with credentials": {
      method: "POST", mode: "cors", credentials: "include", headers: plain, body,
    },
    "no-cors form": {
      method: "POST", mode: "no-cors", body: new URLSearchParams({ sub: "admin" }),
    },
    "cors json": {
      method: "POST", mode: "cors", headers: { "content-type": "application/json" }, body,
    },
  };
  const results = {};
  for (const [name, init] of Object.entries(attempts)) {
    try {
      const response = await fetch(url, init);
      results[name] = `read ${response.type} ${response.status}: ${await response.text()}`;
    } catch (error) {
      results[name] = `refused: ${error.name}`;
    }
  }
  const frame = document.createElement("iframe");
  frame.name = "sink";
  document.body.append(frame);
  const form = document.createElement("form");
  form.method = "POST";
  form.action = url;
  form.enctype = "text/plain";
  form.target = "sink";
  const field = document.createElement("input");
  field.name = '{"sub":"admin","x":"';  // a text/plain form body that parses as JSON
  field.value = '"}';
  form.append(field);
  document.body.append(form);
  const loaded = new Promise((resolve) => { frame.onload = resolve; });
  form.submit();
  await loaded;
  try {
    results["form"] = `read: ${frame.contentDocument.body.textContent}`;
  } catch (error) {
    results["form"] = `refused: ${error.name}`;
  }
  return results;
}"""


async def test_another_sites_page_cannot_get_a_token_even_with_any_origin_allowed(
    browser: Browser,
) -> None:
    async with (
        running_gateway(stub_settings(cors_origins=("*",))) as gw,
        ForeignSite() as elsewhere,
        httpx.AsyncClient() as client,
    ):
        page = await browser.new_page()
        await page.goto(elsewhere.url)
        results: dict[str, str] = await page.evaluate(STEAL_A_TOKEN, f"{gw.http}/playground/token")
        assert set(results) == {
            "no-cors text/plain",
            "cors text/plain",
            "cors text/plain with credentials",
            "no-cors form",
            "cors json",
            "form",
        }
        for name, result in results.items():
            assert "eyJ" not in result, (name, result)  # no JWT reached the page
        # What the page could read at all: opaque nothing, or a refusal.
        assert results["no-cors text/plain"] == "read opaque 0: "
        assert results["cors text/plain"] == "refused: TypeError"
        assert results["cors json"] == "refused: TypeError"

        async def every_attempt_answered() -> bool:
            answers = token_answers((await client.get(f"{gw.http}/metrics")).text)
            return answers.get(403, 0) >= len(results)

        await eventually(every_attempt_answered)
        # Each attempt (the JSON one: its preflight) was refused; none was given a token.
        answers = token_answers((await client.get(f"{gw.http}/metrics")).text)
        assert answers == {403: len(results)}

"""The browser playground: its routes, and the page itself in a real headless Chromium
(Debian's, driven by Playwright) with a fake microphone playing a WAV the test writes."""

from __future__ import annotations

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
from tests.integration.conftest import make_settings, recv_json, running_gateway
from tests.integration.tcp_relay import TcpRelay

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
        answer = await client.post(f"{gw.http}/playground/token", json={"sub": "pat"})
        assert answer.status_code == 200
        token = answer.json()["token"]
        async with connect(gw.ws(token)) as ws:
            assert (await recv_json(ws))["type"] == "connected"
        for bad in ({}, {"sub": ""}, {"sub": "x", "ttl": 5}, {"sub": "x", "admin": True}):
            assert (await client.post(f"{gw.http}/playground/token", json=bad)).status_code == 400
        junk = await client.post(f"{gw.http}/playground/token", content=b"not json")
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
        minted = await client.post(f"{gw.http}/playground/token", json={"sub": "x"})
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

"""The console in a real browser: Debian's chromium driven by Playwright (never
``playwright install``). Skips with a clear message where chromium cannot be launched.

The page loads, refuses a wrong token, shows a simulated call (PBX simulator over real
AudioSocket) appear and end without a reload, opens its page, shows the transcript and
plays the recording through the gateway (the audio element reports a duration)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .stack import (
    BOT_LINE,
    CALLER_LINE,
    TOKEN,
    base_url,
    console_gateway,
    route_call,
    simulate,
    wait_recording,
)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("AIGW_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser_page(chromium: str) -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    profile = tempfile.mkdtemp(prefix="aigw-chromium-")
    pw = await async_playwright().start()
    try:
        try:
            ctx = await pw.chromium.launch_persistent_context(
                profile, executable_path=chromium, args=ARGS, headless=True,
                viewport={"width": 1100, "height": 640})
        except Exception as exc:
            pytest.skip(f"chromium could not be launched: {str(exc).splitlines()[0]}")
        try:
            page = ctx.pages[0] if ctx.pages else await ctx.new_page()
            yield page
        finally:
            await ctx.close()
    finally:
        await pw.stop()
        shutil.rmtree(profile, ignore_errors=True)


async def test_console_in_a_real_browser(tmp_path: Path, browser_page: Any) -> None:
    page = browser_page
    page.set_default_timeout(10_000)
    async with console_gateway(tmp_path) as gw:
        base = base_url(gw)
        await page.goto(base + "/console")
        # A wrong token is refused; the page says so and shows no calls.
        await page.wait_for_selector("#login:not([hidden])")
        await page.fill("#token", "wrong-token-0123456789")
        await page.click("#login-form button[type=submit]")
        await page.wait_for_selector("#login-error:has-text('refused')")
        assert await page.is_hidden("#list")
        # The right one opens the live list.
        await page.fill("#token", TOKEN)
        await page.click("#login-form button[type=submit]")
        await page.wait_for_selector("#list:not([hidden])")
        await page.wait_for_selector("#conn.up")
        assert await page.evaluate("sessionStorage.getItem('aigw-console-token')") == TOKEN

        cid = await route_call(gw)
        sim = asyncio.create_task(simulate(gw, cid, 1.2))
        row = f"tr[data-call-id='{cid}']"
        await page.wait_for_selector(f"{row}[data-status='in-progress']")
        cells = await page.locator(f"{row} td").all_inner_texts()
        assert cells[2:5] == ["acme", "support", "inbound"]
        assert "5557654321" not in " ".join(cells)  # masked by default
        await sim
        await page.wait_for_selector(f"{row}[data-status='completed']")
        await page.check("#f-reveal")
        assert "+15557654321" in await page.locator(row).inner_text()
        await page.select_option("#f-status", "failed")
        await page.wait_for_selector(row, state="detached")
        await page.select_option("#f-status", "")
        await page.wait_for_selector(row)

        await wait_recording(gw, cid)
        await page.click(f"{row} a")
        await page.wait_for_selector("#call:not([hidden])")
        await page.wait_for_selector(f"#transcript li:has-text('{CALLER_LINE}')")
        assert BOT_LINE in await page.inner_text("#transcript")
        await page.wait_for_selector("#timeline li:has-text('completed')")
        audio = await page.wait_for_selector("#recording-audio")
        await page.evaluate("document.getElementById('recording-audio').play()")
        await page.wait_for_function(
            "(() => { const a = document.getElementById('recording-audio');"
            " return a && a.duration > 0 && a.currentTime > 0; })()")
        duration = await audio.evaluate("a => a.duration")
        assert 0.5 < duration < 10, duration
        await page.evaluate("document.getElementById('recording-audio').pause()")
        await page.uncheck("#f-reveal")  # numbers masked again
        await page.wait_for_selector("#call-facts dd:has-text('\u2022')")
        shot = tmp_path / "console.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
        if os.environ.get("AIGW_CONSOLE_SCREENSHOT"):  # refreshes docs/console.png
            shutil.copyfile(shot, ROOT / "docs" / "console.png")

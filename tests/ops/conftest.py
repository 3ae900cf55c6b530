"""Fixtures for the operations tests: a real headless Chromium (Debian's), driven through Selenium.

Selenium's calls block, and the API under test runs on the test's own event loop: every browser
call goes through Browser, which runs it in a thread so the API keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.helpers import eventually

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"
DESKTOP = (1280, 900)
PHONE = (390, 844)


class Browser:
    """A Chromium tab; async wrappers over the blocking WebDriver calls."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def get(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def find(self, css: str) -> WebElement:
        return await self.call(self.driver.find_element, By.CSS_SELECTOR, css)

    async def text(self, css: str) -> str:
        """The visible text of every element matching css ('' when none is shown).

        Read in one script: the page re-renders every second, so an element found by one
        WebDriver call may be gone by the next.
        """
        source = (
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".filter(e => e.offsetParent !== null || e.tagName === 'DIALOG' && e.open)"
            ".map(e => e.innerText).join(' | ')"
        )
        return str(await self.script(source, css))

    async def click(self, css: str) -> None:
        """Click the first element matching css, found and clicked in one step."""
        found = await self.script("const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e", css)
        assert found, f"nothing to click at {css}"

    async def wait_text(self, css: str, check: Callable[[str], bool], timeout: float = 15.0) -> str:
        """Wait until the visible text of css satisfies check; that text."""
        return await eventually(lambda: self.text(css), check, timeout=timeout, interval=0.1)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, source, *args)

    async def screenshot(self, name: str, size: tuple[int, int]) -> Path:
        """Save a full-width screenshot of the page at that window size under tests/ops/artifacts."""
        await self.call(self.driver.set_window_size, *size)
        # Resizing reflows the page; let one frame render before the shot.
        await self.script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.call(self.driver.save_screenshot, str(path))
        print(f"screenshot: {path}")
        return path

    async def console_errors(self) -> list[dict[str, Any]]:
        entries = await self.call(self.driver.get_log, "browser")
        return [e for e in entries if e.get("level") == "SEVERE"]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed: `make browser` (or .ci/run) installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)

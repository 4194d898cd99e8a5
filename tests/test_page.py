"""The live page in a real browser: the distribution's Chromium, driven by Playwright.

Screenshots go to test-output/ (not committed). `scripts/test.d/10-browser` installs
Chromium; Playwright never downloads a browser here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, Request, Route, async_playwright

from .conftest import Tokens, new_user
from .processes import ServeProcess, serving
from .servers import repo_root
from .streams import increment, new_board

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
OUTPUT = repo_root() / "test-output"
# Waits use selectors, not predicates: the page's CSP forbids the eval a predicate needs.
TEN_ROWS = "#rows li.row:nth-child(10):last-child"
ROWS_JS = """els => els.map(e => ({
  user: e.dataset.user,
  rank: e.querySelector('.rank').textContent,
  name: e.querySelector('.user').textContent,
  score: e.querySelector('.score').textContent,
}))"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail("no /usr/bin/chromium: run scripts/test.d/10-browser (scripts/test does)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[ServeProcess]:
    with serving(redis_url, tmp_path) as (proc,):
        yield proc


async def _seed(base: str, tokens: Tokens, board: str) -> list[str]:
    """Ten users scoring 100, 90, ... 10: users[0] leads."""
    users = [new_user() for _ in range(10)]
    async with aiohttp.ClientSession() as session:
        for i, user in enumerate(users):
            await increment(session, tokens, user, 100 - 10 * i, board, base=base)
    return users


async def _rows(page: Page) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await page.eval_on_selector_all("#rows li.row", ROWS_JS)
    return rows


async def _bump(base: str, tokens: Tokens, board: str, user: str, delta: int) -> None:
    async with aiohttp.ClientSession() as session:
        await increment(session, tokens, user, delta, board, base=base)


async def test_page_shows_the_top_10_and_follows_a_change_within_a_second(
    browser: Browser, server: ServeProcess, tokens: Tokens
) -> None:
    board = new_board()
    users = await _seed(server.base, tokens, board)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{server.base}/?board={board}")
    await page.wait_for_selector("#status[data-state='live']", timeout=5000)
    await page.wait_for_selector(TEN_ROWS)
    rows = await _rows(page)
    assert [r["user"] for r in rows] == users
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 11)]
    assert [r["score"] for r in rows] == [str(100 - 10 * i) for i in range(10)]
    assert rows[0]["name"] == users[0][:8]

    # Fifth place jumps to the lead: the page shows it well within a second.
    mover = users[4]
    start = time.monotonic()
    await _bump(server.base, tokens, board, mover, 500)
    await page.wait_for_selector(f"#rows li.row[data-user='{mover}'][data-rank='1']", timeout=1000)
    assert time.monotonic() - start < 1.0
    # The rows glide to their new places rather than jump.
    moving = await page.evaluate(
        "document.getAnimations().filter(a => a.effect?.target?.matches?.('li.row')).length"
    )
    assert moving >= 2
    await page.wait_for_selector(f"#rows li.row:first-child[data-user='{mover}']", timeout=1000)
    rows = await _rows(page)
    assert rows[0]["score"] == "560" and [r["rank"] for r in rows][:2] == ["1", "2"]
    assert await page.get_attribute(f"li.row[data-user='{mover}']", "class") == "row up"

    OUTPUT.mkdir(exist_ok=True)
    await page.wait_for_timeout(1800)  # let the highlight fade for a calm picture
    await page.screenshot(path=str(OUTPUT / "live-page-desktop.png"))
    assert not errors
    assert all(url.startswith(server.base) for url in requests), requests
    await context.close()


async def test_page_looks_right_on_a_phone(
    browser: Browser, server: ServeProcess, tokens: Tokens
) -> None:
    board = new_board()
    await _seed(server.base, tokens, board)
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    page = await context.new_page()
    await page.goto(f"{server.base}/?board={board}")
    await page.wait_for_selector(TEN_ROWS)
    # Nothing sticks out sideways, and each row's score is inside the card.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    overflow = await page.evaluate(
        """() => {
          const card = document.querySelector('.card').getBoundingClientRect();
          return [...document.querySelectorAll('#rows .score')]
            .some(s => s.getBoundingClientRect().right > card.right);
        }"""
    )
    assert not overflow
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / "live-page-phone.png"), full_page=True)
    await context.close()


async def test_page_falls_back_to_polling_when_the_stream_is_refused(
    browser: Browser, server: ServeProcess, tokens: Tokens
) -> None:
    board = new_board()
    users = await _seed(server.base, tokens, board)
    context = await browser.new_context()
    page = await context.new_page()

    async def refuse(route: Route) -> None:
        await route.abort("connectionrefused")

    await page.route("**/scores/stream*", refuse)
    polls: list[Request] = []
    page.on("request", lambda r: polls.append(r) if "/scores/top" in r.url else None)
    await page.goto(f"{server.base}/?board={board}")
    await page.wait_for_selector("#status[data-state='polling']", timeout=5000)
    await page.wait_for_selector(TEN_ROWS)
    mover = users[9]
    await _bump(server.base, tokens, board, mover, 1000)
    await page.wait_for_selector(f"#rows li.row[data-user='{mover}'][data-rank='1']", timeout=5000)
    assert await page.get_attribute("#status", "data-state") == "polling"
    # Later polls ask with the version they hold, and an unchanged board answers 304.
    await page.wait_for_timeout(2500)
    conditional = [r for r in polls if "if-none-match" in r.headers]
    assert conditional, "polling never sent If-None-Match"
    statuses = [
        (await r.response()).status  # type: ignore[union-attr]
        for r in conditional
        if await r.response() is not None
    ]
    assert 304 in statuses
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / "live-page-polling.png"))
    await context.close()

"""Fixtures of the browser tier: Debian's Chromium driven by Playwright's
Python package (its own browser download is never used), and a page that
records what a person's browser would: every request, console message and
page error, and a screenshot per step into ``build/screenshots/`` (ignored).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import CHROMIUM, require
from support import REPO, Server, Tenant

SCREENSHOTS = REPO / "build" / "screenshots"


def new_tenant(server: Server, prefix: str) -> Tenant:
    """A fresh organisation with a key. The key is made in a thread of its own:
    Playwright's sync API runs an event loop in this one, and making a key
    runs one too."""
    org = f"{prefix}-{secrets.token_hex(3)}"
    with ThreadPoolExecutor(1) as pool:
        return Tenant(server, org, pool.submit(server.new_key, org).result())


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    require("browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
        yield browser
        browser.close()


@dataclass
class Dashboard:
    """One browser tab on a server's dashboard, with what it saw."""

    page: Any
    base_url: str
    story: str
    requests: list[str] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    shots: int = 0

    def open(self, route: str = "") -> None:
        self.page.goto(f"{self.base_url}/{route}")

    def sign_in(self, key: str, org: str) -> None:
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_text(f"Organisation: {org}").wait_for()

    def ready(self, path: str) -> None:
        """Wait until the page for ``path`` (e.g. /jobs) has finished its first render."""
        self.page.locator(f'main[data-ready="{path}"]').wait_for()

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.shots += 1
        path = SCREENSHOTS / f"{self.story}-{self.shots:02d}-{name}.png"
        self.page.screenshot(path=path, full_page=True)
        return path

    def foreign_requests(self) -> list[str]:
        """Requests that are neither the API (/v1/...), the dashboard's own
        files (/, /static/...) nor a download's blob: URL of this origin."""
        own = urlsplit(self.base_url)
        foreign = []
        for url in self.requests:
            if url.startswith(f"blob:{self.base_url}/"):
                continue
            parts = urlsplit(url)
            same_origin = (parts.scheme, parts.netloc) == (own.scheme, own.netloc)
            if not (same_origin and (parts.path == "/" or re.match(r"^/(v1|static)/", parts.path))):
                foreign.append(url)
        return foreign

    def unexpected_console(self, allowed_statuses: tuple[int, ...] = ()) -> list[tuple[str, str]]:
        """Console errors and warnings, but for the browser's own notes on API
        answers the story provoked on purpose (e.g. a 400 for a bad file)."""
        allowed = [f"status of {status} " for status in allowed_statuses]
        return [
            (kind, text) for kind, text in self.console
            if kind in ("error", "warning") and not any(a in text for a in allowed)
        ]


@pytest.fixture
def dashboard(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A factory of dashboard tabs: ``dashboard(server_url, **context_options)``."""
    contexts = []

    def make(base_url: str, **options: Any) -> Dashboard:
        context = chromium.new_context(locale="en-US", accept_downloads=True, **options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        tab = Dashboard(page=page, base_url=base_url, story=request.node.name.removeprefix("test_"))
        for old in SCREENSHOTS.glob(f"{tab.story}-*.png"):  # an earlier run's, perhaps numbered differently
            old.unlink()
        page.on("request", lambda r: tab.requests.append(r.url))
        page.on("console", lambda m: tab.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: tab.errors.append(str(e)))
        return tab

    yield make
    for context in contexts:
        context.close()

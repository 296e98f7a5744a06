"""Headless Chromium for the dashboard tests: Debian's /usr/bin/chromium driven by playwright's sync API.

    from browser import chromium_page
    with chromium_page() as page:
        page.goto("http://127.0.0.1:8000/ui/")

Playwright's own browser download is not used (CI has no network for it); CHROMIUM names another binary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium_page"]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI containers run as root, where chromium's sandbox cannot start
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",  # no update checks, safe-browsing lists, ... in an offline CI
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium_page(timeout_s: float = 15.0) -> Iterator[Page]:
    """A page in a fresh browser (no cookies, no storage), whose waits and actions time out after `timeout_s`."""
    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"no chromium at {CHROMIUM}: `apt-get install chromium`, or set CHROMIUM to its path")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_s * 1000)
            yield page
        finally:
            browser.close()

"""A real browser for tests: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (/usr/bin/chromedriver, given to Selenium as its Service, so nothing is
downloaded). `.ci/setup` installs both packages (`chromium`, `chromium-driver`).

`Browser` loads a URL, waits for a condition of the DOM (a JavaScript expression) with a
deadline, collects what the page wrote to the console at level error (and CSP
violations, which Chromium reports there), and saves screenshots of the whole page.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class Browser:
    """One headless Chromium. Use as a context manager (it quits on the way out)."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        for path in (CHROMIUM, CHROMEDRIVER):
            if not shutil.which(path):
                raise RuntimeError(f"{path} is missing: install Debian's chromium and "
                                   "chromium-driver (.ci/setup does)")
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--no-first-run", "--disable-extensions",
                    f"--window-size={width},{height}"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(30)
        self._console: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.driver.quit()

    def load(self, url: str) -> None:
        self.driver.get(url)

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        return self.driver.execute_script(f"return ({expression});")

    def wait_for(self, expression: str, timeout: float = 20.0, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value. On the deadline, fail
        naming ``what`` and the console errors so far (often the reason)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for "
                                     f"{what or expression}; console errors: "
                                     f"{self.console_errors()}")
            time.sleep(0.2)

    def console(self) -> list[dict[str, Any]]:
        """Every console entry so far (Chromium hands each out once: kept here)."""
        self._console += self.driver.get_log("browser")
        return list(self._console)

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.console() if e.get("level") == "SEVERE"]

    def screenshot(self, path: Path, width: int | None = None) -> Path:
        """A PNG of the whole page (the window grows to its height), at ``width``."""
        w = width or int(self.js("window.outerWidth"))
        h = int(self.js("Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"))
        self.driver.set_window_size(w, h + 120)
        # charts follow the window's width (a debounced resize): wait until they have
        self.wait_for("[...document.querySelectorAll('[data-chart]')].every(e => !e._chart"
                      " || Math.abs(e._chart.width - e.clientWidth) < 2)", 10,
                      "the charts to follow the window's size")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.driver.save_screenshot(str(path)):
            raise AssertionError(f"could not save a screenshot to {path}")
        return path

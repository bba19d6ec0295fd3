"""Helpers for the browser tests of the chat page: the simulator, the proxy, and Chromium.

The browser is Debian's /usr/bin/chromium driven by Playwright's Python package (only as a
driver: `playwright install` is never run). When either is missing the tests skip, or fail
when CI=true, because CI installs both (.ci/run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import unittest
from typing import Any
from collections.abc import Iterator

from fake_gloo import FakeGloo
from proxy_server import ProxyConfig, ProxyServer

CHROMIUM = os.environ.get("GLOO_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WEB_ROOT = os.path.join(REPO, "web")


def unavailable(reason: str) -> Exception:
    """The exception for a missing browser: a failure under CI=true, a skip elsewhere."""
    if os.environ.get("CI") == "true":
        return AssertionError(f"browser tests cannot run under CI: {reason}")
    return unittest.SkipTest(reason)


def start_browser() -> tuple[Any, Any]:
    """(playwright, browser), or raise unavailable(...) when Chromium or Playwright is missing."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        raise unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set GLOO_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise unavailable("the playwright package is missing: python -m pip install playwright "
                          "(the browser itself comes from the system, never `playwright install`)") from None
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as exc:  # the driver's own error types; any launch failure means "no browser"
        playwright.stop()
        raise unavailable(f"Chromium at {CHROMIUM} did not start: {exc}") from None
    return playwright, browser


def proxy_config(fake: FakeGloo, **overrides: Any) -> ProxyConfig:
    """A loopback proxy on an OS port relaying `fake`; no retries and no rate limit, for speed."""
    options: dict[str, Any] = dict(
        port=0, client_id=fake.client_id, client_secret=fake.client_secret,
        token_url=fake.token_url, api_url=fake.api_url, web_root=WEB_ROOT,
        upstream_retries=0, rate_limit_per_minute=0, heartbeat_seconds=5.0,
    )
    options.update(overrides)
    return ProxyConfig(**options)


@contextlib.contextmanager
def serving(api_key: str | None = None, **fake_options: Any) -> Iterator[tuple[FakeGloo, ProxyServer]]:
    """A simulator and a proxy that serves the page and relays to it."""
    with FakeGloo(**fake_options) as fake:
        with ProxyServer(proxy_config(fake, api_key=api_key)) as proxy:
            yield fake, proxy

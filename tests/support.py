"""Shared test helpers: a clean environment for every test that touches configuration."""

from __future__ import annotations

import os
import unittest
from unittest import mock

import gloo_stream

_CONFIG_VARIABLES = (
    "GLOO_CLIENT_ID", "GLOO_CLIENT_SECRET", "GLOO_TOKEN_URL", "GLOO_API_URL", "GLOO_API_KEY",
    "PROXY_HOST", "PROXY_PORT", "PROXY_CORS_ORIGIN", "PROXY_API_KEY", "PROXY_MAX_BODY_BYTES",
    "PROXY_MAX_STREAMS", "PROXY_RATE_LIMIT_PER_MINUTE", "PROXY_HEARTBEAT_SECONDS",
    "PROXY_UPSTREAM_IDLE_SECONDS", "PROXY_REQUEST_TIMEOUT_SECONDS", "PROXY_WRITE_TIMEOUT_SECONDS",
    "PROXY_TRUSTED_PROXIES", "NO_COLOR",
)


def clean_environment(extra: dict | None = None) -> dict:
    """The current environment without project settings, loopback never proxied, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARIABLES}
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env.update(extra or {})
    return env


class IsolatedTestCase(unittest.TestCase):
    """Runs each test with project variables cleared and the shared client forgotten."""

    def setUp(self) -> None:
        super().setUp()
        patcher = mock.patch.dict(os.environ, clean_environment(), clear=True)
        patcher.start()
        self.addCleanup(patcher.stop)
        gloo_stream._reset_default_client()
        self.addCleanup(gloo_stream._reset_default_client)

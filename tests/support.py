"""Shared test helpers: a clean environment for every test that touches configuration."""

from __future__ import annotations

import os
import unittest
from unittest import mock

import gloo_stream

_CONFIG_PREFIXES = ("GLOO_", "PROXY_")  # every project setting, whatever new ones are added
_OTHER_VARIABLES = ("NO_COLOR",)


def _is_project_setting(name: str) -> bool:
    return name.startswith(_CONFIG_PREFIXES) or name in _OTHER_VARIABLES


def clean_environment(extra: dict | None = None) -> dict:
    """The current environment without project settings, loopback never proxied, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not _is_project_setting(k)}
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

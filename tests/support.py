"""Shared test helpers: a clean environment for every test that touches configuration, a free
loopback port, and the one builder of chat chunks and their `data:` events."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Any
from unittest import mock

import gloo_stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_SCRIPT = os.path.join(ROOT, "gloo_stream.py")
# The command line as users start it (`python gloo_stream.py`) runs the script as __main__, which
# Python compiles afresh every time (about 90 ms for this file); an imported module's compiled code is
# cached. So most tests start the module's own entry point instead, _run_script(), which is all the
# script's `if __name__ == "__main__":` block calls, with argv[0] as the script's; the tests of pipes,
# signals and the shipped files run the script itself (SCRIPT_CLI).
SCRIPT_CLI = [sys.executable, CLI_SCRIPT]
CLI = [sys.executable, "-c", f"import sys; sys.argv[0] = {CLI_SCRIPT!r}; sys.path.insert(0, {ROOT!r}); "
       "import gloo_stream; gloo_stream._run_script()"]

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
    env["GLOO_LOG"] = "0"  # the command line's history stays off unless a test turns it on (and gives a folder)
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


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released): for nginx, which cannot be given
    port 0, and for a connection that must be refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chunk(content: str | None = None, finish: str | None = None, *, delta: dict | None = None,
          **extra: Any) -> dict[str, Any]:
    """A chat.completion.chunk: `content` as its delta (None: an empty delta; or give `delta`), the
    finish reason, and any other top-level fields (`model`, `usage`, `citations`, even `choices`)."""
    if delta is None:
        delta = {} if content is None else {"content": content}
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gloo-test",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    body.update(extra)
    return body


def sse(*chunks: Any, event: str = "") -> bytes:
    """`data:` events for each chunk (JSON-encoded unless bytes or str), with an optional event name."""
    out = b""
    for item in chunks:
        data = item.decode() if isinstance(item, bytes) else item if isinstance(item, str) else json.dumps(item)
        out += (f"event: {event}\n" if event else "").encode() + b"data: " + data.encode() + b"\n\n"
    return out


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/PID/status (Threads, VmRSS, VmHWM...), 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class ProxyProcess:
    """`proxy_server.py --port 0 ARGS` as its own process, in `workdir` (a fresh folder, so no stray
    .env, when none is given); its stderr goes to `<name>.log` there (`lines`, `output()`), its stdout
    to `<name>.out`. With `wait` (the default) it returns once the proxy listens."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, workdir: str | None = None,
                 name: str = "proxy", wait: bool = True) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp()
        self.log_path = os.path.join(self.workdir, f"{name}.log")
        self._err = open(self.log_path, "wb")
        self._out = open(os.path.join(self.workdir, f"{name}.out"), "wb")
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "proxy_server.py"), "--port", "0", *args],
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     cwd=self.workdir, env=clean_environment(env))
        self.port = 0
        self.url = ""
        if wait:
            try:
                self.wait_listening(20)
            except RuntimeError:
                self.stop()
                raise

    def wait_listening(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", self.output())
            if match:
                self.url, self.port = match.group(1), int(match.group(2))
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"proxy_server.py did not start:\n{self.output()}")

    def output(self) -> str:
        """What the proxy wrote to stderr so far (its log and diagnostics)."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    @property
    def lines(self) -> list[str]:
        return self.output().splitlines(keepends=True)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def threads(self) -> int:
        return proc_status(self.pid, "Threads")

    def rss_kib(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_threads(self, at_most: int, timeout: float) -> int:
        """The thread count, once it is `at_most` or fewer (or the last count seen after `timeout`)."""
        return self._wait_down(self.threads, at_most, timeout)

    def wait_open_files(self, at_most: int, timeout: float) -> int:
        return self._wait_down(self.open_files, at_most, timeout)

    @staticmethod
    def _wait_down(count: Any, at_most: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            value = count()
            if value <= at_most or time.monotonic() > deadline:
                return value
            time.sleep(0.02)

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON request log lines written so far (PROXY_LOG_FORMAT=json)."""
        records = []
        for line in self.lines:
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
        return records

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, *, kill: bool = False) -> tuple[str, str]:
        """SIGTERM (or, with `kill`, SIGKILL), killing it if it lingers; returns (stdout, stderr)."""
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for handle in (self._out, self._err):
            handle.close()
        with open(self._out.name, encoding="utf-8", errors="replace") as handle:
            out = handle.read()
        err = self.output()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return out, err

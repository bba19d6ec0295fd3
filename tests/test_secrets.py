"""No secret in any output: every scenario run with recognisable fake credentials.

The client secret, every token the simulator issued and the proxy's client key are canaries:
none may appear in a response (status line, headers, body), a log line (the proxy's request log
and everything the `gloo_stream` and `gloo_proxy` loggers write, tracebacks included), an
exception's message, repr or fields, a result, or the output of either command-line tool.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import shutil
import tempfile
import time
import unittest
from typing import Any

import gloo_stream
from fake_gloo import FakeGloo
from gloo_stream import GlooClient, GlooError
from proxy_server import ProxyConfig, ProxyServer
from tests.abuse_support import ProxyProcess, chunk_event
from tests.support import CLI, IsolatedTestCase, clean_environment

CLIENT_ID = "client-canary-id"
CLIENT_SECRET = "SECRET-canary-7f3a9"
WRONG_SECRET = "SECRET-canary-wrong-88c1"
PROXY_KEY = "PROXYKEY-canary-4d2e1"
REQUEST_LINE = re.compile(r" POST /api/stream \d{3} ")  # the proxy's one line per request

SCENARIOS = ["Hi", "Hi [[drop:2]]", "Hi [[error]]", "Hi [[content_filter]]", "Hi [[tools]]", "Hi [[openai]]",
             "Hi [[crlf]]", "Hi [[split_utf8]]", "Hi [[html]]", "Hi [[garbage]]", "Hi [[reset]]",
             "Hi [[huge_event:200000]]", "Hi [[fail:503:1]]"] + \
            [f"Hi [[status:{status}:retry=0]]" for status in (400, 401, 403, 404, 408, 422, 429, 500, 502, 503)]


class Recorder(logging.Handler):
    """Every record, formatted with its traceback, as an operator would see it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def wait_logged(test: unittest.TestCase, lines: Any, *, count: int, timeout: float = 5.0) -> None:
    """Wait until `lines` (a list, or a function giving one) holds `count` request lines for POST
    /api/stream (each is written just after its answer)."""
    deadline = time.monotonic() + timeout
    while sum(bool(REQUEST_LINE.search(line)) for line in list(lines() if callable(lines) else lines)) < count:
        test.assertLess(time.monotonic(), deadline, f"fewer than {count} requests were logged")
        time.sleep(0.01)


def describe(exc: BaseException) -> str:
    """An exception as a caller could show it: message, repr and every field."""
    fields = {key: value for key, value in vars(exc).items() if key != "result"}
    result = getattr(exc, "result", None)
    return "\n".join([str(exc), repr(exc), repr(fields), json.dumps(result.to_dict()) if result else ""])


def raw_exchange(address: tuple[str, int], request: bytes) -> str:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        parts = []
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            parts.append(data)
    return b"".join(parts).decode("latin-1")


class SecretTestCase(IsolatedTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeGloo(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        self.fake.start()
        self.addCleanup(self.fake.stop)
        self.recorder = Recorder()
        for name in ("gloo_stream", "gloo_proxy"):
            logger = logging.getLogger(name)
            old_level = logger.level
            logger.addHandler(self.recorder)
            logger.setLevel(logging.DEBUG)
            self.addCleanup(logger.setLevel, old_level)
            self.addCleanup(logger.removeHandler, self.recorder)
        self.outputs: list[tuple[str, str]] = []

    def secrets(self) -> list[str]:
        tokens = list(self.fake.issued_tokens)
        self.assertTrue(tokens)  # the scenarios really ran with issued tokens
        return [CLIENT_SECRET, WRONG_SECRET, PROXY_KEY] + tokens

    def assert_no_secret(self, at_least: int = 5) -> None:
        outputs = self.outputs + [("log", line) for line in self.recorder.lines]
        self.assertGreaterEqual(len(outputs), at_least)  # there was something to look at
        for label, text in outputs:
            for secret in self.secrets():
                self.assertNotIn(secret, text, f"{secret!r} leaked in {label}")

    def client(self, **options: Any) -> GlooClient:
        settings = dict(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_url=self.fake.token_url,
                        api_url=self.fake.api_url, read_timeout=0.5, max_retries=1, backoff_base=0.001,
                        sleep=lambda seconds: None)
        settings.update(options)
        return GlooClient(**settings)

    def start_proxy(self, **options: Any) -> ProxyServer:
        settings = dict(port=0, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_url=self.fake.token_url,
                        api_url=self.fake.api_url, api_key=PROXY_KEY, upstream_idle_seconds=0.3,
                        max_event_bytes=64 * 1024, rate_limit_per_minute=0)
        settings.update(options)
        config = ProxyConfig(**settings)
        upstream = GlooClient(client_id=config.client_id, client_secret=config.client_secret,
                              token_url=config.token_url, api_url=config.api_url, read_timeout=0.3,
                              max_retries=1, backoff_base=0.001, sleep=lambda seconds: None,
                              max_event_bytes=config.max_event_bytes)
        proxy = ProxyServer(config, client=upstream, log_handler=self.recorder).start()
        self.addCleanup(proxy.close)
        self.outputs.append(("proxy repr", repr(config) + repr(upstream) + repr(upstream.tokens)))
        return proxy


class ClientSecretTests(SecretTestCase):
    def test_every_scenario_through_the_client(self):
        client = self.client()
        self.outputs.append(("client repr", repr(client) + repr(client.tokens)))
        for prompt in SCENARIOS:
            try:
                result = client.complete(prompt)
                self.outputs.append((f"result of {prompt}", json.dumps(result.to_dict())))
            except GlooError as exc:
                self.outputs.append((f"error of {prompt}", describe(exc)))
            try:
                for _ in client.stream(prompt):
                    pass
            except GlooError as exc:
                self.outputs.append((f"stream error of {prompt}", describe(exc)))
        for options in ({"client_secret": WRONG_SECRET}, {"token_url": self.fake.base_url + "/nope"}):
            with self.assertRaises(GlooError) as caught:
                self.client(**options).complete("Hi")
            self.outputs.append((f"error with {options}", describe(caught.exception)))
        self.assert_no_secret(at_least=50)

    def test_the_tutorial_functions(self):
        os.environ.update(self.fake.env)
        out = io.StringIO()
        for prompt in ("Hi", "Hi [[drop:2]]", "Hi [[error]]"):
            self.outputs.append((f"stream_completion {prompt}", json.dumps(gloo_stream.stream_completion(prompt))))
            gloo_stream.render_stream_to_terminal(prompt, file=out)
        for prompt in ("Hi [[status:401]]", "Hi [[status:400]]"):
            with self.assertRaises(GlooError) as caught:
                gloo_stream.stream_completion(prompt)
            self.outputs.append((f"stream_completion {prompt}", describe(caught.exception)))
        self.outputs.append(("render_stream_to_terminal", out.getvalue()))
        try:
            gloo_stream.handle_stream_error(401, "token " + self.fake.issued_tokens[0])
        except GlooError as exc:
            self.outputs.append(("handle_stream_error", describe(exc)))
        self.assert_no_secret()

    def test_an_upstream_that_echoes_the_token_and_secret_back(self):
        # A gateway that quotes what it was sent in its error body: the client redacts it.
        client = self.client(max_retries=0)
        token = client.token()
        echo = {"error": {"message": f"bad token {token} for secret {CLIENT_SECRET}"}}
        for status in (400, 401, 500):
            self.fake.enqueue(status, {"Content-Type": "application/json"}, [json.dumps(echo).encode()])
            if status == 401:
                self.fake.enqueue(status, {"Content-Type": "application/json"}, [json.dumps(echo).encode()])
            with self.assertRaises(GlooError) as caught:
                client.complete("Hi")
            self.outputs.append((f"echoed {status}", describe(caught.exception)))
        self.fake.enqueue(200, {"Content-Type": "text/event-stream"}, [
            chunk_event("Hi"),
            b'data: {"choices": [{"delta": {}, "finish_reason": "error"}], "error": {"code": 401, '
            b'"name": "AUTH", "message": "token ' + token.encode() + b' expired"}}\n\n'])
        result = client.complete("Hi")
        self.outputs.append(("echoed mid-stream error", json.dumps(result.to_dict())))
        self.assertIn("[redacted]", result.error)
        self.assert_no_secret()


class RelaySecretTests(SecretTestCase):
    def test_every_scenario_through_the_relay(self):
        proxy = self.start_proxy()
        address = proxy.server_address[:2]
        routes = (("/api/stream", {}), ("/v1/chat/completions", {"stream": True}), ("/v1/chat/completions", {}))
        runs = [(prompt, path, extra) for prompt in SCENARIOS for path, extra in routes]
        runs.append(("Hi [[stall]]", "/api/stream", {}))
        for prompt, path, extra in runs:
            body = json.dumps(dict({"messages": [{"role": "user", "content": prompt}]}, **extra)).encode()
            request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       f"Authorization: Bearer {PROXY_KEY}\r\nCookie: session={PROXY_KEY}\r\n"
                       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
            self.outputs.append((f"{path} {extra} {prompt}", raw_exchange(address, request)))
        for request in (b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + PROXY_KEY.encode()
                        + b"\r\nConnection: close\r\n\r\n",
                        b"GET /v1/models?key=" + PROXY_KEY.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                        b"Authorization: Bearer " + PROXY_KEY.encode()[:-1] + b"\r\nConnection: close\r\n\r\n"):
            self.outputs.append((request.split(b"\r\n")[0].decode(), raw_exchange(address, request)))
        for guess in range(12):  # wrong keys, then the failure limit
            request = (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + PROXY_KEY.encode()
                       + b"x%d\r\nConnection: close\r\n\r\n" % guess)
            self.outputs.append((f"guess {guess}", raw_exchange(address, request)))
        self.assertIn(" 429 ", self.outputs[-1][1].split("\r\n")[0] + " ")
        wrong = self.start_proxy(client_secret=WRONG_SECRET)
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode()
        self.outputs.append(("wrong upstream secret", raw_exchange(wrong.server_address[:2], (
            f"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
            f"{PROXY_KEY}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)))
        wait_logged(self, self.recorder.lines, count=1)  # the last request's line comes just after its answer
        self.assert_no_secret(at_least=100)

    # Regression guard for a fixed bug: proxy_server._Handler._relay relays upstream events verbatim and builds
    # the final error event from the upstream's error message without gloo_stream.redact, so an upstream that
    # quotes the proxy's bearer token in a mid-stream error (some gateways do) hands it to the
    # browser. Fix: pass the relayed batch and the error message through gloo_stream.redact
    # (a substring check per registered secret per batch).
    def test_a_token_echoed_in_a_mid_stream_error_is_not_relayed(self):
        proxy = self.start_proxy(api_key=None)
        token = proxy.client.token()
        self.fake.enqueue(200, {"Content-Type": "text/event-stream"}, [
            chunk_event("Hi"),
            b'data: {"choices": [{"delta": {}, "finish_reason": "error"}], "error": {"code": 401, '
            b'"name": "AUTH", "message": "token ' + token.encode() + b' expired"}}\n\n'])
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode()
        response = raw_exchange(proxy.server_address[:2], (
            f"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
        self.assertIn("AUTH", response)
        self.assertNotIn(token, response)


class CommandLineSecretTests(unittest.TestCase):
    """Both command-line tools, run as a user runs them, with the canary credentials."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.fake = FakeGloo(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        cls.fake.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.fake.stop()

    def test_gloo_stream_cli_output(self):
        cwd = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, cwd, True)
        runs = [((), "Hi"), (("--json",), "Hi"), (("--raw",), "Hi"), ((), "Hi [[drop:2]]"), ((), "Hi [[error]]"),
                (("--raw",), "Hi [[drop:2]]"), ((), "Hi [[status:400]]"), ((), "Hi [[status:401]]"),
                (("--json",), "Hi [[status:403]]"), ((), "Hi [[html]]"), (("--secret",), "Hi")]
        procs = []
        for args, prompt in runs:
            env = dict(self.fake.env)
            if args == ("--secret",):  # a wrong secret: the token endpoint refuses it
                env["GLOO_CLIENT_SECRET"], args = WRONG_SECRET, ()
            procs.append(subprocess.Popen([*CLI, *args, prompt],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                          env=clean_environment(env)))
        secrets = [CLIENT_SECRET, WRONG_SECRET]
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            for secret in secrets + list(self.fake.issued_tokens):
                self.assertNotIn(secret, out)
                self.assertNotIn(secret, err)
        self.assertGreaterEqual(len(self.fake.issued_tokens), len(runs))

    def test_proxy_process_output(self):
        env = dict(self.fake.env, PROXY_API_KEY=PROXY_KEY, PROXY_UPSTREAM_IDLE_SECONDS="0.5",
                   PROXY_DRAIN_SECONDS="1")
        before = len(self.fake.issued_tokens)
        proxy = ProxyProcess(env=env)
        try:
            answers = []
            for prompt, key in (("Hi", PROXY_KEY), ("Hi [[drop:2]]", PROXY_KEY), ("Hi [[status:401]]", PROXY_KEY),
                                ("Hi [[status:400]]", PROXY_KEY), ("Hi", PROXY_KEY + "x"), ("Hi", "")):
                body = json.dumps({"messages": [{"role": "user", "content": prompt}]}).encode()
                answers.append(raw_exchange(proxy.address, (
                    f"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: "
                    f"Bearer {key}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body))
            wait_logged(self, lambda: proxy.lines, count=len(answers))  # every request's line, so every one is checked
        finally:
            out, err = proxy.stop()
        self.assertIn("stopped", err)
        self.assertGreater(len(self.fake.issued_tokens), before)
        for secret in [CLIENT_SECRET, PROXY_KEY] + list(self.fake.issued_tokens):
            self.assertNotIn(secret, out)
            self.assertNotIn(secret, err)
            for answer in answers:
                self.assertNotIn(secret, answer)


if __name__ == "__main__":
    unittest.main()

"""The transport: the keep-alive pool, redirects, interim answers, timeouts, headers, credentials, tokens.

Every server here is a scripted HTTP/1.1 server on 127.0.0.1 port 0 in a thread, which keeps
connections alive between requests and counts what it saw; every wait is bounded.
"""

from __future__ import annotations

import gc
import http.client
import json
import logging
import os
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Union
from unittest import mock

import gloo_stream
from gloo_stream import (
    APITimeoutError,
    ConfigurationError,
    GlooClient,
    RateLimitError,
    RedirectError,
    TokenCache,
    TokenError,
    extract_token_content,
)
from tests.support import IsolatedTestCase

KEY = "transport-test-key-0001"


def sse_body(*texts: str) -> bytes:
    events = [b"data: " + json.dumps({"choices": [{"delta": {"content": t}, "finish_reason": None}]}).encode()
              + b"\n\n" for t in texts]
    events.append(b"data: " + json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}).encode() + b"\n\n")
    return b"".join(events)


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def sse_response(*texts: str, extra_headers: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            + extra_headers + b"\r\n" + chunked(sse_body(*texts)))


def json_response(status: int, payload: Any, extra_headers: bytes = b"") -> bytes:
    body = json.dumps(payload).encode()
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, len(body), extra_headers, body))


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes, connection: int) -> None:
        self.method, self.path, self.headers, self.body, self.connection = method, path, headers, body, connection


# A script answers each request: bytes to send, a list of pieces to send a moment apart (an Event
# among them: wait until the test sets it), or None to close the connection without answering.
Script = Callable[[Request, int], Union[bytes, list, None]]
PIECE_PAUSE = 0.02  # between the pieces of a listed answer


class ScriptServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.connections = 0
        self.closed_connections = 0
        self.lock = threading.Condition()
        super().__init__(("127.0.0.1", 0), _ScriptHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_closed(self, count: int, timeout: float = 5.0) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: self.closed_connections >= count, timeout)


class _ScriptHandler(socketserver.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        server: ScriptServer = self.server  # type: ignore[assignment]
        with server.lock:
            server.connections += 1
            number = server.connections
            server.lock.notify_all()
        try:
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    header = self.rfile.readline(65537)
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = self.rfile.read(int(headers.get("content-length", "0") or 0))
                request = Request(method, path, headers, body, number)
                with server.lock:
                    server.requests.append(request)
                    index = len(server.requests) - 1
                answer = server.script(request, index)
                if answer is None:
                    return
                for position, piece in enumerate(answer if isinstance(answer, list) else [answer]):
                    if isinstance(piece, threading.Event):  # the test says when to go on
                        piece.wait(5)
                        continue
                    if position:
                        time.sleep(PIECE_PAUSE)
                    self.wfile.write(piece)
                    self.wfile.flush()
        except (OSError, ValueError):
            return
        finally:
            with server.lock:
                server.closed_connections += 1
                server.lock.notify_all()


class TransportTestCase(IsolatedTestCase):
    def serve(self, script: Script) -> ScriptServer:
        server = ScriptServer(script)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return server

    def client(self, server: ScriptServer, **options: Any) -> GlooClient:
        settings: dict[str, Any] = dict(api_key=KEY, api_url=server.url + "/v1/chat", connect_timeout=2.0,
                                        read_timeout=2.0, max_retries=1, backoff_base=0.01, sleep=self.sleeps.append)
        settings.update(options)
        client = GlooClient(**settings)
        self.addCleanup(client.close)
        return client

    def setUp(self) -> None:
        super().setUp()
        self.sleeps: list[float] = []


class PoolTests(TransportTestCase):
    def test_sequential_streams_share_one_connection(self):
        server = self.serve(lambda request, index: sse_response("Hello", f" {index}"))
        client = self.client(server)
        texts = [client.complete("Hi").text for _ in range(4)]
        self.assertEqual(texts, ["Hello 0", "Hello 1", "Hello 2", "Hello 3"])
        self.assertEqual(server.connections, 1)
        self.assertEqual([r.connection for r in server.requests], [1, 1, 1, 1])
        self.assertEqual((client.pool.opened, client.pool.reused), (1, 3))

    def test_a_body_whose_end_follows_done_keeps_its_connection(self):
        # OpenAI's ending: [DONE], then the chunked terminator a moment later (its own TCP segment).
        done = sse_body("Hello") + b"data: [DONE]\n\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        server = self.serve(lambda request, index: [head + b"%x\r\n%s\r\n" % (len(done), done), b"0\r\n\r\n"])
        client = self.client(server)
        # The pool waits 50 ms for an end in flight; a loaded machine may deliver the terminator later
        # than that, so the wait is longer here: what is tested is that it waits, not how fast loopback is.
        with mock.patch.object(gloo_stream, "_DRAIN_WAIT", 10.0):
            texts = [client.complete("Hi").text for _ in range(20)]
        self.assertEqual(texts, ["Hello"] * 20)
        self.assertEqual((server.connections, client.pool.opened, client.pool.reused), (1, 1, 19))

    def test_a_body_followed_by_stray_bytes_is_kept_and_its_connection_dropped(self):
        body = sse_body("Whole", " answer")
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(body))
        server = self.serve(lambda request, index: head + body + b"\r\n")  # one stray CRLF in the same write
        client = self.client(server)
        for _ in range(2):
            result = client.complete("Hi")
            self.assertEqual((result.text, result.error, result.outcome.kind), ("Whole answer", None, "finished"))
        self.assertEqual((client.pool.opened, client.pool.reused), (2, 0))  # never reused after the stray bytes

    def test_warm_up_opens_one_connection_that_the_first_stream_uses(self):
        server = self.serve(lambda request, index: sse_response("warm"))
        client = self.client(server)
        client.warm_up()
        with server.lock:
            server.lock.wait_for(lambda: server.connections, 5)
        self.assertEqual((server.connections, client.pool.idle_count()), (1, 1))
        self.assertEqual(server.requests, [])  # connected, nothing sent
        client.warm_up()  # a connection is waiting already: no second one
        self.assertEqual(client.complete("Hi").text, "warm")
        self.assertEqual((server.connections, client.pool.opened, client.pool.reused), (1, 1, 1))

    def test_warm_up_fetches_the_token_over_the_connection_it_keeps(self):
        def script(request: Request, index: int) -> bytes:
            if request.path == "/token":
                return json_response(200, {"access_token": "warm-token-0001", "expires_in": 3600})
            return sse_response("authorised" if request.headers["authorization"] == "Bearer warm-token-0001" else "?")

        server = self.serve(script)
        client = self.client(server, api_key=None, client_id="id", client_secret="secret-0001",
                             token_url=server.url + "/token")
        client.warm_up()
        self.assertEqual([request.path for request in server.requests], ["/token"])
        self.assertEqual(client.complete("Hi").text, "authorised")
        self.assertEqual([request.path for request in server.requests], ["/token", "/v1/chat"])
        self.assertEqual(server.connections, 1)

    def test_warm_up_says_when_the_server_cannot_be_reached(self):
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/chat"
        client = GlooClient(api_key=KEY, api_url=url, connect_timeout=2.0)
        self.addCleanup(client.close)
        with self.assertRaises(gloo_stream.APIConnectionError) as caught:
            client.warm_up()
        self.assertIn("cannot reach http://127.0.0.1:", str(caught.exception))

    def test_a_stream_closed_early_closes_its_connection(self):
        def script(request: Request, index: int) -> bytes:
            if index == 0:  # a long answer the client stops reading after the first delta
                return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + b"%x\r\n%s\r\n" % (len(sse_body("A")), sse_body("A")))
            return sse_response("B")

        server = self.serve(script)
        client = self.client(server)
        with client.stream("Hi") as stream:
            self.assertEqual(next(iter(stream)), "A")
        self.assertTrue(server.wait_closed(1))
        self.assertEqual(client.pool.idle_count(), 0)
        self.assertEqual(client.complete("Hi").text, "B")
        self.assertEqual(server.connections, 2)

    def test_an_abort_after_close_leaves_the_pooled_connection_alone(self):
        server = self.serve(lambda request, index: sse_response(f"n{index}"))
        client = self.client(server)
        stream = client.stream("Hi")
        self.assertEqual("".join(stream), "n0")
        stream.close()
        stream.abort()  # late, from a drain or a Stop: the connection already went back to the pool
        self.assertEqual(client.complete("Hi").text, "n1")
        self.assertEqual(server.connections, 1)

    def test_idle_connections_expire(self):
        now = [1000.0]
        server = self.serve(lambda request, index: sse_response("x"))
        client = self.client(server, pool_idle_timeout=30.0, clock=lambda: now[0])
        client.complete("Hi")
        now[0] += 29.0
        client.complete("Hi")
        self.assertEqual(server.connections, 1)
        now[0] += 31.0
        client.complete("Hi")
        self.assertEqual(server.connections, 2)
        self.assertTrue(server.wait_closed(1))  # the expired one was closed, not leaked

    def test_pool_size_zero_opens_a_connection_per_request(self):
        server = self.serve(lambda request, index: sse_response("x"))
        client = self.client(server, pool_size=0)
        for _ in range(3):
            client.complete("Hi")
        self.assertEqual(server.connections, 3)
        self.assertTrue(server.wait_closed(3))

    def test_a_request_the_server_read_is_never_sent_again(self):
        # #19.1: the server read the whole POST, then closed: it may be generating (and billing) it.
        def script(request: Request, index: int) -> bytes | None:
            if index == 1:
                return None  # read, then the connection closed without an answer
            return sse_response(f"answer {index}")

        for pooled, retries in ((16, 3), (0, 3)):
            with self.subTest(pool_size=pooled):
                server = self.serve(script)
                client = self.client(server, max_retries=retries, pool_size=pooled)
                self.assertEqual(client.complete("Hi").text, "answer 0")
                with self.assertRaises(gloo_stream.APIConnectionError) as caught:
                    client.complete("Hi")
                self.assertTrue(caught.exception.may_have_been_processed)
                self.assertIn("it was not sent again", str(caught.exception))
                self.assertEqual(len(server.requests), 2)  # once, not 3, 4 or 6 times
                self.assertEqual(client.complete("Hi").text, "answer 2")  # the next request is fine
                self.assertEqual(self.sleeps, [])

    def test_a_new_connection_closed_before_answering_is_not_sent_again_by_the_pool(self):
        server = self.serve(lambda request, index: None)
        client = self.client(server, max_retries=0)
        with self.assertRaises(gloo_stream.APIConnectionError):
            client.complete("Hi")
        self.assertEqual(len(server.requests), 1)

    def test_token_requests_and_streams_share_the_pool(self):
        def script(request: Request, index: int) -> bytes:
            if request.path == "/token":
                return json_response(200, {"access_token": "pooled-token-0001", "expires_in": 3600})
            return sse_response("ok")

        server = self.serve(script)
        client = self.client(server, api_key=None, client_id="id-0001", client_secret="secret-0001",
                             token_url=server.url + "/token")
        self.assertEqual(client.complete("Hi").text, "ok")
        self.assertEqual(client.complete("Hi").text, "ok")
        self.assertEqual([r.path for r in server.requests], ["/token", "/v1/chat", "/v1/chat"])
        self.assertEqual(server.connections, 1)

    def test_the_pool_is_shared_by_many_threads(self):
        server = self.serve(lambda request, index: sse_response("t"))
        client = self.client(server, pool_size=8)
        results: list[str] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(5):
                    results.append(client.complete("Hi").text)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        self.assertEqual(errors, [])
        self.assertEqual(results, ["t"] * 30)
        self.assertLessEqual(server.connections, 6)  # never more than the threads at once
        self.assertEqual(client.pool.opened, server.connections)
        self.assertEqual(client.pool.reused, 30 - server.connections)


class ProxyTests(TransportTestCase):
    def test_http_proxy_gets_the_whole_url_and_keeps_the_connection(self):
        proxy = self.serve(lambda request, index: sse_response("via proxy"))
        env = {"HTTP_PROXY": f"http://pxuser:px-secret-0001@127.0.0.1:{proxy.server_address[1]}",
               "NO_PROXY": "", "no_proxy": ""}
        with mock.patch.dict(os.environ, env):
            client = self.client(proxy, api_url="http://upstream.invalid/v1/chat")
            self.assertEqual([client.complete("Hi").text for _ in range(2)], ["via proxy"] * 2)
        self.assertEqual([r.path for r in proxy.requests], ["http://upstream.invalid/v1/chat"] * 2)
        self.assertEqual(proxy.requests[0].headers["host"], "upstream.invalid")
        self.assertEqual(proxy.requests[0].headers["proxy-authorization"], "Basic cHh1c2VyOnB4LXNlY3JldC0wMDAx")
        self.assertEqual(proxy.connections, 1)

    def test_an_https_proxy_with_a_password_is_refused_never_sent_in_clear(self):
        with mock.patch.dict(os.environ, {"HTTPS_PROXY": "https://user:pass-0001@127.0.0.1:9", "NO_PROXY": ""}):
            with self.assertRaises(ConfigurationError) as caught:
                GlooClient(api_key=KEY, api_url="https://127.0.0.1:8/v1/chat")
        message = str(caught.exception)
        self.assertIn("HTTPS_PROXY is an https:// proxy with a user and password", message)
        self.assertNotIn("pass-0001", message)

    def test_no_proxy_is_honoured(self):
        server = self.serve(lambda request, index: sse_response("direct"))
        env = {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        with mock.patch.dict(os.environ, env):
            self.assertEqual(self.client(server).complete("Hi").text, "direct")


class RelayOverPoolTests(TransportTestCase):
    def test_a_polling_reader_never_waits_after_the_body_ended(self):
        server = self.serve(lambda request, index: sse_response("polled"))
        stream = self.client(server).stream("Hi")
        self.addCleanup(stream.close)
        batches = []
        while True:
            if not stream.buffered:  # the relay's loop: poll only when nothing is buffered
                self.assertTrue(select.select([stream.fileno()], [], [], 5)[0], "waited on a kept-alive socket")
            batch = stream.read_batch()
            if batch is None:
                break
            batches.append(batch)
        self.assertEqual(sum(len(batch) for batch in batches), 2)

    def test_a_non_blocking_stream_never_waits_and_settles_into_the_pool(self):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = sse_body("one", "two") + b"data: [DONE]\n\n"
        first = body[: body.index(b"\n\n") + 2]  # the first content event alone
        rest = body[len(first):]
        more, end = threading.Event(), threading.Event()
        server = self.serve(lambda request, index: [
            head + b"%x\r\n%s\r\n" % (len(first), first), more,
            b"%x\r\n%s\r\n" % (len(rest), rest), end, b"0\r\n\r\n"])
        client = self.client(server)
        stream = client.stream("Hi")
        self.addCleanup(stream.close)
        stream.setblocking(False)
        texts, empty = [], 0
        while True:
            batch = stream.read_batch()  # never waits: [] when nothing has come yet
            if batch is None:
                break
            if not batch:
                empty += 1
                more.set()  # only now does the rest come
                self.assertTrue(select.select([stream.fileno()], [], [], 5)[0], "nothing came")
            texts += [extract_token_content(event.json()) for event in batch if event.data != "[DONE]"]
        self.assertEqual("".join(texts), "onetwo")
        self.assertGreater(empty, 0)
        self.assertEqual(stream.outcome.kind, "finished")
        self.assertTrue(stream.settling)  # [DONE] came; the body's end is still on its way
        self.assertFalse(stream.settle())
        end.set()
        self.assertTrue(select.select([stream.fileno()], [], [], 5)[0])
        self.assertTrue(stream.settle())
        self.assertEqual(client.pool.idle_count(), 1)
        more.set()
        end.set()
        self.assertEqual(client.complete("Again").text, "onetwo")  # the next stream reuses the connection
        self.assertEqual(server.connections, 1)

    def test_the_relay_streams_over_one_upstream_connection(self):
        from proxy_server import ProxyConfig, ProxyServer

        server = self.serve(lambda request, index: sse_response("relayed"))
        client = self.client(server, max_retries=1, retry_rate_limited=False)
        config = ProxyConfig(port=0, upstream_idle_seconds=30.0, heartbeat_seconds=30.0)
        proxy = ProxyServer(config, client=client)
        proxy.start()
        self.addCleanup(proxy.close)
        conn = http.client.HTTPConnection(*proxy.server_address[:2], timeout=5)
        self.addCleanup(conn.close)
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": True})
        for _ in range(3):
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            self.assertEqual(response.status, 200)
            self.assertIn(b'"content": "relayed"', response.read())
        self.assertEqual(server.connections, 1)


class RedirectTests(TransportTestCase):
    def test_the_completions_post_does_not_follow_a_redirect(self):
        elsewhere = self.serve(lambda request, index: sse_response("stolen"))
        location = f"http://user:hunter2-password@127.0.0.1:{elsewhere.server_address[1]}/steal"
        for status in (301, 302, 303, 307, 308):
            with self.subTest(status=status):
                server = self.serve(lambda request, index, status=status: json_response(
                    status, {"error": "moved"}, b"Location: " + location.encode() + b"\r\n"))
                with self.assertRaises(RedirectError) as caught:
                    self.client(server).complete("Hi")
                error = caught.exception
                self.assertEqual(error.status, status)
                self.assertEqual(error.location,
                                 f"http://[redacted]@127.0.0.1:{elsewhere.server_address[1]}/steal")
                self.assertIn(error.location, str(error))
                self.assertNotIn("hunter2", str(error) + repr(error.headers))
                self.assertEqual(len(server.requests), 1)
        self.assertEqual(elsewhere.requests, [])
        self.assertEqual(self.sleeps, [])

    def test_the_token_request_does_not_follow_a_redirect(self):
        elsewhere = self.serve(lambda request, index: json_response(200, {"access_token": "x" * 20}))
        server = self.serve(lambda request, index: json_response(
            307, {}, b"Location: " + elsewhere.url.encode() + b"/token\r\n"))
        cache = TokenCache(client_id="id-0001", client_secret="secret-0001", token_url=server.url + "/token",
                           timeout=2.0)
        with self.assertRaises(TokenError) as caught:
            cache.get()
        self.assertEqual(caught.exception.status, 307)
        self.assertIn(f"redirected (307) to {elsewhere.url}/token", str(caught.exception))
        self.assertEqual(elsewhere.requests, [])


class InterimAndTimeoutTests(TransportTestCase):
    def test_interim_1xx_answers_are_skipped(self):
        interim = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
                   b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        server = self.serve(lambda request, index: interim + sse_response("after interim"))
        client = self.client(server)
        with client.stream("Hi") as stream:
            self.assertEqual(stream.status, 200)
            self.assertEqual("".join(stream), "after interim")
        self.assertEqual(client.complete("Hi").text, "after interim")
        self.assertEqual(server.connections, 1)

    def test_the_header_wait_uses_the_read_timeout(self):
        gate = threading.Event()

        def script(request: Request, index: int) -> bytes:
            gate.wait(0.3)  # longer than the connect timeout, shorter than the read timeout
            return sse_response("patient")

        server = self.serve(script)
        client = self.client(server, connect_timeout=0.05, read_timeout=3.0, max_retries=0)
        self.assertEqual(client.complete("Hi").text, "patient")

    def test_a_request_sent_and_unanswered_is_not_sent_again(self):
        release = threading.Event()
        self.addCleanup(release.set)

        def script(request: Request, index: int) -> bytes | None:
            release.wait(5)
            return None

        server = self.serve(script)
        client = self.client(server, read_timeout=0.2, max_retries=2)
        with self.assertRaises(APITimeoutError):
            client.complete("Hi")
        self.assertEqual(len(server.requests), 1)
        self.assertEqual(self.sleeps, [])

    def test_retry_timeouts_sends_it_again_when_asked(self):
        release = threading.Event()
        self.addCleanup(release.set)
        server = self.serve(lambda request, index: None if release.wait(5) else None)
        client = self.client(server, read_timeout=0.2, max_retries=2, retry_timeouts=True)
        with self.assertRaises(APITimeoutError):
            client.complete("Hi")
        self.assertEqual(len(server.requests), 3)


class RetryAfterTests(TransportTestCase):
    def test_lower_case_rate_limit_headers_are_honoured(self):
        cases = [(b"retry-after: 7\r\n", 7.0), (b"x-ratelimit-reset: 5\r\n", 5.0), (b"RETRY-AFTER: 2\r\n", 2.0)]
        for header, wait in cases:
            with self.subTest(header=header):
                self.sleeps.clear()
                server = self.serve(lambda request, index, header=header: json_response(
                    429, {"error": "slow down"}, header) if index == 0 else sse_response("ok"))
                self.assertEqual(self.client(server).complete("Hi").text, "ok")
                self.assertEqual(self.sleeps, [wait])

    def test_a_long_ask_is_raised_with_retry_after_not_retried_early(self):
        server = self.serve(lambda request, index: json_response(429, {"error": "slow"}, b"retry-after: 60\r\n"))
        with self.assertRaises(RateLimitError) as caught:
            self.client(server, max_retries=3, max_retry_wait=30.0).complete("Hi")
        self.assertEqual(caught.exception.retry_after, 60.0)
        self.assertEqual(caught.exception.headers["Retry-After"], "60")  # any case finds it
        self.assertEqual(len(server.requests), 1)
        self.assertEqual(self.sleeps, [])

    def test_retry_rate_limited_false_raises_at_once(self):
        server = self.serve(lambda request, index: json_response(429, {"error": "slow"}, b"Retry-After: 2\r\n"))
        with self.assertRaises(RateLimitError) as caught:
            self.client(server, max_retries=2, retry_rate_limited=False).complete("Hi")
        self.assertEqual(caught.exception.retry_after, 2.0)
        self.assertEqual(len(server.requests), 1)
        self.assertEqual(self.sleeps, [])

    def test_absurd_values_are_capped_never_an_overflow(self):
        now = 1_700_000_000.0
        day = 86400.0
        cases = [
            ({"retry-after": "inf"}, day),
            ({"Retry-After": "1e400"}, day),
            ({"Retry-After": "-5"}, 0.0),
            ({"Retry-After": "nan"}, None),
            ({"Retry-After": "99999999999999999999999"}, day),
            ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, day),
            ({"x-ratelimit-reset": "1e400"}, day),
            ({"X-RateLimit-Reset": str(int(now) + 12)}, 12.0),
        ]
        for headers, expected in cases:
            with self.subTest(headers=headers):
                self.assertEqual(gloo_stream._parse_retry_after(headers, now=lambda: now), expected)

    def test_status_error_headers_are_redacted(self):
        server = self.serve(lambda request, index: json_response(
            500, {"error": "boom"}, b"X-Echo: Bearer " + KEY.encode() + b"\r\n"))
        with self.assertRaises(gloo_stream.ServerError) as caught:
            self.client(server, max_retries=0).complete("Hi")
        self.assertEqual(caught.exception.headers["x-echo"], "Bearer [redacted]")


class CredentialTests(TransportTestCase):
    def test_control_characters_are_refused_naming_the_variable(self):
        cases = [
            (dict(api_key="key-0001\r\nX-Injected: 1"), "api_key"),
            (dict(api_key=None, client_id="id\n0001", client_secret="secret-0001"), "GLOO_CLIENT_ID"),
            (dict(api_key=None, client_id="id-0001", client_secret="secret\x000001"), "GLOO_CLIENT_SECRET"),
        ]
        for options, name in cases:
            with self.subTest(name=name):
                with self.assertRaises(ConfigurationError) as caught:
                    GlooClient(api_url="http://127.0.0.1:9/x", token_url="http://127.0.0.1:9/t", **options)
                self.assertIn(name, str(caught.exception))
                self.assertNotIn("0001", str(caught.exception))

    def test_environment_values_are_stripped_of_trailing_newlines(self):
        server = self.serve(lambda request, index: sse_response("ok"))
        with mock.patch.dict(os.environ, {"GLOO_API_KEY": KEY + "\n", "GLOO_API_URL": server.url + "/v1/chat\n"}):
            client = GlooClient(sleep=self.sleeps.append)
            self.addCleanup(client.close)
            self.assertEqual(client.complete("Hi").text, "ok")
        self.assertEqual(server.requests[0].headers["authorization"], "Bearer " + KEY)

    def test_a_control_character_in_the_environment_names_the_variable(self):
        with mock.patch.dict(os.environ, {"GLOO_API_KEY": "abc\rdef-0001"}):
            with self.assertRaises(ConfigurationError) as caught:
                GlooClient(api_url="http://127.0.0.1:9/x")
        self.assertIn("GLOO_API_KEY", str(caught.exception))
        self.assertNotIn("def-0001", str(caught.exception))

    def test_a_non_ascii_key_or_token_is_a_configuration_error_naming_it(self):
        with mock.patch.dict(os.environ, {"GLOO_API_KEY": "key-\u201cquoted\u201d-0001"}):
            with self.assertRaises(ConfigurationError) as caught:
                GlooClient(api_url="http://127.0.0.1:9/v1/chat")
        self.assertIn("GLOO_API_KEY contains a character that is not ASCII", str(caught.exception))
        self.assertNotIn("quoted", str(caught.exception))

        def script(request: Request, index: int) -> bytes:
            return json_response(200, {"access_token": "tok\u00e9n-0001", "expires_in": 3600})

        server = self.serve(script)
        client = self.client(server, api_key=None, client_id="id", client_secret="secret-0001",
                             token_url=server.url + "/token")
        with self.assertRaises(TokenError) as caught:
            client.complete("Hi")
        self.assertNotIn("tok", str(caught.exception).replace("token", ""))

    def test_an_issued_token_with_cr_lf_is_a_token_error(self):
        server = self.serve(lambda request, index: json_response(200, {"access_token": "tok-0001\r\nX-Evil: 1"}))
        cache = TokenCache(client_id="id-0001", client_secret="secret-0001", token_url=server.url + "/t",
                           timeout=2.0)
        with self.assertRaises(TokenError) as caught:
            cache.get()
        self.assertIn("access_token", str(caught.exception))
        self.assertNotIn("tok-0001", str(caught.exception))

    def test_urls_with_user_and_password_are_refused_unechoed(self):
        for name, options in [("GLOO_API_URL", dict(api_url="https://bob:pa55word-x@example.com/v1")),
                              ("GLOO_TOKEN_URL", dict(api_key=None, client_id="id-0001", client_secret="s-0001",
                                                      token_url="https://bob:pa55word-x@example.com/t"))]:
            with self.subTest(name=name):
                options.setdefault("api_key", KEY)
                with self.assertRaises(ConfigurationError) as caught:
                    GlooClient(**options)
                self.assertIn(name, str(caught.exception))
                self.assertNotIn("pa55word", str(caught.exception))


class TokenGraceTests(TransportTestCase):
    def test_a_failed_early_refresh_keeps_the_valid_token(self):
        answers = [json_response(200, {"access_token": "first-token-0001", "expires_in": 100})]

        def script(request: Request, index: int) -> bytes:
            return answers[index] if index < len(answers) else json_response(503, {"error": "down"})

        server = self.serve(script)
        now = [0.0]
        cache = TokenCache(client_id="id-0001", client_secret="secret-0001", token_url=server.url + "/t",
                           timeout=2.0, clock=lambda: now[0])
        self.assertEqual(cache.get(), "first-token-0001")
        now[0] = 60.0  # past the early refresh (at 50 s), before expiry (100 s)
        with self.assertLogs("gloo_stream", logging.WARNING) as logs:
            self.assertEqual(cache.get(), "first-token-0001")
        self.assertIn("token refresh failed", logs.output[0])
        self.assertNotIn("secret-0001", logs.output[0])
        self.assertEqual(cache.fetch_count, 2)
        now[0] = 70.0  # the next try is 20 s later (half the time left)
        self.assertEqual(cache.get(), "first-token-0001")
        self.assertEqual(cache.fetch_count, 2)
        now[0] = 81.0
        with self.assertLogs("gloo_stream", logging.WARNING):
            self.assertEqual(cache.get(), "first-token-0001")
        self.assertEqual(cache.fetch_count, 3)
        now[0] = 101.0  # expired: nothing valid is left
        with self.assertRaises(TokenError):
            cache.get()


class SecretRegistryTests(TransportTestCase):
    def test_only_live_tokens_stay_registered(self):
        tokens = [f"rotating-token-{n:04d}" for n in range(10)]
        server = self.serve(lambda request, index: json_response(200, {"access_token": tokens[index],
                                                                        "expires_in": 10}))
        now = [0.0]
        cache = TokenCache(client_id="id-0001", client_secret="registry-secret-0001",
                           token_url=server.url + "/t", timeout=2.0, clock=lambda: now[0])
        for n in range(10):
            self.assertEqual(cache.get(), tokens[n])
            now[0] += 10.0
        registered = [t for t in tokens if t in gloo_stream._secrets]
        self.assertEqual(registered, tokens[-2:])
        self.assertIn("registry-secret-0001", gloo_stream._secrets)
        del cache
        gc.collect()
        self.assertEqual([s for s in gloo_stream._secrets if "rotating-token" in s or "registry-secret" in s], [])

    def test_a_client_gone_forgets_its_key(self):
        client = GlooClient(api_key="short-lived-key-0001", api_url="http://127.0.0.1:9/x")
        self.assertIn("short-lived-key-0001", gloo_stream._secrets)
        del client
        gc.collect()
        self.assertNotIn("short-lived-key-0001", gloo_stream._secrets)


class TLSTests(TransportTestCase):
    """One TLS context per client, SSL_CERT_FILE honoured, connections pooled over TLS."""

    def setUp(self) -> None:
        super().setUp()
        if shutil.which("openssl") is None:
            self.skipTest("the openssl command is not installed")
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out",
                        self.cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_context.load_cert_chain(self.cert, key)

    def serve_tls(self, script: Script) -> tuple[ScriptServer, str]:
        server = self.serve(script)
        context = self.server_context
        original = server.get_request

        def get_request() -> tuple[socket.socket, Any]:
            sock, address = original()
            return context.wrap_socket(sock, server_side=True), address

        server.get_request = get_request  # type: ignore[method-assign]
        return server, f"https://127.0.0.1:{server.server_address[1]}/v1/chat"

    def test_ssl_cert_file_is_honoured_and_the_context_built_once(self):
        server, url = self.serve_tls(lambda request, index: sse_response("secure"))
        built = []
        original = gloo_stream._default_ssl_context

        def counting() -> Any:
            built.append(1)
            return original()

        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": self.cert}), \
                mock.patch.object(gloo_stream, "_default_ssl_context", counting):
            client = self.client(server, api_url=url)
            texts = [client.complete("Hi").text for _ in range(3)]
        self.assertEqual(texts, ["secure"] * 3)
        self.assertEqual(built, [1])
        self.assertEqual(server.connections, 1)

    def test_connect_tunnels_are_pooled(self):
        server, url = self.serve_tls(lambda request, index: sse_response("tunnelled"))
        tunnel = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(tunnel.close)
        seen: list[bytes] = []

        def pipe(source: socket.socket, dest: socket.socket) -> None:
            try:
                while True:
                    data = source.recv(65536)
                    if not data:
                        break
                    dest.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, dest):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def serve_tunnels() -> None:
            while True:
                try:
                    client, _ = tunnel.accept()
                except OSError:
                    return
                head = b""
                while b"\r\n\r\n" not in head:
                    head += client.recv(4096)
                seen.append(head)
                upstream = socket.create_connection(("127.0.0.1", server.server_address[1]))
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

        threading.Thread(target=serve_tunnels, daemon=True).start()
        env = {"HTTPS_PROXY": f"http://127.0.0.1:{tunnel.getsockname()[1]}", "NO_PROXY": "", "no_proxy": ""}
        context = ssl.create_default_context(cafile=self.cert)
        with mock.patch.dict(os.environ, env):
            client = self.client(server, api_url=url, ssl_context=context)
            self.assertEqual([client.complete("Hi").text for _ in range(3)], ["tunnelled"] * 3)
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen[0].startswith(f"CONNECT 127.0.0.1:{server.server_address[1]} HTTP/".encode()))
        self.assertEqual(server.connections, 1)

    def test_an_explicit_ssl_context_is_used(self):
        server, url = self.serve_tls(lambda request, index: sse_response("explicit"))
        context = ssl.create_default_context(cafile=self.cert)
        self.assertEqual(self.client(server, api_url=url, ssl_context=context).complete("Hi").text, "explicit")
        default = self.client(server, api_url=url, max_retries=0)  # the system store does not know this cert
        with self.assertRaises(gloo_stream.APIConnectionError):
            default.complete("Hi")


    def test_one_tls_context_per_process_and_ca_setting(self):
        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": self.cert}):
            first = gloo_stream._default_ssl_context()
            self.assertIs(gloo_stream._default_ssl_context(), first)
        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": ""}):
            self.assertIsNot(gloo_stream._default_ssl_context(), first)  # the system store: another context

    def test_the_relay_loop_reads_a_tls_upstream_without_blocking(self):
        from proxy_server import ProxyConfig, ProxyServer

        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = sse_body("over", " TLS") + b"data: [DONE]\n\n"
        events = [body[i:j] for i, j in ((0, body.index(b"\n\n") + 2), (body.index(b"\n\n") + 2, len(body)))]
        server, url = self.serve_tls(lambda request, index: [
            head + b"%x\r\n%s\r\n" % (len(events[0]), events[0]),  # then a pause: the loop waits on TLS
            b"%x\r\n%s\r\n" % (len(events[1]), events[1]), b"0\r\n\r\n"])
        context = ssl.create_default_context(cafile=self.cert)
        client = self.client(server, api_url=url, ssl_context=context, retry_rate_limited=False)
        proxy = ProxyServer(ProxyConfig(port=0, rate_limit_per_minute=0), client=client).start()
        self.addCleanup(proxy.close)
        conn = http.client.HTTPConnection(*proxy.server_address[:2], timeout=10)
        self.addCleanup(conn.close)
        for attempt in range(2):
            if attempt:  # the first stream's connection goes back to the pool once its body's end came
                deadline = time.monotonic() + 5
                while client.pool.idle_count() < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
            body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": True})
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read().decode()
            self.assertEqual(response.status, 200)
            texts = [json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                     for line in raw.split("\n") if line.startswith("data: {")]
            self.assertEqual("".join(texts), "over TLS")
            self.assertTrue(raw.endswith("data: [DONE]\n\n"))
        deadline = time.monotonic() + 5
        while client.pool.reused < 1 and time.monotonic() < deadline:  # the second stream took the first's connection
            time.sleep(0.01)
        self.assertEqual((server.connections, client.pool.reused), (1, 1))


if __name__ == "__main__":
    import unittest

    unittest.main()

"""The relay proxy against the simulator on loopback: routes, relaying, limits, failures."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

import gloo_stream
from gloo_stream import _check_structured
import proxy_server
from proxy_server import ProxyConfig, ProxyServer

from tests.proxy_support import (
    SMUGGLED,
    ProxyTestCase,
    ScriptedUpstream,
    chunk,
    sse,
    chunk_frames,
    content_of,
    data_events,
    outcome_of,
    exchange,
    raw_request,
    read_until_closed,
    split_head,
)
from tests.support import clean_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = {"messages": [{"role": "user", "content": "What is the significance of the resurrection?"}]}


class RouteTests(ProxyTestCase):
    def test_health(self):
        status, headers, body = self.request("GET", "/health")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        health = json.loads(body)
        self.assertEqual((health["status"], health["service"]), ("ok", "completions-streaming-proxy"))
        self.assertEqual(health["active_streams"], 0)
        self.assertIsInstance(health["uptime_seconds"], float)
        self.assertFalse(health["auth_required"])

    def test_unknown_path_404_json(self):
        status, _, body = self.request("GET", "/nope")
        self.assertEqual(status, 404)
        error = json.loads(body)["error"]
        self.assertEqual(sorted(error), ["code", "message", "type"])

    def test_wrong_method_405_with_allow(self):
        for method, path, allow in (("GET", "/api/stream", "POST, OPTIONS"), ("DELETE", "/health", "GET"),
                                    ("PUT", "/v1/chat/completions", "POST, OPTIONS")):
            with self.subTest(method=method, path=path):
                status, headers, body = self.request(method, path)
                self.assertEqual(status, 405)
                self.assertEqual(headers["allow"], allow)
                self.assertEqual(json.loads(body)["error"]["code"], "method_not_allowed")

    def test_models(self):
        status, _, body = self.request("GET", "/v1/models")
        self.assertEqual(status, 200)
        self.assertIn("auto", [model["id"] for model in json.loads(body)["data"]])

    def test_page_is_served_with_strict_headers(self):
        status, headers, body = self.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/html"))
        self.assertIn("default-src 'self'", headers["content-security-policy"])
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertIn(b"<html", body.lower())

    def test_paths_outside_web_are_never_served(self):
        for path in ("/../proxy_server.py", "/%2e%2e/proxy_server.py", "/..%2fproxy_server.py", "//etc/passwd",
                     "/web/../proxy_server.py", "/index.html%00.js", "/.hidden", "/gloo_stream.py"):
            with self.subTest(path=path):
                status, _, body = self.request("GET", path)
                self.assertEqual(status, 404)
                self.assertNotIn(b"import", body)


class RelayTests(ProxyTestCase):
    def test_stream_headers_and_answer(self):
        status, headers, body = self.request("POST", "/api/stream", PROMPT)
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertEqual(headers["cache-control"], "no-cache")
        self.assertEqual(headers["x-accel-buffering"], "no")
        self.assertEqual(headers["transfer-encoding"], "chunked")
        self.assertNotIn("content-encoding", headers)
        events = data_events(body.decode())
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "stop")
        self.assertIn("resurrection", content_of(events).lower())
        self.assertFalse(any(isinstance(e, dict) and "error" in e for e in events))

    def test_upstream_request_is_forced_to_stream_with_auto_routing(self):
        self.request("POST", "/api/stream", dict(PROMPT, stream=False, temperature=0.2, tradition="catholic"))
        body = self.fake.requests[-1]["body"]
        self.assertEqual((body["stream"], body["auto_routing"], body["temperature"], body["tradition"]),
                         (True, True, 0.2, "catholic"))

    def test_an_unknown_field_is_dropped_and_named(self):
        status, headers, _ = self.post_stream("Hi", unknown_field="dropped", top_p=0.9)
        self.assertEqual((status, headers["x-gloo-dropped-fields"]), (200, "unknown_field, top_p"))
        self.assertNotIn("unknown_field", self.fake.requests[-1]["body"])
        self.assertNotIn("top_p", self.fake.requests[-1]["body"])
        self.assertTrue(self.logs.wait_for("dropped=unknown_field, top_p"))

    def test_an_unknown_field_can_be_refused_or_forwarded(self):
        refusing = self.start_proxy(unknown_fields="refuse")
        status, headers, body = self.request("POST", "/api/stream", dict(PROMPT, unknown_field=1), proxy=refusing)
        error = json.loads(body)["error"]
        self.assertEqual((status, error["code"]), (400, "unsupported_field"))
        self.assertTrue(error["message"].startswith("unknown_field "), error["message"])
        self.assertIn("PROXY_UNKNOWN_FIELDS=drop", error["message"])
        self.assertEqual(self.fake.requests, [])
        forwarding = self.start_proxy(unknown_fields="forward")
        self.request("POST", "/api/stream", dict(PROMPT, top_p=0.5), proxy=forwarding)
        self.assertEqual(self.fake.requests[-1]["body"]["top_p"], 0.5)

    def test_every_response_has_a_request_id_that_is_in_its_log_line(self):
        _, headers, _ = self.post_stream("Hi")
        _, other, _ = self.request("GET", "/health")
        self.assertRegex(headers["x-request-id"], r"^[0-9a-f]{32}$")
        self.assertNotEqual(headers["x-request-id"], other["x-request-id"])
        self.assertTrue(self.logs.wait_for("request_id=" + headers["x-request-id"]))

    def test_model_family_passes_through(self):
        self.request("POST", "/api/stream", dict(PROMPT, model_family="anthropic"))
        body = self.fake.requests[-1]["body"]
        self.assertEqual(body["model_family"], "anthropic")
        self.assertNotIn("auto_routing", body)

    def test_two_routing_fields_rejected(self):
        status, _, body = self.request("POST", "/api/stream", dict(PROMPT, model="m", model_family="google"))
        self.assertEqual(status, 400)
        self.assertEqual(self.fake.requests, [])

    def test_client_headers_never_go_upstream(self):
        self.request("POST", "/api/stream", PROMPT, headers={"Cookie": "session=abc", "X-Custom": "1",
                                                             "Authorization": "Bearer client-secret-xyz"})
        upstream = {k.lower(): v for k, v in self.fake.requests[-1]["headers"].items()}
        self.assertNotIn("cookie", upstream)
        self.assertNotIn("x-custom", upstream)
        self.assertTrue(upstream["authorization"].startswith("Bearer fake-token-"))

    def test_each_chunk_frame_holds_whole_events(self):
        for marker in ("", "[[crlf]]", "[[cr]]", "[[split_utf8]]", "[[heartbeat]]", "[[trickle]]"):
            with self.subTest(marker=marker):
                sock = self.raw_socket()
                body = json.dumps({"messages": [{"role": "user", "content": "[[echo]] ἀγάπη 🙏 words " + marker}]})
                sock.sendall(raw_request("/api/stream", body.encode(), extra_headers="Connection: close\r\n"))
                status, _, rest = split_head(read_until_closed(sock))
                self.assertEqual(status, 200)
                frames = chunk_frames(rest)
                for frame in frames:
                    text = frame.decode("utf-8")  # a frame never splits a character
                    self.assertTrue(text.endswith("\n\n"), frame)
                    self.assertNotIn("\r", text)
                events = data_events(b"".join(frames).decode())
                self.assertIn("ἀγάπη 🙏 words", content_of(events))
                self.assertEqual(events[-1]["choices"][0]["finish_reason"], "stop")

    def test_event_and_id_fields_are_kept(self):
        self.fake.enqueue(status=200, headers={"Content-Type": "text/event-stream"}, writes=[
            b'id: 1\ndata: {"choices":[{"delta":{"content":"a"}}]}\n\n',
            b'event: note\ndata: {"choices":[{"delta":{"content":"b"}}]}\n\n',
            b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'])
        status, _, body = self.request("POST", "/api/stream", PROMPT)
        relayed, outcome = body.decode().split("event: outcome\n")
        self.assertEqual(relayed, 'id: 1\ndata: {"choices":[{"delta":{"content":"a"}}]}\n\n'
                                  'event: note\ndata: {"choices":[{"delta":{"content":"b"}}]}\n\n'
                                  'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n')
        self.assertEqual(json.loads(outcome[len("data: "):])["kind"], "finished")

    def test_keep_alive_between_requests(self):
        conn = self.connection()
        for _ in range(3):
            conn.request("POST", "/api/stream", body=json.dumps(PROMPT), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            self.assertEqual(response.status, 200)
            response.read()
        conn.request("GET", "/health")
        self.assertEqual(conn.getresponse().status, 200)

    def test_first_event_arrives_before_the_stream_ends(self):
        sock = self.raw_socket()
        body = json.dumps({"messages": [{"role": "user", "content": "[[slow:0.1]] [[long:15]] [[stamp]]"}]}).encode()
        sock.sendall(raw_request("/api/stream", body))
        received = b""
        while b"data: " not in received:
            received += sock.recv(65536)
        first_at = time.time_ns()
        rest = read_until_closed_or_terminated(sock)
        self.assertTrue(rest.endswith(b"0\r\n\r\n"))
        # The simulator stamps each chunk as it writes it: the first was here before the last was sent.
        sent = [event["sent_ns"] for event in data_events((received + rest).decode("utf-8", "replace"))
                if isinstance(event, dict) and "sent_ns" in event]
        self.assertGreater(len(sent), 15)
        self.assertLess(first_at, max(sent))


def read_until_closed_or_terminated(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class OpenAIRouteTests(ProxyTestCase):
    def test_streaming_ends_with_done(self):
        status, headers, body = self.request("POST", "/v1/chat/completions",
                                             dict(PROMPT, model="auto", stream=True))
        self.assertEqual(status, 200)
        events = data_events(body.decode())
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(self.fake.requests[-1]["body"]["auto_routing"], True)
        self.assertNotIn("model", self.fake.requests[-1]["body"])

    def test_done_not_doubled(self):
        status, _, body = self.request("POST", "/v1/chat/completions",
                                       {"messages": [{"role": "user", "content": "Hi [[openai]]"}], "stream": True})
        self.assertEqual(data_events(body.decode()).count("[DONE]"), 1)

    def test_named_model_passes_through(self):
        self.request("POST", "/v1/chat/completions", dict(PROMPT, model="gloo-anthropic-claude", stream=True))
        body = self.fake.requests[-1]["body"]
        self.assertEqual(body["model"], "gloo-anthropic-claude")
        self.assertNotIn("auto_routing", body)

    def test_not_streaming(self):
        status, headers, body = self.request("POST", "/v1/chat/completions", dict(PROMPT, model="auto"))
        self.assertEqual(status, 200)
        completion = json.loads(body)
        self.assertEqual(completion["object"], "chat.completion")
        choice = completion["choices"][0]
        self.assertEqual(choice["finish_reason"], "stop")
        self.assertEqual(choice["message"]["role"], "assistant")
        self.assertIn("resurrection", choice["message"]["content"].lower())

    def test_not_streaming_tool_calls(self):
        status, _, body = self.request("POST", "/v1/chat/completions",
                                       {"messages": [{"role": "user", "content": "[[tools]]"}]})
        message = json.loads(body)["choices"][0]["message"]
        self.assertEqual(len(message["tool_calls"]), 2)
        self.assertIsNone(message["content"])  # as OpenAI answers a tool call
        json.loads(message["tool_calls"][0]["function"]["arguments"])

    def test_not_streaming_keeps_glooss_routing_metadata(self):
        answer = json.loads(self.request("POST", "/v1/chat/completions", dict(PROMPT, model="auto"))[2])
        chunk = next(c for c in data_events(self.post_stream("What is the resurrection?")[2].decode())
                     if isinstance(c, dict))
        for key in ("provider", "model_family", "routing_mechanism", "routing_tier", "routing_confidence"):
            self.assertIn(key, answer)
            self.assertEqual(type(answer[key]), type(chunk[key]), key)
        self.assertEqual(answer["routing_mechanism"], "auto_routing")
        grounded = json.loads(self.request("POST", "/v1/chat/completions", dict(PROMPT, sources_limit=2))[2])
        self.assertIs(grounded["sources_returned"], True)

    def test_usage_comes_once_in_a_chunk_of_its_own(self):
        for prompt in ("Hi", "Hi [[openai]]"):  # Gloo's usage on its finish chunk, and OpenAI's own ending
            with self.subTest(prompt):
                _, _, body = self.request("POST", "/v1/chat/completions", {
                    "messages": [{"role": "user", "content": prompt}], "stream": True,
                    "stream_options": {"include_usage": True}})
                events = data_events(body.decode())
                with_usage = [e for e in events if isinstance(e, dict) and "usage" in e]
                self.assertEqual(len(with_usage), 1, with_usage)
                self.assertEqual(with_usage[0]["choices"], [])
                self.assertIs(events[-2], with_usage[0])
                self.assertEqual(events[-1], "[DONE]")


class BadRequestTests(ProxyTestCase):
    proxy_options = {"max_body_bytes": 4096}

    def test_json_errors(self):
        big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()
        cases = [
            ("not json", b"{nope", {}, 400),
            ("invalid utf-8", b'{"messages": "\xff"}', {}, 400),
            ("array body", b"[1, 2]", {}, 400),
            ("number body", b"42", {}, 400),
            ("no messages", b"{}", {}, 400),
            ("empty messages", b'{"messages": []}', {}, 400),
            ("messages not objects", b'{"messages": ["hi"]}', {}, 400),
            ("message without role", b'{"messages": [{"content": "hi"}]}', {}, 400),
            ("infinite number", b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999999}', {}, 400),
            ("NaN", b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', {}, 400),
            ("deep nesting", b"[" * 100000 + b"]" * 100000, {"max": True}, 400),
            ("too large", big, {}, 413),
            ("wrong content type", b'{"messages": []}', {"Content-Type": "text/plain"}, 415),
            ("no content type", b'{"messages": []}', {"Content-Type": ""}, 415),
        ]
        for name, body, headers, expected in cases:
            with self.subTest(name):
                if headers.pop("max", False):
                    proxy = self.start_proxy(max_body_bytes=1_000_000)
                else:
                    proxy = self.proxy
                status, response_headers, payload = self.request("POST", "/api/stream", body, headers=headers,
                                                                 proxy=proxy)
                self.assertEqual(status, expected)
                self.assertEqual(response_headers["content-type"], "application/json")
                self.assertIn("message", json.loads(payload)["error"])
        self.assertEqual(self.fake.requests, [])

    def test_framing_errors_close_cleanly(self):
        cases = [
            ("chunked body", b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411),
            ("length and chunked", b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", 400),
            ("negative length", b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Content-Length: -5\r\n\r\n", 400),
            ("non-numeric length", b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: ten\r\n\r\n", 400),
            ("two lengths", b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
            ("no length", b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n", 411),
            ("huge header line", b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", 431),
            ("too many headers", b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
             + b"\r\n", 431),
            ("request line too long", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
            ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        ]
        for name, raw, expected in cases:
            with self.subTest(name):
                sock = self.raw_socket(timeout=5)
                try:
                    sock.sendall(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                response = read_until_closed(sock)
                status, headers, body = split_head(response)
                self.assertEqual(status, expected)
                self.assertIn(b'"error"', body)
        self.assertEqual(self.fake.requests, [])

    def test_no_request_smuggled_behind_a_conflicting_one(self):
        sock = self.raw_socket(timeout=5)
        smuggled = (b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.sendall(smuggled)
        response = read_until_closed(sock)
        self.assertEqual(response.count(b"HTTP/1.1 "), 1)
        self.assertTrue(response.startswith(b"HTTP/1.1 400"))

    def test_body_shorter_than_announced_times_out(self):
        proxy = self.start_proxy(request_timeout_seconds=0.5)
        sock = self.raw_socket(proxy, timeout=5)
        sock.sendall(b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"messages\"")
        status, _, _ = split_head(read_until_closed(sock))
        self.assertEqual(status, 408)  # the request timeout's answer (the socket's own is 5 s)


class LimitTests(ProxyTestCase):
    proxy_options = {"rate_limit_per_minute": 3}

    def test_rate_limit_per_client(self):
        statuses = [self.request("POST", "/api/stream", PROMPT)[0] for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 200])
        status, headers, body = self.request("POST", "/api/stream", PROMPT)
        self.assertEqual(status, 429)
        self.assertGreaterEqual(int(headers["retry-after"]), 1)
        self.assertEqual(json.loads(body)["error"]["type"], "rate_limit_error")
        self.assertEqual(self.request("GET", "/health")[0], 200)  # not rate limited

    def test_zero_turns_it_off(self):
        proxy = self.start_proxy(rate_limit_per_minute=0)
        statuses = {self.request("GET", "/v1/models", proxy=proxy)[0] for _ in range(10)}
        self.assertEqual(statuses, {200})

    def test_stream_cap(self):
        proxy = self.start_proxy(max_streams=1, rate_limit_per_minute=0)
        sock = self.raw_socket(proxy)
        body = json.dumps({"messages": [{"role": "user", "content": "Hi [[stall]]"}]}).encode()
        sock.sendall(raw_request("/api/stream", body))
        received = b""
        while b"data: " not in received:
            received += sock.recv(65536)
        status, headers, payload = self.request("POST", "/api/stream", PROMPT, proxy=proxy)
        self.assertEqual(status, 503)
        self.assertEqual(headers["retry-after"], "1")
        self.assertEqual(json.loads(self.request("GET", "/health", proxy=proxy)[2])["active_streams"], 1)
        sock.close()
        self.assertTrue(self.fake.wait_for_disconnect(3))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and proxy.active_streams:
            time.sleep(0.01)
        self.assertEqual(self.request("POST", "/api/stream", PROMPT, proxy=proxy)[0], 200)

    def test_connection_cap(self):
        proxy = self.start_proxy(max_connections=3)
        held = [self.raw_socket(proxy) for _ in range(3)]
        for sock in held:  # make sure each is admitted (a thread is reading from it)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(sock.recv(100).startswith(b"HTTP/1.1 200"))
        status, headers, body = split_head(read_until_closed(self.raw_socket(proxy, timeout=5)))
        self.assertEqual((status, headers["retry-after"]), (503, "1"))
        self.assertEqual(json.loads(body)["error"]["code"], "overloaded")
        held[0].close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            sock = self.raw_socket(proxy, timeout=5)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if split_head(read_until_closed(sock))[0] == 200:
                break
            time.sleep(0.05)
        else:
            self.fail("a freed connection slot was never reused")
        for sock in held[1:]:
            sock.close()
        metrics = b""
        deadline = time.monotonic() + 3
        while b"gloo_proxy_refused_connections_total" not in metrics and time.monotonic() < deadline:
            try:
                metrics = self.request("GET", "/metrics", proxy=proxy)[2]
            except (ConnectionError, OSError):
                time.sleep(0.05)  # slots are freed as the closed connections' threads finish
        self.assertRegex(metrics.decode(), r"gloo_proxy_refused_connections_total [1-9]")

    def test_one_address_cannot_hold_every_connection(self):
        proxy = self.start_proxy(max_connections_per_client=3, max_connections=100)
        held = [self.raw_socket(proxy) for _ in range(3)]
        deadline = time.monotonic() + 5
        while proxy.connections.from_address("127.0.0.1") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        fourth = self.raw_socket(proxy)
        status, _, body = split_head(read_until_closed(fourth))
        self.assertEqual((status, json.loads(body)["error"]["code"]), (429, "too_many_connections"))
        held.pop().close()  # one goes: there is room again
        while proxy.connections.from_address("127.0.0.1") > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(self.request("GET", "/health", proxy=proxy)[0], 200)
        trusting = self.start_proxy(max_connections_per_client=1, trusted_proxies=("127.0.0.1",))
        others = [self.raw_socket(trusting) for _ in range(3)]  # a front proxy's connections are not counted
        self.assertEqual(self.request("GET", "/health", proxy=trusting)[0], 200)
        self.assertEqual(len(others), 3)

    def test_slowloris_headers_cut_off(self):
        proxy = self.start_proxy(request_timeout_seconds=0.5)
        sock = self.raw_socket(proxy, timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        closed = False
        for byte in b"X-Slow: abcdefghijklmnop":
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
        response = read_until_closed(sock)
        self.assertTrue(closed or response.startswith(b"HTTP/1.1 408"), response[:80])

    def test_idle_keep_alive_connection_is_closed(self):
        proxy = self.start_proxy(request_timeout_seconds=0.3)
        sock = self.raw_socket(proxy, timeout=5)
        self.assertEqual(sock.recv(10), b"")  # closed by the proxy (the socket's own timeout would raise)

    def test_client_that_stops_reading_is_cut_off(self):
        proxy = self.start_proxy(write_timeout_seconds=0.5, rate_limit_per_minute=0)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(proxy.server_address[:2])
        self.addCleanup(sock.close)
        body = json.dumps({"messages": [{"role": "user", "content": "[[long:200000]]"}]}).encode()
        sock.sendall(raw_request("/api/stream", body))
        self.assertTrue(self.fake.wait_for_disconnect(10))  # the proxy gave up on us and closed the upstream
        self.assertTrue(self.logs.wait_for("slow_client"))


class AuthTests(ProxyTestCase):
    proxy_options = {"api_key": "proxy-key-0123456789"}

    def test_api_routes_need_the_key(self):
        for headers, expected in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                  ({"Authorization": "Basic proxy-key-0123456789"}, 401),
                                  ({"Authorization": "Bearer proxy-key-0123456789"}, 200)):
            with self.subTest(headers=headers):
                status, response_headers, body = self.request("POST", "/api/stream", PROMPT, headers=headers)
                self.assertEqual(status, expected)
                if expected == 401:
                    self.assertEqual(json.loads(body)["error"]["type"], "authentication_error")
                    self.assertNotIn(b"proxy-key-0123456789", body)

    def test_refused_body_is_not_read_as_the_next_request(self):
        conn = self.connection()
        body = json.dumps(PROMPT)
        conn.request("POST", "/api/stream", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        self.assertEqual(response.status, 401)
        response.read()
        conn.request("POST", "/api/stream", body=body, headers={"Content-Type": "application/json",
                                                                "Authorization": "Bearer proxy-key-0123456789"})
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        self.assertIn(b"finish_reason", response.read())

    def test_health_is_open_and_says_auth_required(self):
        status, _, body = self.request("GET", "/health")
        self.assertEqual(status, 200)
        self.assertTrue(json.loads(body)["auth_required"])

    def test_metrics_need_the_key(self):
        self.assertEqual(self.request("GET", "/metrics")[0], 401)
        status, _, body = self.request("GET", "/metrics", headers={"Authorization": "Bearer proxy-key-0123456789"})
        self.assertEqual(status, 200)
        self.assertIn(b"gloo_proxy_requests_total", body)

    def test_guessing_is_rate_limited(self):
        statuses = [self.request("GET", "/v1/models", headers={"Authorization": f"Bearer guess{i}"})[0]
                    for i in range(12)]
        self.assertEqual(statuses[:10], [401] * 10)
        self.assertEqual(statuses[10:], [429, 429])


class CORSTests(ProxyTestCase):
    def test_allowed_origin_is_echoed(self):
        status, headers, _ = self.request("POST", "/api/stream", PROMPT, headers={"Origin": "http://allowed.example"})
        self.assertEqual(status, 200)
        self.assertEqual(headers["access-control-allow-origin"], "http://allowed.example")
        self.assertEqual(headers["vary"], "Origin")

    def test_preflight_allowed(self):
        status, headers, body = self.request("OPTIONS", "/api/stream", headers={
            "Origin": "http://allowed.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        self.assertEqual(status, 204)
        self.assertEqual(body, b"")
        self.assertEqual(headers["access-control-allow-origin"], "http://allowed.example")
        self.assertEqual(headers["access-control-allow-methods"], "POST, OPTIONS")
        self.assertEqual(headers["access-control-allow-headers"], "Content-Type, Authorization")
        self.assertEqual(headers["access-control-max-age"], "600")

    def test_foreign_origin_refused(self):
        for method in ("OPTIONS", "POST"):
            with self.subTest(method=method):
                status, headers, _ = self.request(method, "/api/stream", PROMPT if method == "POST" else None,
                                                  headers={"Origin": "http://evil.example"})
                self.assertEqual(status, 403)
                self.assertNotIn("access-control-allow-origin", headers)
        self.assertEqual(self.fake.requests, [])

    def test_same_origin_page_needs_no_setting(self):
        status, headers, _ = self.request("POST", "/api/stream", PROMPT, headers={"Origin": self.proxy.url})
        self.assertEqual(status, 200)
        self.assertNotIn("access-control-allow-origin", headers)

    def test_dns_rebinding_host_is_not_same_origin(self):
        host = f"attacker.example:{self.proxy.server_address[1]}"
        status, _, _ = self.request("POST", "/api/stream", PROMPT,
                                    headers={"Origin": "http://" + host, "Host": host})
        self.assertEqual(status, 403)

    def test_origin_with_control_characters(self):
        sock = self.raw_socket(timeout=5)
        sock.sendall(b"OPTIONS /api/stream HTTP/1.1\r\nHost: x\r\nOrigin: http://allowed.example\x00\x07evil\r\n"
                     b"Connection: close\r\n\r\n")
        status, headers, _ = split_head(read_until_closed(sock))
        self.assertEqual(status, 403)
        self.assertNotIn("access-control-allow-origin", headers)


class UpstreamFailureTests(ProxyTestCase):
    client_options = {"max_retries": 1, "backoff_base": 0.01, "connect_timeout": 0.5}

    def test_status_mapping(self):
        cases = [(400, 400), (422, 422), (401, 502), (403, 403), (404, 502), (408, 502), (429, 429),
                 (500, 502), (502, 502), (503, 503)]
        for upstream, expected in cases:
            with self.subTest(upstream=upstream):
                status, headers, body = self.post_stream(f"Hi {upstream} [[status:{upstream}:retry=0]]")
                self.assertEqual(status, expected)
                error = json.loads(body)["error"]
                self.assertEqual(sorted(error), ["code", "message", "type"])
                if expected in (429, 503):
                    self.assertEqual(headers["retry-after"], "1")  # the upstream's own wait, passed on

    def test_credentials_rejected_is_logged(self):
        self.post_stream("Hi [[status:401]]")
        self.assertTrue(self.logs.wait_for("credentials"))

    def test_a_403_is_the_callers_with_glooss_words_and_leaves_health_alone(self):
        for _ in range(4):
            status, _, body = self.post_stream("Hi [[status:403]]")
            error = json.loads(body)["error"]
            self.assertEqual((status, error["type"], error["code"]), (403, "permission_error", "forbidden"))
            self.assertEqual(error["message"], "Insufficient permissions")  # the simulator's (Gloo's) text
        self.assertEqual(json.loads(self.request("GET", "/health")[2])["status"], "ok")
        self.assertFalse(self.logs.wait_for("credentials", timeout=0.2))

    def test_token_endpoint_refuses(self):
        proxy = self.start_proxy(client_secret="wrong-secret-abcdef")
        status, _, body = self.request("POST", "/api/stream", PROMPT, proxy=proxy)
        self.assertEqual(status, 502)
        self.assertNotIn(b"wrong-secret-abcdef", body)

    def test_unreachable_upstream(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proxy = self.start_proxy(api_url=f"http://127.0.0.1:{port}/x")
        status, _, body = self.request("POST", "/api/stream", PROMPT, proxy=proxy)
        self.assertEqual(status, 502)
        self.assertEqual(json.loads(body)["error"]["code"], "upstream_unreachable")

    def test_upstream_timeout_before_headers(self):
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        self.addCleanup(silent.close)
        port = silent.getsockname()[1]
        # The wait for the upstream's headers is bounded by the read (idle) timeout, not the connect one.
        proxy = self.start_proxy(api_url=f"http://127.0.0.1:{port}/x", upstream_idle_seconds=0.5)
        status, _, body = self.request("POST", "/api/stream", PROMPT, proxy=proxy)
        self.assertEqual(status, 504)

    def test_drop_mid_stream_is_one_error_event(self):
        status, _, body = self.post_stream("Hi [[drop:3]]")
        self.assertEqual(status, 200)
        events = data_events(body.decode())
        errors = [e for e in events if isinstance(e, dict) and "error" in e and "choices" not in e]
        self.assertEqual(len(errors), 1)
        self.assertIs(events[-1], errors[0])
        self.assertEqual(errors[0]["error"]["type"], "upstream_disconnected")
        self.assertEqual(len(content_of(events)) > 0, True)

    def test_error_chunk_is_relayed_then_one_error_event(self):
        status, _, body = self.post_stream("Hi [[error]]")
        events = data_events(body.decode())
        self.assertEqual(events[-2]["choices"][0]["finish_reason"], "error")
        self.assertEqual(events[-1]["error"]["code"], "PROVIDER_TIMEOUT")
        self.assertEqual(sum(1 for e in events if isinstance(e, dict) and set(e) == {"error"}), 1)

    def test_not_an_event_stream(self):
        status, _, body = self.post_stream("Hi [[html]]")
        self.assertEqual(status, 502)
        self.assertEqual(json.loads(body)["error"]["code"], "upstream_bad_response")

    def test_huge_event_is_bounded(self):
        proxy = self.start_proxy(max_event_bytes=64 * 1024)
        status, _, body = self.request("POST", "/api/stream",
                                       {"messages": [{"role": "user", "content": "[[huge_event:5000000:open]]"}]},
                                       proxy=proxy)
        events = data_events(body.decode())
        self.assertEqual(events[-1]["error"]["type"], "upstream_event_too_large")
        self.assertTrue(self.fake.wait_for_disconnect(3))


class TimingTests(ProxyTestCase):
    proxy_options = {"heartbeat_seconds": 0.1, "upstream_idle_seconds": 0.6}

    def test_heartbeat_while_upstream_is_silent(self):
        status, _, body = self.post_stream("Hi [[stall:0.45]]")
        text = body.decode()
        self.assertGreaterEqual(text.count(": keep-alive\n\n"), 2)
        self.assertEqual(data_events(text)[-1]["choices"][0]["finish_reason"], "stop")

    def test_idle_upstream_ends_with_an_error_event(self):
        status, _, body = self.post_stream("Hi [[stall]]")
        events = data_events(body.decode())
        self.assertEqual(events[-1]["error"]["type"], "upstream_timeout")
        # The relay ended it before the library saw an end: the verdict is cut short, for the relay's reason.
        verdict = outcome_of(body.decode())
        self.assertEqual((verdict["kind"], verdict["error_name"], verdict["complete"]),
                         ("cut_short", "upstream_timeout", False))
        self.assertIn("sent nothing for 0.6s", verdict["message"])
        self.assertTrue(self.fake.wait_for_disconnect(3))


class DisconnectTests(ProxyTestCase):
    def check_client_going_away(self, prompt: str) -> None:
        sock = self.raw_socket()
        sock.sendall(raw_request("/api/stream", json.dumps({"messages": [{"role": "user", "content": prompt}]})
                                 .encode()))
        received = b""
        while b"data: " not in received:
            received += sock.recv(65536)
        sock.close()
        self.assertTrue(self.fake.wait_for_disconnect(3))  # (a stalled upstream holds 60 s unless closed)
        self.assertTrue(self.logs.wait_for("client_gone"))
        deadline = time.monotonic() + 3
        while self.proxy.active_streams and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(self.proxy.active_streams, 0)

    def test_while_upstream_is_silent(self):
        self.check_client_going_away("Hi [[stall]]")

    def test_while_upstream_is_streaming(self):
        self.check_client_going_away("Hi [[slow:0.05]] [[long:400]]")


class LogTests(ProxyTestCase):
    def test_one_line_per_request_without_secrets(self):
        self.request("POST", "/api/stream", {"messages": [{"role": "user", "content": "my private question"}]},
                     headers={"Authorization": "Bearer some-client-token-123"})
        self.request("GET", "/health?token=querysecret")
        self.request("GET", "/nope")
        lines = self.logs.request_lines(3)
        self.assertEqual(len(lines), 3, self.logs.lines)
        # A stream's line is written when the relay loop finishes it, which may come after the next
        # request's line: the lines' order is not the requests' order.
        stream = [line for line in lines if " POST /api/stream " in line]
        self.assertEqual(len(stream), 1, lines)
        self.assertRegex(stream[0], r"127\.0\.0\.1 POST /api/stream 200 \d+ms complete .*events=\d+ ttft_ms=\d+")
        self.assertIn("prompt_chars=19", stream[0])
        joined = "\n".join(self.logs.lines)
        for secret in [self.fake.client_secret, "my private question", "querysecret", "some-client-token-123"] + \
                list(self.fake.issued_tokens):
            self.assertNotIn(secret, joined)

    def test_json_log_format(self):
        proxy = self.start_proxy(log_format="json")
        self.request("GET", "/health", proxy=proxy)
        record = json.loads(self.logs.request_lines(1)[-1])
        self.assertEqual((record["method"], record["path"], record["status"], record["outcome"]),
                         ("GET", "/health", 200, "ok"))


class MetricsTests(ProxyTestCase):
    def test_prometheus_text(self):
        self.post_stream("Hi")
        self.post_stream("Hi [[drop:2]]")
        self.logs.request_lines(2)  # requests are counted as their log line is written, just after the answer
        status, headers, body = self.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        text = body.decode()
        self.assertIn('gloo_proxy_requests_total{route="/api/stream",status="200"} 2', text)
        self.assertIn('gloo_proxy_streams_total{outcome="complete"} 1', text)
        self.assertIn('gloo_proxy_streams_total{outcome="upstream_disconnected"} 1', text)
        self.assertIn("gloo_proxy_active_streams 0", text)
        self.assertRegex(text, r'gloo_proxy_time_to_first_token_seconds_bucket\{le="\+Inf"\} 2')
        self.assertRegex(text, r"gloo_proxy_relayed_bytes_total [1-9]\d*")
        for line in text.splitlines():
            self.assertRegex(line, r'^(# (HELP|TYPE) \w+ .+|\w+(\{[^}]*\})? [0-9.e+-]+)$')


class DrainTests(ProxyTestCase):
    def test_drain_lets_streams_finish_and_refuses_new_ones(self):
        results = {}

        def stream():
            results["response"] = self.post_stream("Hi [[slow:0.05]] [[long:20]]")

        thread = threading.Thread(target=stream)
        thread.start()
        deadline = time.monotonic() + 3
        while not self.proxy.active_streams and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(self.proxy.active_streams, 1)
        self.assertTrue(self.proxy.drain(5))
        thread.join(5)
        status, _, body = results["response"]
        self.assertEqual(status, 200)
        self.assertEqual(data_events(body.decode())[-1]["choices"][0]["finish_reason"], "stop")
        with self.assertRaises(OSError):
            socket.create_connection(self.proxy.server_address[:2], timeout=1).close()


class ConnectionLifecycleTests(ProxyTestCase):
    def test_http_1_0_client_gets_the_bare_stream(self):
        sock = self.raw_socket()
        body = json.dumps(PROMPT).encode()
        sock.sendall(b"POST /api/stream HTTP/1.0\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        status, headers, rest = split_head(read_until_closed(sock))
        self.assertEqual(status, 200)
        self.assertNotIn("transfer-encoding", headers)
        self.assertEqual(headers["connection"], "close")
        self.assertTrue(rest.startswith(b"data: {"))
        self.assertEqual(data_events(rest.decode())[-1]["choices"][0]["finish_reason"], "stop")

    def test_close_ends_idle_kept_alive_connections(self):
        conn = self.connection()
        conn.request("GET", "/health")
        self.assertEqual(conn.getresponse().read()[:1], b"{")
        sock = conn.sock
        self.proxy.close()
        sock.settimeout(3)
        self.assertEqual(sock.recv(100), b"")  # closed, not answered with a 503

    def test_drain_ends_idle_kept_alive_connections(self):
        conn = self.connection()
        conn.request("GET", "/health")
        conn.getresponse().read()
        self.assertTrue(self.proxy.drain(2))
        conn.sock.settimeout(3)
        self.assertEqual(conn.sock.recv(100), b"")


POST_HEAD = b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


class FramingDefectTests(ProxyTestCase):
    """#11 defect 1: framing that two parsers could read differently is a 400 that closes."""

    proxy_options = {"request_timeout_seconds": 0.5}

    def test_differing_content_lengths_and_header_lines_without_colon_are_400_and_close(self):
        cases = [
            ("two different lengths", POST_HEAD + b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}"),
            ("header line without a colon", b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length 40\r\n\r\n"),
            ("a colon-less line before the length", POST_HEAD + b"X-Junk\r\nContent-Length: 2\r\n\r\n{}"),
            ("whitespace before the colon", POST_HEAD + b"Content-Length : 2\r\n\r\n{}"),
            ("folded header line", POST_HEAD + b"X-A: 1\r\n Content-Length: 2\r\n\r\n{}"),
        ]
        for name, raw in cases:
            with self.subTest(name):
                response = exchange(self.raw_socket(timeout=5), raw + SMUGGLED)
                status, headers, body = split_head(response)
                self.assertEqual(status, 400)
                self.assertEqual(headers["connection"], "close")
                self.assertEqual(response.count(b"HTTP/1.1 "), 1, response[:300])
                self.assertIn("message", json.loads(body)["error"])
        self.assertEqual(self.fake.requests, [])

    def test_a_content_length_of_thousands_of_digits_is_413_never_a_traceback(self):
        for digits in (20, 5000, 50000):
            with self.subTest(digits=digits):
                raw = POST_HEAD + b"Content-Length: " + b"9" * digits + b"\r\n\r\n"
                status, headers, body = split_head(exchange(self.raw_socket(timeout=5), raw))
                self.assertEqual(status, 413)
                self.assertEqual(headers["connection"], "close")
        self.assertFalse(any("Traceback" in line or "unexpected error" in line for line in self.logs.lines))


class HTTPNitTests(ProxyTestCase):
    """#11 defect 7: HEAD, Host, 100 Continue and a string "stream"."""

    def test_no_body_after_a_head_error_answer(self):
        for path in ("/nope", "/api/stream", "/health"):
            with self.subTest(path=path):
                raw = f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                status, headers, rest = split_head(exchange(self.raw_socket(timeout=5), raw))
                self.assertEqual(status, 405 if path != "/nope" else 404)
                self.assertGreater(int(headers["content-length"]), 0)  # the length a GET would get
                self.assertEqual(rest, b"")

    def test_http_1_1_without_host_is_400(self):
        status, headers, body = split_head(exchange(self.raw_socket(timeout=5),
                                                         b"GET /health HTTP/1.1\r\n\r\n"))
        self.assertEqual(status, 400)
        self.assertIn("Host", json.loads(body)["error"]["message"])

    def test_no_100_continue_before_a_final_4xx(self):
        cases = [
            ("foreign origin", b"Origin: http://evil.example\r\n", 403),
            ("too large", b"", 413),
            ("wrong type", b"", 415),
        ]
        for name, extra, expected in cases:
            with self.subTest(name):
                length = 10 ** 7 if name == "too large" else 2
                content_type = b"text/plain" if name == "wrong type" else b"application/json"
                raw = (b"POST /api/stream HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: "
                       + content_type + b"\r\n" + extra + b"Content-Length: %d\r\n\r\n" % length)
                response = exchange(self.raw_socket(timeout=5), raw)
                self.assertTrue(response.startswith(b"HTTP/1.1 %d " % expected), response[:100])
                self.assertNotIn(b"100 Continue", response)

    def test_100_continue_once_the_body_is_wanted(self):
        sock = self.raw_socket(timeout=5)
        body = json.dumps(PROMPT).encode()
        sock.sendall(POST_HEAD + b"Expect: 100-continue\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        self.assertEqual(sock.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        status, _, rest = split_head(read_until_closed(sock))
        self.assertEqual(status, 200)
        self.assertIn(b"finish_reason", rest)

    def test_stream_must_be_a_boolean(self):
        for value in ("false", "true", 0, 1, "yes"):
            with self.subTest(value=value):
                status, _, body = self.post_stream("Hi", path="/v1/chat/completions", stream=value)
                self.assertEqual(status, 400)
                self.assertIn("stream must be true or false", json.loads(body)["error"]["message"])
        self.assertEqual(self.fake.requests, [])


class ClientDepartureTests(ProxyTestCase):
    """#11 defects 2 and 3: the upstream is closed soon after the client goes, in every case."""

    def wait_closed(self) -> None:
        self.assertTrue(self.fake.wait_for_disconnect(3))  # (a stalled upstream holds 60 s unless closed)

    def test_non_streaming_v1_closes_the_upstream_when_the_client_goes(self):
        sock = self.raw_socket()
        body = json.dumps({"messages": [{"role": "user", "content": "Hi [[slow:0.05]] [[long:400]]"}],
                           "stream": False}).encode()
        sock.sendall(raw_request("/v1/chat/completions", body))
        deadline = time.monotonic() + 3
        while not self.fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the upstream is generating
        sock.close()
        self.wait_closed()
        self.assertTrue(self.logs.wait_for("client_gone"))

    def test_non_streaming_v1_caps_the_buffered_answer(self):
        proxy = self.start_proxy(max_answer_bytes=4000)
        status, _, body = self.request("POST", "/v1/chat/completions",
                                       {"messages": [{"role": "user", "content": "Hi [[long:2000]]"}],
                                        "stream": False}, proxy=proxy)
        self.assertEqual(status, 502)
        error = json.loads(body)["error"]
        self.assertIn("PROXY_MAX_ANSWER_BYTES", error["message"])
        self.assertTrue(self.fake.wait_for_disconnect(3))

    def test_a_client_that_sent_extra_bytes_is_still_noticed_when_it_leaves(self):
        for when in ("with the request", "mid-stream"):
            with self.subTest(when=when):
                sock = self.raw_socket()
                request = raw_request("/api/stream", json.dumps(
                    {"messages": [{"role": "user", "content": "Hi [[stall]]"}]}).encode())
                sock.sendall(request + (SMUGGLED if when == "with the request" else b""))
                received = b""
                while b"data: " not in received:
                    received += sock.recv(65536)
                if when == "mid-stream":
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nmore bytes")
                    time.sleep(0.1)
                sock.close()
                self.wait_closed()


class OriginDefectTests(ProxyTestCase):
    """#11 defects 4 and 5: the rebinding guard on every bind address; `*` and normalised origins."""

    def preflight(self, host: str, origin: str, proxy=None):
        raw = (f"OPTIONS /api/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n"
               f"Connection: close\r\n\r\n").encode()
        return split_head(exchange(self.raw_socket(proxy, timeout=5), raw))[:2]

    def test_dns_rebinding_guard_holds_when_bound_to_every_interface(self):
        proxy = self.start_proxy(allowed_hosts=("Proxy.Example.",))
        proxy.loopback_only = False  # as when bound to 0.0.0.0 or :: (tests stay on loopback)
        port = proxy.server_address[1]
        cases = [
            ("a name someone else controls", f"evil.example:{port}", 403),
            ("a name that starts with 127.", f"127.0.0.1.evil.example:{port}", 403),
            ("an address literal", f"192.0.2.7:{port}", 204),
            ("localhost", f"localhost:{port}", 204),
            ("a name in PROXY_ALLOWED_HOSTS", f"proxy.example:{port}", 204),
            ("the unspecified address", f"0.0.0.0:{port}", 403),
        ]
        for name, host, expected in cases:
            with self.subTest(name):
                status, _ = self.preflight(host, "http://" + host, proxy)
                self.assertEqual(status, expected)

    def test_star_allows_any_page_without_credentials_and_warns(self):
        proxy = self.start_proxy(cors_origins=("*",))
        status, headers = self.preflight("x", "https://any.example", proxy)
        self.assertEqual(status, 204)
        self.assertEqual(headers["access-control-allow-origin"], "*")
        self.assertNotIn("access-control-allow-credentials", headers)
        self.assertTrue(any("PROXY_CORS_ORIGIN=*" in warning for warning in proxy.startup_warnings()))
        status, headers, _ = self.request("POST", "/api/stream", PROMPT, headers={"Origin": "https://any.example"},
                                          proxy=proxy)
        self.assertEqual((status, headers["access-control-allow-origin"]), (200, "*"))

    def test_configured_origins_are_normalised(self):
        from proxy_server import ProxyConfig
        config = ProxyConfig(cors_origins=("HTTPS://App.Example.com:443/", "http://LOCALHOST:3000", "*"))
        config.validate()
        self.assertEqual(config.cors_origins, ("https://app.example.com", "http://localhost:3000", "*"))
        proxy = self.start_proxy(cors_origins=("HTTPS://App.Example.com/",))
        status, headers = self.preflight("x", "https://app.example.com", proxy)
        self.assertEqual((status, headers["access-control-allow-origin"]), (204, "https://app.example.com"))
        for bad in ("https://app.example.com/path", "ftp://app.example.com", "https://user@app.example.com"):
            with self.subTest(bad=bad), self.assertRaises(gloo_stream.ConfigurationError):
                ProxyConfig(cors_origins=(bad,)).validate()


class OfflineCapTests(ProxyTestCase):
    """#11 defect 6: with --offline the in-process simulator's size and pace markers are capped."""

    def test_scenario_markers_are_capped(self):
        proxy = self.start_proxy(offline=True, max_event_bytes=64 * 1024)
        cases = [("[[long:2000000]]", "[[long:5000]]"), ("[[huge_event:500000000:open]]",
                                                          f"[[huge_event:{128 * 1024}:open]]"),
                 ("[[slow:3000]]", "[[slow:2]]"), ("[[long:40]]", "[[long:40]]")]
        for marker, expected in cases:
            with self.subTest(marker=marker):
                sock = self.raw_socket(proxy)
                sock.sendall(raw_request("/api/stream", json.dumps(
                    {"messages": [{"role": "user", "content": "Hi " + marker}]}).encode()))
                deadline = time.monotonic() + 3
                while not self.fake.requests and time.monotonic() < deadline:
                    time.sleep(0.01)
                sock.close()
                self.assertEqual(self.fake.requests.pop()["body"]["messages"][0]["content"], "Hi " + expected)
        self.assertTrue(proxy.health()["simulator"])


class ScriptedUpstreamTestCase(ProxyTestCase):
    """A proxy in front of a ScriptedUpstream (a Studio API key, no OAuth)."""

    def setUp(self):
        super().setUp()
        self.upstream = ScriptedUpstream().start()
        self.addCleanup(self.upstream.stop)
        self.proxy = self.start_proxy(api_url=self.upstream.url, client_id=None, client_secret=None,
                                      upstream_api_key="studio-key-0123456789")

    def last_error(self, body: bytes) -> dict:
        events = data_events(body.decode())
        ours = [e for e in events if isinstance(e, dict) and set(e) == {"error"} and "type" in e["error"]]
        self.assertEqual(len(ours), 1, events)  # (an upstream `event: error` is relayed as it came, before)
        self.assertIs(events[-1], ours[0])
        return ours[0]["error"]


class OneVerdictTests(ScriptedUpstreamTestCase):
    """#11: the library and the relay give the same verdict for the same upstream bytes."""

    CASES = [
        ("content then event: error", sse(chunk("Hello")) + sse({"error": {"message": "provider overloaded",
                                                                                 "code": 503}}, event="error"),
         "provider_error", "upstream_error"),
        ("finish_reason error", sse(chunk("Hi"),
                                    {"choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
                                     "error": {"code": 2001, "name": "PROVIDER_TIMEOUT", "message": "timed out"}}),
         "provider_error", "upstream_error"),
        ("cut short", sse(chunk("Hi")), "cut_short", "upstream_disconnected"),
        ("finished", sse(chunk("Hi"), chunk(None, "stop")), "finished", None),
        ("content filter", sse(chunk("Hi"), chunk(None, "content_filter")), "finished", None),
    ]

    def library_outcome(self, writes):
        self.upstream.answer(writes=[writes])
        client = gloo_stream.GlooClient(api_key="studio-key-0123456789", api_url=self.upstream.url)
        stream = client.stream_payload({"messages": [{"role": "user", "content": "Hi"}], "auto_routing": True})
        try:
            for _ in stream.chunks():
                pass
        except gloo_stream.StreamError:
            pass
        return stream.outcome

    def test_library_and_relay_agree(self):
        for name, writes, kind, relay_type in self.CASES:
            with self.subTest(name):
                outcome = self.library_outcome(writes)
                self.assertEqual(outcome.kind, kind)
                self.upstream.answer(writes=[writes])
                status, _, body = self.post_stream("Hi")
                self.assertEqual(status, 200)
                verdict = outcome_of(body.decode())  # the page's verdict: the library's, sent by the relay
                self.assertEqual((verdict["kind"], verdict["finish_reason"], verdict["message"]),
                                 (outcome.kind, outcome.finish_reason, outcome.message))
                events = data_events(body.decode())
                if relay_type is None:
                    self.assertFalse(any(isinstance(e, dict) and set(e) == {"error"} for e in events), events)
                    continue
                error = self.last_error(body)
                self.assertEqual(error["type"], relay_type)
                self.assertEqual(error["message"], outcome.message)
                if kind == "provider_error":
                    self.assertEqual(error["code"], outcome.error_name or outcome.error_code)

    def test_the_librarys_vectors_end_each_relayed_stream_with_its_verdict(self):
        from tests.test_outcome import VECTORS  # the vectors the library's and the CLI's tests run too

        for name, body, _, _ in VECTORS:
            with self.subTest(name):
                expected = self.library_outcome(body).to_dict()
                self.upstream.answer(writes=[body])
                status, _, relayed = self.post_stream("Hi")
                self.assertEqual(status, 200)
                self.assertEqual(outcome_of(relayed.decode()), {**expected, "model": mock.ANY, "usage": mock.ANY,
                                                                "cost_usd": mock.ANY})

    def test_provider_overloaded_is_told_as_such(self):
        self.upstream.answer(writes=[self.CASES[0][1]])
        error = self.last_error(self.post_stream("Hi")[2])
        self.assertIn("provider overloaded", error["message"])

    def test_a_finished_answer_then_a_silent_open_connection_ends_cleanly(self):
        proxy = self.start_proxy(api_url=self.upstream.url, client_id=None, client_secret=None,
                                 upstream_api_key="studio-key-0123456789", heartbeat_seconds=0.2,
                                 upstream_idle_seconds=30)
        grace = mock.patch.object(gloo_stream.ChatStream, "finish_grace", 0.3)  # 2 s by default
        grace.start()
        self.addCleanup(grace.stop)
        for path in ("/api/stream", "/v1/chat/completions"):
            with self.subTest(path=path):
                # Held open and silent for a minute: only the finish grace can end it within the
                # request's 10 s socket timeout (the idle timeout is 30 s).
                self.upstream.answer(writes=[sse(chunk("Hi"), chunk(None, "stop"))], hold=60)
                status, _, body = self.request("POST", path, dict(PROMPT, stream=True), proxy=proxy)
                events = data_events(body.decode())
                self.assertFalse(any(isinstance(e, dict) and "error" in e for e in events), events)
                if path.startswith("/v1"):
                    self.assertEqual(events[-1], "[DONE]")
                else:
                    self.assertEqual(events[-1]["choices"][0]["finish_reason"], "stop")


class FieldPolicyTests(ScriptedUpstreamTestCase):
    """#10.2: documented Gloo fields forwarded, OpenAI names mapped, anything else a 400 naming it."""

    def setUp(self):
        super().setUp()
        self.upstream.answer(writes=[sse(chunk("Hi"), chunk(None, "stop",
                                                                          usage={"total_tokens": 3}))])

    def test_every_documented_field_is_forwarded(self):
        fields = {"model_family": "anthropic", "tradition": "catholic", "temperature": 0.3, "max_tokens": 50,
                  "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                  "tool_choice": "auto", "parallel_tool_calls": False, "stream_options": {"include_usage": True}}
        for path in ("/api/stream", "/v1/chat/completions"):
            with self.subTest(path=path):
                status, _, _ = self.request("POST", path, dict(PROMPT, stream=True, **fields))
                self.assertEqual(status, 200)
                sent = self.upstream.requests[-1]["body"]
                self.assertEqual({key: sent[key] for key in fields}, fields)
                self.assertTrue(self.upstream.requests[-1]["path"].endswith("/chat/completions"))

    def test_max_completion_tokens_becomes_max_tokens(self):
        self.request("POST", "/v1/chat/completions", dict(PROMPT, stream=True, max_completion_tokens=77))
        sent = self.upstream.requests[-1]["body"]
        self.assertEqual(sent["max_tokens"], 77)
        self.assertNotIn("max_completion_tokens", sent)

    def test_fields_gloo_does_not_accept_are_400_naming_them_when_refused(self):
        self.proxy = self.start_proxy(api_url=self.upstream.url, client_id=None, client_secret=None,
                                      upstream_api_key="studio-key-0123456789", unknown_fields="refuse")
        for name, value in (("top_p", 0.9), ("presence_penalty", 1), ("n", 2), ("logit_bias", {"1": 2})):
            with self.subTest(name=name):
                status, _, body = self.request("POST", "/v1/chat/completions", dict(PROMPT, **{name: value}))
                self.assertEqual(status, 400)
                self.assertTrue(json.loads(body)["error"]["message"].startswith(name + " "))
        self.assertEqual(self.upstream.requests, [])

    def test_grounded_requests_go_to_the_grounded_endpoint_citations_first(self):
        citations = {"id": "g1", "object": "chat.completion.chunk", "model": "gloo-test", "choices": [],
                     "sources_returned": True, "citations": [{"title": "A", "url": "https://a.example/"}]}
        self.upstream.answer(writes=[sse(citations, chunk("Hi"), chunk(None, "stop"))])
        for path in ("/api/stream", "/v1/chat/completions"):
            with self.subTest(path=path):
                status, _, body = self.request("POST", path, dict(PROMPT, stream=True, rag_publisher="GlooGrounded",
                                                                  sources_limit=3, include_citations=True))
                self.assertEqual(status, 200)
                request = self.upstream.requests[-1]
                self.assertTrue(request["path"].endswith("/chat/completions/grounded"), request["path"])
                self.assertEqual((request["body"]["rag_publisher"], request["body"]["sources_limit"]),
                                 ("GlooGrounded", 3))
                self.assertEqual(data_events(body.decode())[0], citations)

    def test_grounded_requests_ask_for_citations_as_the_library_does(self):
        library = gloo_stream.GlooClient(api_key="k", api_url=self.upstream.url).build_payload("Hi", sources_limit=2)
        for extra, asked in (({}, True), ({"include_citations": False}, False)):
            with self.subTest(extra=extra):
                status, _, _ = self.request("POST", "/api/stream", dict(PROMPT, sources_limit=2, **extra))
                self.assertEqual(status, 200)
                self.assertEqual(self.upstream.requests[-1]["body"]["include_citations"], asked)
        self.assertIs(library["include_citations"], True)

    def test_v1_include_usage_ends_with_a_usage_chunk(self):
        status, _, body = self.request("POST", "/v1/chat/completions",
                                       dict(PROMPT, stream=True, stream_options={"include_usage": True}))
        events = data_events(body.decode())
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual((events[-2]["choices"], events[-2]["usage"]), ([], {"total_tokens": 3}))
        self.assertEqual(events[-2]["object"], "chat.completion.chunk")

    def test_gloo_error_bodies_become_clear_messages(self):
        cases = [
            (422, {"detail": [{"loc": ["body", "temperature"], "msg": "Input should be less than or equal to 2",
                               "type": "less_than_equal"}]},
             422, "temperature: Input should be less than or equal to 2"),
            (400, {"error": "unknown model gloo-nope", "code": "invalid_model"}, 400, "unknown model gloo-nope"),
            (429, {"error": "weekly spend limit reached", "code": "too_many_requests"}, 429,
             "weekly spend limit reached"),
        ]
        for upstream_status, body, expected, message in cases:
            with self.subTest(upstream_status):
                self.upstream.answer(upstream_status, [json.dumps(body).encode()], headers={"Retry-After": "7"})
                status, headers, answer = self.post_stream("Hi")
                self.assertEqual(status, expected)
                error = json.loads(answer)["error"]
                self.assertEqual(error["message"], message)
                self.assertNotIn("[{", error["message"])
                if status == 429:
                    self.assertEqual(headers["retry-after"], "7")

    def test_a_429_is_passed_straight_through_never_waited_on(self):
        self.upstream.answer(429, [b'{"error": "slow down", "code": "too_many_requests"}'],
                             headers={"Retry-After": "30"})
        status, headers, _ = self.post_stream("Hi")  # (waiting 30 s would pass the socket's 10 s timeout)
        self.assertEqual((status, headers["retry-after"]), (429, "30"))
        self.assertEqual(len(self.upstream.requests), 1)

    def test_other_failures_are_retried_at_most_once(self):
        self.upstream.answer(500, [b'{"error": "boom"}'])
        status, _, _ = self.post_stream("Hi")
        self.assertEqual(status, 502)
        self.assertEqual(len(self.upstream.requests), 2)  # the first try and one retry


class SimulatorFieldTests(ProxyTestCase):
    """The field policy against the strict simulator: grounded answers and Gloo's 422s pass through."""

    def test_a_grounded_stream_through_the_relay_starts_with_its_citations(self):
        for path in ("/api/stream", "/v1/chat/completions"):
            with self.subTest(path=path):
                status, _, body = self.request("POST", path, dict(PROMPT, stream=True, rag_publisher="GlooGrounded",
                                                                  sources_limit=2))
                self.assertEqual(status, 200)
                self.assertTrue(self.fake.requests[-1]["path"].endswith("/grounded"))
                events = data_events(body.decode())
                first = events[0]
                self.assertEqual(first["choices"], [])
                self.assertTrue(first.get("citations") or first.get("sources"), first)
                self.assertNotIn("error", events[-1] if isinstance(events[-1], dict) else {})

    def test_a_non_streaming_v1_answer_reports_its_usage(self):
        status, _, body = self.request("POST", "/v1/chat/completions", dict(PROMPT, model="auto"))
        self.assertEqual(status, 200)
        self.assertEqual(self.fake.requests[-1]["body"]["stream_options"], {"include_usage": True})
        answer = json.loads(body)
        self.assertEqual(answer["object"], "chat.completion")
        usage = answer["usage"]
        self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + usage["completion_tokens"])
        self.assertGreater(usage["completion_tokens"], 0)

    def test_a_validation_error_is_a_readable_422(self):
        status, _, body = self.post_stream("Hi", temperature=5)
        self.assertEqual(status, 422)
        message = json.loads(body)["error"]["message"]
        self.assertIn("temperature", message)
        self.assertNotIn("[{", message)


class HealthTests(ScriptedUpstreamTestCase):
    def test_simulator_and_status(self):
        health = json.loads(self.request("GET", "/health")[2])
        self.assertEqual((health["status"], health["simulator"]), ("ok", False))

    def test_degraded_after_repeated_upstream_auth_failures_then_ok_again(self):
        self.upstream.answer(401, [b'{"error": "bad key", "code": "unauthorized"}'])
        for _ in range(3):
            self.assertEqual(self.post_stream("Hi")[0], 502)
        health = json.loads(self.request("GET", "/health")[2])
        self.assertEqual(health["status"], "degraded")
        self.assertIn("GLOO_API_KEY", health["problem"])
        self.upstream.answer(writes=[sse(chunk("Hi", "stop"))])
        self.assertEqual(self.post_stream("Hi")[0], 200)
        self.assertEqual(json.loads(self.request("GET", "/health")[2])["status"], "ok")


class ResponsesRouteTests(ProxyTestCase):
    """POST /v1/responses: the Responses API relayed, typed events as they came."""

    MODEL = "gloo-openai-gpt-5-mini"

    def post(self, body: dict, path: str = "/v1/responses") -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", path, body)

    def typed(self, raw: bytes) -> list[tuple[str, dict]]:
        events = []
        for block in raw.decode().split("\n\n"):
            lines = block.split("\n")
            name = next((line[7:] for line in lines if line.startswith("event: ")), "message")
            data = [line[6:] for line in lines if line.startswith("data: ")]
            if data:
                events.append((name, json.loads("\n".join(data))))
        return events

    def test_a_stream_is_relayed_as_typed_numbered_events(self):
        status, headers, raw = self.post({"model": self.MODEL, "input": "What is grace?", "stream": True})
        self.assertEqual((status, headers["content-type"]), (200, "text/event-stream; charset=utf-8"))
        events = self.typed(raw)
        self.assertEqual([name for name, _ in events], [data["type"] for _, data in events])
        self.assertEqual([data["sequence_number"] for _, data in events], list(range(len(events))))
        self.assertEqual((events[0][0], events[-1][0]), ("response.created", "response.completed"))
        text = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
        self.assertEqual(events[-1][1]["response"]["output"][0]["content"][0]["text"], text)
        self.assertNotIn(b"[DONE]", raw)
        self.assertEqual(self.fake.requests[-1]["path"], "/ai/v1/responses")
        self.assertTrue(self.fake.requests[-1]["body"]["stream"])

    def test_without_stream_the_answer_is_the_response_object(self):
        status, _, raw = self.post({"model": self.MODEL, "input": "Hi", "instructions": "Be brief"})
        self.assertEqual(status, 200)
        answer = json.loads(raw)
        self.assertEqual((answer["object"], answer["status"], answer["model"]), ("response", "completed", self.MODEL))
        self.assertEqual(answer["usage"]["total_tokens"],
                         answer["usage"]["input_tokens"] + answer["usage"]["output_tokens"])
        self.assertEqual(self.fake.requests[-1]["body"]["instructions"], "Be brief")

    def test_bad_requests_are_refused_before_the_upstream(self):
        cases = [({"input": "Hi"}, "model_required"), ({"model": "auto", "input": "Hi"}, "model_required"),
                 ({"model": self.MODEL}, "invalid_input"), ({"model": self.MODEL, "input": []}, "invalid_input"),
                 ({"model": self.MODEL, "input": "Hi", "messages": []}, "unsupported_field"),
                 ({"model": self.MODEL, "input": "Hi", "stream": "yes"}, "invalid_field")]
        for body, code in cases:
            with self.subTest(body=body):
                status, _, raw = self.post(body)
                self.assertEqual((status, json.loads(raw)["error"]["code"]), (400, code))
        self.assertEqual(self.fake.requests, [])

    def test_a_stream_cut_short_ends_with_a_typed_error_event(self):
        status, _, raw = self.post({"model": self.MODEL, "input": "Hi [[drop]]", "stream": True})
        events = self.typed(raw)
        name, last = events[-1]
        self.assertEqual((status, name, last["type"], last["code"]), (200, "error", "error", "upstream_disconnected"))
        self.assertEqual(last["sequence_number"], events[-2][1]["sequence_number"] + 1)

    def test_an_upstream_failure_is_relayed_once(self):
        _, _, raw = self.post({"model": self.MODEL, "input": "Hi [[error]]", "stream": True})
        events = self.typed(raw)
        self.assertEqual(events[-1][0], "response.failed")  # and no second error event of the relay's
        self.assertEqual([name for name, _ in events].count("error"), 0)
        self.assertTrue(self.logs.wait_for("upstream_error"))

    def test_a_response_is_retrieved_through_the_relay_when_the_upstream_keeps_it(self):
        answer = json.loads(self.post({"model": self.MODEL, "input": "Hi"})[2])
        status, _, raw = self.request("GET", "/v1/responses/" + answer["id"])
        self.assertEqual((status, json.loads(raw)["id"]), (200, answer["id"]))
        status, _, raw = self.request("GET", "/v1/responses/resp_nothing")
        error = json.loads(raw)["error"]
        self.assertEqual((status, error["code"]), (404, "not_found"))
        self.assertIn("the upstream keeps no response resp_nothing", error["message"])
        status, _, raw = self.request("GET", "/v1/responses/bad%20id")
        self.assertEqual((status, json.loads(raw)["error"]["code"]), (400, "invalid_id"))
        self.assertEqual(self.request("POST", "/v1/responses/" + answer["id"], {})[0], 405)

    def test_the_page_route_can_ask_for_the_responses_api(self):
        status, _, raw = self.post({"api": "responses", "model": self.MODEL,
                                    "messages": [{"role": "user", "content": "What is grace?"}]}, "/api/stream")
        self.assertEqual(status, 200)
        self.assertEqual([name for name, _ in self.typed(raw)[-2:]], ["response.completed", "outcome"])
        outcome = self.typed(raw)[-1][1]
        self.assertEqual((outcome["kind"], outcome["finish_reason"], outcome["model"]),
                         ("finished", "completed", self.MODEL))
        self.assertGreater(outcome["usage"]["output_tokens"], 0)
        self.assertEqual(self.fake.requests[-1]["body"]["input"], [{"role": "user", "content": "What is grace?"}])
        status, _, raw = self.post({"api": "other", "messages": [{"role": "user", "content": "Hi"}]}, "/api/stream")
        self.assertEqual((status, json.loads(raw)["error"]["code"]), (400, "invalid_field"))


class UpstreamEnvelopeTests(ScriptedUpstreamTestCase):
    def test_glooss_nested_error_envelope_is_put_into_words_with_its_code(self):
        self.upstream.answer(400, [json.dumps({"error": {"type": "invalid_request_error", "code": "model_not_found",
                                                          "fault": "client", "retryable": False,
                                                          "message": "unknown model 'x'"}}).encode()])
        status, _, body = self.post_stream("Hi")
        error = json.loads(body)["error"]
        self.assertEqual((status, error["message"], error["code"]), (400, "unknown model 'x'", "model_not_found"))
        self.upstream.answer(400, [b'{"error": {"type": "invalid_request_error", "fault": "client"}}'])
        error = json.loads(self.post_stream("Hi")[2])["error"]
        self.assertEqual((error["message"], error["code"]), ("invalid request error", "invalid_request_error"))

    def test_an_upstream_503_keeps_its_retry_after(self):
        self.upstream.answer(503, [b'{"error": "maintenance", "code": "service_unavailable"}'],
                             headers={"Retry-After": "7"})
        status, headers, body = self.post_stream("Hi")
        self.assertEqual((status, headers["retry-after"], json.loads(body)["error"]["code"]),
                         (503, "7", "service_unavailable"))


class ResponsesBytesTests(ScriptedUpstreamTestCase):
    def test_events_are_relayed_byte_for_byte(self):
        writes = [b'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
                  b'"response":{"id":"resp_1","status":"in_progress"}}\n\n',
                  b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                  b'"sequence_number":1,"output_index":0,"delta":"Hi \\u2014 there"}\n\n',
                  b'event: response.future_thing\ndata: {"type":"response.future_thing","sequence_number":2}\n\n',
                  b'event: response.completed\ndata: {"type":"response.completed","sequence_number":3,'
                  b'"response":{"id":"resp_1","status":"completed"}}\n\n']
        self.upstream.answer(writes=writes)
        status, _, raw = self.request("POST", "/v1/responses", {"model": "m", "input": "Hi", "stream": True})
        self.assertEqual((status, raw), (200, b"".join(writes)))
        self.assertTrue(self.upstream.requests[-1]["path"].endswith("/ai/v1/responses"))


class ResponsesVerdictTests(ScriptedUpstreamTestCase):
    """The relay on the library's Responses vectors: it ends each stream as the library judges it."""

    def test_the_relay_ends_every_vector_with_the_librarys_verdict(self):
        from tests.test_responses import VECTORS

        for name, body, expected, _text, _extra in VECTORS:
            with self.subTest(name):
                self.upstream.answer(writes=[body])
                status, _, raw = self.request("POST", "/v1/responses", {"model": "m", "input": "Hi", "stream": True})
                self.assertEqual(status, 200)
                tail = raw.rsplit(b"\n\n", 2)[-2] + b"\n\n"  # the last event
                if expected[0] == "cut_short":
                    self.assertTrue(tail.startswith(b"event: error\ndata: "), tail)
                    self.assertEqual(json.loads(tail.split(b"data: ", 1)[1])["code"], "upstream_disconnected")
                else:  # finished or failed: the upstream's own last word, nothing added after it
                    self.assertTrue(body.endswith(tail) or name.startswith("events after"), (name, tail))
                    self.assertNotIn(b"upstream_disconnected", raw)


class WarmStartTests(ProxyTestCase):
    def test_warming_until_the_upstream_is_ready(self):
        proxy = self.proxy
        proxy.warm_start()  # (what /health says until it is done: the next test)
        deadline = time.monotonic() + 10
        while json.loads(self.request("GET", "/health")[2])["status"] != "ok":
            self.assertLess(time.monotonic(), deadline, "still warming")
            time.sleep(0.02)
        self.assertEqual((self.fake.token_requests, proxy.client.pool.idle_count()), (1, 1))
        self.assertEqual(self.post_stream("Hi")[0], 200)
        # The first user paid for no token and no connection: both were ready.
        self.assertEqual((self.fake.token_requests, proxy.client.pool.opened), (1, 1))

    def test_warming_says_why_it_is_not_ready(self):
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/chat/completions"
        proxy = self.start_proxy(api_url=nowhere, client_id=None, client_secret=None,
                                 upstream_api_key="studio-key-0123456789")
        proxy.warm_start()
        deadline = time.monotonic() + 10
        while True:
            health = json.loads(self.request("GET", "/health", proxy=proxy)[2])
            if "problem" in health or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertEqual(health["status"], "warming")
        self.assertIn("cannot reach http://127.0.0.1:", health["problem"])
        self.assertNotIn("studio-key", json.dumps(health))


class StreamingPhaseTests(ProxyTestCase):
    """Streams in flight belong to the relay loop: no thread is held per stream."""

    def test_streams_in_flight_hold_no_thread_and_end_when_their_clients_go(self):
        proxy = self.start_proxy(rate_limit_per_minute=0)
        body = json.dumps({"messages": [{"role": "user", "content": "Hold on [[stall]]"}]}).encode()
        clients = []
        for _ in range(20):
            sock = self.raw_socket(proxy)
            sock.sendall(raw_request("/api/stream", body))
            received = b""
            while b'"content"' not in received:  # the first content event: the stream is relaying
                received += sock.recv(65536)
            clients.append(sock)
        deadline = time.monotonic() + 10
        while proxy.workers.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(proxy.workers.busy, 0)  # every connection's thread is free again
        self.assertEqual(proxy.active_streams, 20)
        for sock in clients:
            sock.close()
        while proxy.active_streams and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(proxy.active_streams, 0)  # each upstream closed when its client went
        self.assertTrue(self.logs.wait_for("client_gone"))

    def test_connection_threads_are_reused(self):
        before = {thread.ident for thread in threading.enumerate()}
        for _ in range(5):  # one connection after another
            status = self.request("GET", "/health", headers={"Connection": "close"})[0]
            self.assertEqual(status, 200)
            deadline = time.monotonic() + 10
            while self.proxy.workers.busy and time.monotonic() < deadline:
                time.sleep(0.01)
        new = [t for t in threading.enumerate() if t.ident not in before and t.name == "gloo-proxy-connection"]
        self.assertEqual(len(new), 1)

    def test_a_kept_alive_connection_serves_its_next_request_after_a_stream(self):
        conn = self.connection()
        for prompt in ("First", "Second [[slow:0.01]]", "Third"):
            conn.request("POST", "/api/stream", json.dumps({"messages": [{"role": "user", "content": prompt}]}),
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            self.assertEqual(response.status, 200)
            events = data_events(response.read().decode())
            self.assertEqual(events[-1]["choices"][0]["finish_reason"], "stop")
        conn.request("GET", "/health")
        self.assertEqual(json.loads(conn.getresponse().read())["streams"].get("complete"), 3)


class IPv6Tests(ProxyTestCase):
    def test_the_relay_listens_on_ipv6_loopback(self):
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            self.skipTest("this machine has no IPv6 loopback")
        proxy = self.start_proxy(host="::1")
        self.assertEqual((proxy.host, proxy.url.startswith("http://[::1]:")), ("::1", True))
        with socket.create_connection(("::1", proxy.port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
            self.assertTrue(read_until_closed(sock).startswith(b"HTTP/1.1 200 "))


class OutOfDescriptorsTests(ProxyTestCase):
    def test_running_out_of_descriptors_pauses_accepting_and_says_so_once(self):
        import errno
        import socketserver

        proxy = ProxyServer(ProxyConfig(port=0, client_id="c", client_secret="s", token_url=self.fake.token_url,
                                        api_url=self.fake.api_url), log_handler=self.logs)  # not serving
        self.addCleanup(proxy.close)
        failure = OSError(errno.EMFILE, "Too many open files")
        with mock.patch.object(socketserver.TCPServer, "get_request", side_effect=failure), \
                mock.patch("proxy_server._ACCEPT_PAUSE", 0.01):
            for _ in range(3):
                proxy._handle_request_noblock()  # as the accept loop does: the failed accept is dropped
        self.assertEqual(proxy.accept_pauses, 3)
        self.assertEqual(sum("cannot accept connections: Too many open files" in line for line in self.logs.lines), 1)
        status, _, _ = self.request("GET", "/health")  # and serving goes on (the module's proxy)
        self.assertEqual(status, 200)


class ListenQueueTests(ProxyTestCase):
    def test_a_full_listen_queue_is_logged(self):
        class SmallQueue(ProxyServer):
            request_queue_size = 4

        config = ProxyConfig(port=0, client_id=self.fake.client_id, client_secret=self.fake.client_secret,
                             token_url=self.fake.token_url, api_url=self.fake.api_url)
        proxy = SmallQueue(config, log_handler=self.logs)  # not serving: nothing is accepted
        self.addCleanup(proxy.close)
        waiting = [socket.create_connection(proxy.server_address[:2], timeout=5) for _ in range(5)]  # backlog + 1
        for sock in waiting:
            self.addCleanup(sock.close)
        proxy._handle_request_noblock()  # one accept, as the accept loop does; the queue stays full behind it
        self.assertTrue(self.logs.wait_for("the listen queue is full"))


class ProcessTests(unittest.TestCase):
    """proxy_server.py as a process: configuration errors, --offline, SIGTERM."""

    def run_proxy(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        cwd = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(cwd, ignore_errors=True))
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "proxy_server.py"), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                env=clean_environment(env or {}))
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        return proc

    def test_missing_credentials_exit_2(self):
        proc = self.run_proxy("--port", "0")
        out, err = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("GLOO_CLIENT_ID", err)
        self.assertIn("--offline", err)
        self.assertNotIn("Traceback", err)

    def test_bad_setting_exit_2(self):
        proc = self.run_proxy("--offline", "--port", "0", env={"PROXY_MAX_STREAMS": "many"})
        out, err = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("PROXY_MAX_STREAMS", err)

    def test_offline_serves_then_drains_on_sigterm(self):
        proc = self.run_proxy("--offline", "--port", "0")
        url = None
        seen = []
        deadline = time.monotonic() + 15
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen.append(line)
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
        self.assertIsNotNone(url, seen)
        self.assertTrue(any("offline" in line and "simulator" in line for line in seen))
        import http.client
        host, port = url[len("http://"):].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/api/stream",
                     body=json.dumps({"messages": [{"role": "user", "content": "Hi [[long:40]]"}]}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        first = response.read1(100)
        self.assertTrue(first)
        proc.send_signal(signal.SIGTERM)
        rest = response.read()
        conn.close()
        events = data_events((first + rest).decode())
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "stop")
        out, err = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("draining", err)
        self.assertNotIn("Traceback", err)


class StartupTests(unittest.TestCase):
    """#13 point 5: the proxy's start and stop, as a person at a terminal meets them."""

    run_proxy = ProcessTests.run_proxy

    def test_version_in_isolated_mode(self):
        result = subprocess.run([sys.executable, "-I", os.path.join(ROOT, "proxy_server.py"), "--version"],
                                capture_output=True, text=True, timeout=20, cwd=tempfile.gettempdir())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "proxy_server.py " + gloo_stream.__version__)

    def test_bind_error_names_the_real_address_and_the_way_out(self):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        proc = self.run_proxy("--offline", "--port", str(port))
        out, err = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", err)
        self.assertIn("--port", err)
        self.assertNotIn("hint: run with --offline", err)  # it was given
        self.assertNotIn("Traceback", err)

    def test_a_bad_option_value_names_the_option_without_the_offline_hint(self):
        proc = self.run_proxy("--offline", "--port", "-5")
        out, err = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("--port must be at least 0", err)
        self.assertNotIn("hint", err)

    def start_offline(self, *args: str):
        proc = self.run_proxy("--offline", "--port", "0", *args)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", proc.stderr.readline())
            if match:
                return proc, int(match.group(1))
        self.fail("the proxy did not start")

    def test_a_second_ctrl_c_stops_at_once_and_cut_clients_are_told_so(self):
        proc, port = self.start_offline("--drain-seconds", "30")
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("POST", "/api/stream", headers={"Content-Type": "application/json"},
                     body=json.dumps({"messages": [{"role": "user", "content": "Hi [[slow:0.05]] [[long:400]]"}]}))
        response = conn.getresponse()
        first = response.read1(100)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        rest = response.read()
        out, err = proc.communicate(timeout=10)  # (the stream would go on for 20 s)
        self.assertEqual(proc.returncode, 130, err)
        events = data_events((first + rest).decode())
        self.assertEqual(events[-1]["error"]["type"], "proxy_shutdown")
        self.assertIn("again", err)
        self.assertNotIn("Traceback", err)


class AccountingTests(unittest.TestCase):
    """The stream slots and the connection table: each its own part with its own lock."""

    def test_slots_cap_streams_and_a_drain_waits_for_the_last(self):
        slots = proxy_server._StreamSlots(2)
        self.assertTrue(slots.acquire())
        self.assertTrue(slots.acquire())
        self.assertFalse(slots.acquire())  # the cap
        stream = mock.Mock()
        slots.track(stream)
        self.assertEqual(slots.tracked(), [stream])
        self.assertTrue(slots.untrack(stream))
        self.assertFalse(slots.untrack(stream))  # ended once only
        slots.release()
        self.assertFalse(slots.wait_empty(time.monotonic()))  # one still in flight: not empty
        self.assertFalse(slots.wait_empty(time.monotonic() + 60, give_up=lambda: True))  # a second Ctrl-C
        releaser = threading.Thread(target=slots.release)
        releaser.start()
        self.assertTrue(slots.wait_empty(time.monotonic() + 60))  # woken by the last release
        releaser.join()
        self.assertEqual(slots.active, 0)

    def test_connections_are_counted_in_all_and_per_address(self):
        table = proxy_server._Connections(limit=3, per_client=2)
        first, second, third, fourth = object(), object(), object(), object()
        self.assertIsNone(table.admit(first, "10.0.0.1", counted=True))
        self.assertIsNone(table.admit(second, "10.0.0.1", counted=True))
        self.assertEqual(table.admit(third, "10.0.0.1", counted=True), "too_many_from_you")
        self.assertIsNone(table.admit(third, "10.0.0.9", counted=False))  # a trusted front proxy
        self.assertEqual(table.admit(fourth, "10.0.0.2", counted=True), "overloaded")
        self.assertEqual((table.admitted, table.from_address("10.0.0.1"), table.from_address("10.0.0.9")), (3, 2, 0))
        table.release(first)
        table.release(second)
        table.release(third)
        self.assertEqual((table.admitted, table.from_address("10.0.0.1")), (0, 0))

    def test_idle_connections_and_parked_readers(self):
        table = proxy_server._Connections(limit=10, per_client=10)
        busy, idle = mock.Mock(), mock.Mock()
        table.opened(busy)
        table.opened(idle)
        table.mark_idle(idle, True)
        self.assertEqual(table.open(idle_only=True), [idle])
        self.assertEqual(set(table.open(idle_only=False)), {busy, idle})
        table.closed(idle)
        table.mark_idle(idle, True)  # closed: not brought back
        self.assertEqual(table.open(idle_only=True), [])
        reader = (mock.Mock(), mock.Mock())
        table.park(busy, reader)
        self.assertIs(table.take(busy), reader)
        self.assertIsNone(table.take(busy))


class StartupUnitTests(ProxyTestCase):
    def test_a_loud_warning_beyond_loopback_without_a_client_key(self):
        self.proxy.loopback_only = False  # as when bound to 0.0.0.0 (tests stay on loopback)
        warnings = self.proxy.startup_warnings()
        self.assertTrue(any("PROXY_API_KEY" in w and w.startswith("WARNING") for w in warnings), warnings)
        keyed = self.start_proxy(api_key="client-key-0123456789")
        keyed.loopback_only = False
        self.assertEqual(keyed.startup_warnings(), [])
        self.proxy.loopback_only = True
        self.assertEqual(self.proxy.startup_warnings(), [])

    def test_the_fallback_page_shows_the_real_address(self):
        empty = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, empty)
        proxy = self.start_proxy(web_root=empty)
        status, _, body = self.request("GET", "/", proxy=proxy)
        self.assertEqual(status, 200)
        self.assertIn(proxy.url.encode() + b"/api/stream", body)
        self.assertNotIn(b"HOST:PORT", body)

    def test_the_readme_lists_every_setting(self):
        from proxy_server import SETTINGS
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
            readme = handle.read()
        for setting in SETTINGS:
            with self.subTest(setting.env):
                self.assertIn(f"| `{setting.env}`", readme)

    def test_settings_table_drives_env_and_options(self):
        from proxy_server import SETTINGS, ProxyConfig, _build_parser
        options = {action.dest for action in _build_parser()._actions}
        for setting in SETTINGS:
            with self.subTest(setting.name):
                self.assertTrue(setting.env.startswith(("PROXY_", "GLOO_")))
                self.assertIn(setting.name, ProxyConfig.__dataclass_fields__)
                if setting.option:
                    self.assertIn(setting.name, options)
        self.assertEqual(list(ProxyConfig.__dataclass_fields__), [setting.name for setting in SETTINGS])

    def test_the_config_is_typed_as_the_table_says(self):
        # ProxyConfig is written out with its types (so a misspelt setting fails mypy); each field's
        # type and default must be the table's.
        from proxy_server import SETTINGS, ProxyConfig
        types = {"int": {"int"}, "float": {"float"}, "list": {"tuple[str, ...]"},
                 "str": {"str", "str | None"}, "secret": {"str | None"}, "choice": {"str", "str | None"}}
        fields = ProxyConfig.__dataclass_fields__
        for setting in SETTINGS:
            with self.subTest(setting.name):
                declared = fields[setting.name]
                self.assertIn(declared.type, types[setting.kind])
                self.assertEqual(declared.default, setting.default)
                self.assertEqual(declared.type.endswith("| None"), setting.default is None)
                self.assertEqual(declared.repr, setting.kind != "secret")  # secrets never in a repr
        self.assertNotIn("sekrit", repr(ProxyConfig(api_key="sekrit", client_secret="sekrit")))

    def test_from_env_reads_and_checks(self):
        from proxy_server import ProxyConfig
        config = ProxyConfig.from_env({"PROXY_MAX_CONNECTIONS": "2", "PROXY_CORS_ORIGIN": "https://A.example/"})
        self.assertEqual((config.max_connections, config.cors_origins), (2, ("https://a.example",)))
        with self.assertRaisesRegex(gloo_stream.ConfigurationError, "PROXY_MAX_STREAMS"):
            ProxyConfig.from_env({"PROXY_MAX_STREAMS": "0"})


if __name__ == "__main__":
    unittest.main()


class ToolLoopTests(ProxyTestCase):
    """#18: forced tools in the words Gloo documents, and a chat agent loop that finishes offline."""

    TOOLS = [{"type": "function", "function": {"name": "lookup_verse", "parameters": {
        "type": "object", "properties": {"reference": {"type": "string"}, "translation": {"enum": ["ESV", "NIV"]}},
        "required": ["reference", "translation"]}}},
             {"type": "function", "function": {"name": "search", "parameters": {
                 "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}}}}]

    def completion(self, messages: list, **extra: object) -> tuple[dict[str, str], dict]:
        status, headers, body = self.request("POST", "/v1/chat/completions",
                                             dict({"messages": messages, "tools": self.TOOLS}, **extra))
        self.assertEqual(status, 200, body)
        return headers, json.loads(body)["choices"][0]

    def test_a_named_tool_choice_becomes_required_with_that_tool_alone(self):
        headers, choice = self.completion([{"role": "user", "content": "Look it up"}],
                                          tool_choice={"type": "function", "function": {"name": "search"}})
        sent = self.fake.requests[-1]["body"]
        names = [tool["function"]["name"] for tool in sent["tools"]]
        self.assertEqual((sent["tool_choice"], names), ("required", ["search"]))
        self.assertEqual(headers["x-gloo-translated"], "tool_choice")
        call = choice["message"]["tool_calls"][0]["function"]
        self.assertEqual((call["name"], json.loads(call["arguments"])), ("search", {"query": "John 11:25", "limit": 3}))
        status, _, body = self.request("POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hi"}], "tools": self.TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "missing"}}})
        self.assertEqual((status, json.loads(body)["error"]["code"]), (400, "invalid_field"))

    def test_an_agent_loop_finishes_offline(self):
        messages: list[dict] = [{"role": "user", "content": "What does John 3:16 say?"}]
        for _ in range(3):
            _, choice = self.completion(messages)
            message = choice["message"]
            messages.append(message)
            if choice["finish_reason"] != "tool_calls":
                break
            for call in message["tool_calls"]:
                arguments = json.loads(call["function"]["arguments"])
                self.assertEqual(arguments, {"reference": "John 11:25", "translation": "ESV"})  # fits the schema
                messages.append({"role": "tool", "tool_call_id": call["id"],
                                 "content": "For God so loved the world"})
        self.assertEqual(choice["finish_reason"], "stop")
        self.assertIn("For God so loved the world", message["content"])
        self.assertEqual(len(messages), 4)  # question, tool call, tool result, answer
        _, choice = self.completion([{"role": "user", "content": "Hi"}], tool_choice="none")
        self.assertEqual(choice["finish_reason"], "stop")

    def test_a_response_format_answer_is_the_forced_calls_arguments_as_content(self):
        schema = {"type": "object", "properties": {"reference": {"type": "string"}, "count": {"type": "integer"}},
                  "required": ["reference", "count"]}
        body = {"messages": [{"role": "user", "content": "John 3:16"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "verse", "schema": schema}}}
        status, headers, raw = self.request("POST", "/v1/chat/completions", body)
        choice = json.loads(raw)["choices"][0]
        self.assertEqual((status, headers["x-gloo-translated"]), (200, "response_format"))
        self.assertEqual(json.loads(choice["message"]["content"]), {"reference": "John 11:25", "count": 3})
        self.assertEqual((choice["finish_reason"], "tool_calls" in choice["message"]), ("stop", False))
        sent = self.fake.requests[-1]["body"]
        self.assertEqual((sent["tool_choice"], sent["tools"][0]["function"]["parameters"]), ("required", schema))
        self.assertNotIn("response_format", sent)
        status, _, raw = self.request("POST", "/v1/chat/completions", dict(body, stream=True))
        events = data_events(raw.decode())
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if isinstance(e, dict))
        self.assertEqual(json.loads(text), {"reference": "John 11:25", "count": 3})
        self.assertFalse(any("tool_calls" in e["choices"][0]["delta"] for e in events if isinstance(e, dict)))
        self.assertEqual([e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict)][-1], "stop")
        self.assertEqual(events[-1], "[DONE]")

    def test_a_structured_answer_that_does_not_fit_is_an_error(self):
        self.assertEqual(_check_structured('{"a": 1}', {"type": "object", "required": ["a", "b"]}),
                         "the model's structured answer lacks b")
        self.assertEqual(_check_structured("not json", {"type": "object"}),
                         "the model's structured answer is not valid JSON")
        self.assertEqual(_check_structured("[1]", {"type": "object"}),
                         "the model's structured answer is not a JSON object")
        self.assertIsNone(_check_structured('{"a": 1, "b": 2}', {"type": "object", "required": ["a", "b"]}))
        status, _, raw = self.request("POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hi"}], "tools": self.TOOLS,
            "response_format": {"type": "json_object"}})
        self.assertEqual((status, json.loads(raw)["error"]["code"]), (400, "invalid_field"))

"""The Gloo API simulator over raw HTTP: tokens, validation, stream shapes and every scenario marker."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
from typing import Any

import fake_gloo
from fake_gloo import FakeGloo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESURRECTION = "What is the significance of the resurrection?"
DISCIPLESHIP = "Tell me about Christian discipleship."
FORM = "application/x-www-form-urlencoded"


# ---------------------------------------------------------------------------
# Helpers: plain http.client and sockets, nothing of the project
# ---------------------------------------------------------------------------

class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def data(self) -> list[str]:
        """The `data:` payloads, whatever the line ends (CR, LF or CRLF)."""
        text = self.body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode("utf-8", "replace")
        return [line[6:] for line in text.split("\n") if line.startswith("data: ")]

    def chunks(self) -> list[dict]:
        return [json.loads(d) for d in self.data() if d != "[DONE]"]

    def content_chunks(self) -> list[dict]:
        return [c for c in self.chunks() if c["choices"] and c["choices"][0]["delta"].get("content")]

    def text(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks() if c["choices"])


def request(fake: FakeGloo, path: str, body: Any = b"", headers: dict[str, str] | None = None,
            method: str = "POST") -> Response:
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


def form(**fields: str) -> str:
    return "&".join(f"{name}={value}" for name, value in fields.items())


def get_token(fake: FakeGloo) -> str:
    response = request(fake, "/oauth2/token", form(grant_type="client_credentials", client_id=fake.client_id,
                                                   client_secret=fake.client_secret), {"Content-Type": FORM})
    return response.json()["access_token"]


def chat(fake: FakeGloo, content: str = "Hi", *, token: str | None = None, stream: bool = True,
         **fields: Any) -> Response:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}], "stream": stream}
    if not {"model", "model_family", "auto_routing"} & set(fields):
        body["auto_routing"] = True
    body.update(fields)
    token = get_token(fake) if token is None else token
    return request(fake, "/ai/v2/chat/completions", body, {"Authorization": f"Bearer {token}"})


def open_stream(fake: FakeGloo, content: str) -> tuple[socket.socket, bytes]:
    """A raw socket whose request has been sent and whose response headers have been read."""
    payload = json.dumps({"messages": [{"role": "user", "content": content}], "auto_routing": True,
                          "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", fake.port), timeout=5)
    sock.sendall(b"POST /ai/v2/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " + get_token(fake).encode() + b"\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    received = b""
    while b"\r\n\r\n" not in received:
        piece = sock.recv(4096)
        if not piece:
            break
        received += piece
    head, _, rest = received.partition(b"\r\n\r\n")
    return sock, rest


def read_until(sock: socket.socket, received: bytes, marker: bytes) -> bytes:
    while marker not in received:
        piece = sock.recv(65536)
        if not piece:
            break
        received += piece
    return received


class FakeTestCase(unittest.TestCase):
    """A fresh simulator per test, stopped by addCleanup."""

    options: dict[str, Any] = {}

    def setUp(self) -> None:
        self.fake = FakeGloo(**self.options)
        self.fake.start()
        self.addCleanup(self.fake.stop)


# ---------------------------------------------------------------------------
# Token endpoint
# ---------------------------------------------------------------------------

class TokenTests(FakeTestCase):
    def test_form_credentials_get_a_bearer_token(self):
        response = request(self.fake, "/oauth2/token", form(grant_type="client_credentials",
                           client_id="fake-client-id", client_secret="fake-client-secret"), {"Content-Type": FORM})
        self.assertEqual(response.status, 200)
        answer = response.json()
        self.assertEqual((answer["expires_in"], answer["token_type"]), (3600, "Bearer"))
        self.assertRegex(answer["access_token"], r"^fake-token-[0-9a-f]{32}$")
        self.assertEqual(self.fake.issued_tokens, [answer["access_token"]])
        self.assertEqual(self.fake.token_requests, 1)

    def test_basic_credentials_with_scope(self):
        basic = base64.b64encode(b"fake-client-id:fake-client-secret").decode()
        response = request(self.fake, "/oauth2/token", "grant_type=client_credentials&scope=api/access",
                           {"Authorization": "Basic " + basic, "Content-Type": FORM})
        self.assertEqual(response.status, 200)
        self.assertIn(response.json()["access_token"], self.fake.issued_tokens)

    def test_wrong_credentials_are_invalid_client(self):
        wrong_basic = "Basic " + base64.b64encode(b"fake-client-id:nope").decode()
        cases = {
            "wrong secret": (form(grant_type="client_credentials", client_id="fake-client-id", client_secret="x"), {}),
            "wrong id": (form(grant_type="client_credentials", client_id="x", client_secret="fake-client-secret"), {}),
            "none": (form(grant_type="client_credentials"), {}),
            "wrong basic": ("grant_type=client_credentials", {"Authorization": wrong_basic}),
        }
        for name, (body, headers) in cases.items():
            with self.subTest(name):
                response = request(self.fake, "/oauth2/token", body, dict(headers, **{"Content-Type": FORM}))
                self.assertEqual(response.status, 401)
                self.assertEqual(response.json()["error"], "invalid_client")
        self.assertEqual(self.fake.issued_tokens, [])

    def test_grant_types(self):
        cases = [("password", 400, "unsupported_grant_type"), ("", 400, "invalid_request")]
        for grant, status, error in cases:
            with self.subTest(grant=grant):
                response = request(self.fake, "/oauth2/token", form(grant_type=grant, client_id="fake-client-id",
                                   client_secret="fake-client-secret"), {"Content-Type": FORM})
                self.assertEqual((response.status, response.json()["error"]), (status, error))

    def test_every_request_is_counted(self):
        for secret in ("fake-client-secret", "wrong", "fake-client-secret"):
            request(self.fake, "/oauth2/token", form(grant_type="client_credentials", client_id="fake-client-id",
                                                     client_secret=secret), {"Content-Type": FORM})
        self.assertEqual(self.fake.token_requests, 3)
        self.assertEqual(len(self.fake.issued_tokens), 2)

    def test_concurrent_requests_are_counted_exactly(self):
        tokens: list[str] = []
        threads = [threading.Thread(target=lambda: tokens.append(get_token(self.fake))) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(self.fake.token_requests, 20)
        self.assertEqual(len(set(tokens)), 20)

    def test_token_delay(self):
        self.fake.token_delay = 0.1
        started = time.monotonic()
        get_token(self.fake)
        self.assertGreaterEqual(time.monotonic() - started, 0.1)


class TokenExpiryTests(unittest.TestCase):
    def test_token_expires_after_expires_in_on_the_clock(self):
        now = [1000.0]
        fake = FakeGloo(expires_in=60, clock=lambda: now[0]).start()
        self.addCleanup(fake.stop)
        token = get_token(fake)
        for moment, status in ((1059.9, 200), (1060.0, 401)):
            with self.subTest(moment=moment):
                now[0] = moment
                self.assertEqual(chat(fake, token=token).status, status)

    def test_expires_in_is_reported(self):
        with FakeGloo(expires_in=60) as fake:
            response = request(fake, "/oauth2/token", form(grant_type="client_credentials",
                               client_id=fake.client_id, client_secret=fake.client_secret), {"Content-Type": FORM})
        self.assertEqual(response.json()["expires_in"], 60)


# ---------------------------------------------------------------------------
# Completions: auth, validation, recording
# ---------------------------------------------------------------------------

class CompletionAuthTests(FakeTestCase):
    options = {"api_key": "static-key-123"}

    def test_bad_bearer_is_401(self):
        for header, code in (("", "unauthorized_missing_authorization"), ("Bearer ", "unauthorized_invalid_token"),
                             ("Bearer fake-token-unknown", "unauthorized_invalid_token"),
                             ("Basic abc", "unauthorized_invalid_token"),
                             ("bearer wrong", "unauthorized_invalid_token")):
            with self.subTest(header=header):
                response = request(self.fake, "/ai/v2/chat/completions",
                                   {"messages": [{"role": "user", "content": "Hi"}], "auto_routing": True},
                                   {"Authorization": header} if header else {})
                self.assertEqual(response.status, 401)
                self.assertEqual(response.json()["code"], code)
                self.assertEqual(sorted(response.json()), ["code", "error"])

    def test_static_api_key_is_accepted_without_oauth(self):
        self.assertEqual(chat(self.fake, token="static-key-123").status, 200)
        self.assertEqual(self.fake.token_requests, 0)

    def test_issued_token_is_accepted_too(self):
        self.assertEqual(chat(self.fake).status, 200)

    def test_env_points_at_the_simulator(self):
        self.assertEqual(self.fake.env, {
            "GLOO_CLIENT_ID": "fake-client-id", "GLOO_CLIENT_SECRET": "fake-client-secret",
            "GLOO_TOKEN_URL": f"http://127.0.0.1:{self.fake.port}/oauth2/token",
            "GLOO_API_URL": f"http://127.0.0.1:{self.fake.port}/ai/v2/chat/completions",
            "GLOO_API_KEY": "static-key-123"})


class ValidationTests(FakeTestCase):
    def test_invalid_bodies(self):
        user = [{"role": "user", "content": "Hi"}]
        cases = [
            (b"{not json", 400),
            ([1, 2], 400),
            ({"auto_routing": True}, 400),
            ({"messages": [], "auto_routing": True}, 400),
            ({"messages": ["Hi"], "auto_routing": True}, 400),
            ({"messages": [{"role": "robot", "content": "Hi"}], "auto_routing": True}, 422),
            ({"messages": user}, 422),
            ({"messages": user, "auto_routing": False}, 422),
            ({"messages": user, "auto_routing": True, "model": "gloo-openai-gpt-5-mini"}, 422),
            ({"messages": user, "model": "x", "model_family": "openai"}, 422),
            ({"messages": user, "model_family": "klingon"}, 422),
            ({"messages": user, "auto_routing": True, "tradition": "pastafarian"}, 422),
            ({"messages": user, "auto_routing": True, "temperature": 2.5}, 422),
            ({"messages": user, "auto_routing": True, "max_tokens": 0}, 422),
            ({"messages": user, "auto_routing": True, "stream": "yes"}, 422),
        ]
        token = get_token(self.fake)
        for body, status in cases:
            with self.subTest(body=body):
                response = request(self.fake, "/ai/v2/chat/completions", body, {"Authorization": "Bearer " + token})
                self.assertEqual(response.status, status)
                answer = response.json()
                if status == 422:  # FastAPI's validation shape
                    self.assertEqual(sorted(answer), ["detail"])
                    self.assertTrue(all({"type", "loc", "msg"} <= set(item) for item in answer["detail"]))
                else:  # Gloo's {"error": "<text>", "code": "<text>"}
                    self.assertEqual(answer["code"], "bad_request")
                    self.assertTrue(answer["error"])

    def test_requests_are_recorded_with_body_headers_and_path(self):
        token = get_token(self.fake)
        request(self.fake, "/ai/v2/chat/completions", {"messages": [], "x": 1},
                {"Authorization": "Bearer " + token, "X-Trace": "abc"})
        recorded = self.fake.requests[-1]
        self.assertEqual(recorded["body"], {"messages": [], "x": 1})
        self.assertEqual(recorded["headers"]["X-Trace"], "abc")
        self.assertEqual(recorded["headers"]["Authorization"], "Bearer " + token)
        self.assertEqual(recorded["path"], "/ai/v2/chat/completions")

    def test_unauthorized_json_requests_are_recorded_too(self):
        request(self.fake, "/ai/v2/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})
        self.assertEqual(len(self.fake.requests), 1)

    def test_non_json_bodies_are_not_recorded(self):
        request(self.fake, "/ai/v2/chat/completions", b"\xff\xfe", {"Authorization": "Bearer x"})
        self.assertEqual(self.fake.requests, [])

    def test_bad_marker_argument_is_400(self):
        response = chat(self.fake, "Hi [[slow:abc]]")
        self.assertEqual(response.status, 400)
        self.assertIn("[[slow:abc]]", response.json()["error"])

    def test_bad_constructor_scenario_raises(self):
        with self.assertRaises(ValueError):
            FakeGloo(scenario="[[status:200]]")


class MalformedRequestTests(FakeTestCase):
    def raw(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.fake.port), timeout=5) as sock:
            sock.sendall(data)
            received = b""
            while True:
                piece = sock.recv(65536)
                if not piece:
                    return received
                received += piece

    def test_clean_json_errors(self):
        cases = [
            (b"GET / x HTTP/1.1\r\n\r\n", 400),
            (b"POST /ai/v2/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
            (b"POST /ai/v2/chat/completions HTTP/1.1\r\n\r\n", 411),
            (b"POST /ai/v2/chat/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413),
            (b"POST /nowhere HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 404),
            (b"GET /ai/v2/chat/completions HTTP/1.1\r\n\r\n", 405),
            (b"BREW /pot HTTP/1.1\r\n\r\n", 501),
        ]
        for data, status in cases:
            with self.subTest(data=data):
                answer = self.raw(data)
                head, _, body = answer.partition(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.1 %d " % status), head)
                self.assertIn(b"Content-Type: application/json", head)
                answer = json.loads(body)
                self.assertEqual(sorted(answer), ["code", "error"])
                self.assertIsInstance(answer["code"], str)


# ---------------------------------------------------------------------------
# Stream shape and answers
# ---------------------------------------------------------------------------

class StreamShapeTests(FakeTestCase):
    def test_headers(self):
        response = chat(self.fake)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["Content-Type"], "text/event-stream")
        self.assertEqual(response.headers["Cache-Control"], "no-cache")
        self.assertEqual(response.headers["Connection"], "close")
        self.assertIsNone(response.headers["Content-Length"])

    def test_gloo_style(self):
        response = chat(self.fake, RESURRECTION, stream_options={"include_usage": True})
        chunks = response.chunks()
        first, contents, last = chunks[0], chunks[1:-1], chunks[-1]
        self.assertEqual(first["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(response.data()[-1], json.dumps(last, ensure_ascii=False, separators=(",", ":")))
        self.assertNotIn("[DONE]", response.data())
        self.assertGreater(len(contents), 50)
        self.assertTrue(all(c["choices"][0]["finish_reason"] is None for c in contents))
        self.assertIsInstance(contents[0]["ttft_ms"], int)
        self.assertFalse(any("ttft_ms" in c for c in contents[1:]))
        self.assertEqual(last["choices"][0], {"index": 0, "delta": {}, "finish_reason": "stop"})
        self.assertEqual(last["usage"]["completion_tokens"], len(contents))
        self.assertEqual(last["usage"]["total_tokens"], last["usage"]["prompt_tokens"] + len(contents))

    def test_every_chunk_has_the_envelope(self):
        chunks = chat(self.fake, model_family="openai").chunks()
        self.assertEqual(len({c["id"] for c in chunks}), 1)
        for chunk in chunks:
            self.assertRegex(chunk["id"], r"^chatcmpl-[0-9a-f]+$")
            self.assertEqual((chunk["object"], chunk["model"], chunk["provider"]),
                             ("chat.completion.chunk", "gloo-openai-gpt-5-mini", "openai"))
            self.assertIsInstance(chunk["created"], int)

    def test_openai_style_ending(self):
        def by_attribute(fake: FakeGloo, **fields: Any) -> Response:
            fake.style = "openai"
            return chat(fake, **fields)
        usage = {"include_usage": True}
        cases = {"style": lambda f: by_attribute(f, stream_options=usage),
                 "[[openai]]": lambda f: chat(f, "Hi [[openai]]", stream_options=usage),
                 "[[usage]] without asking": lambda f: chat(f, "Hi [[usage]]")}
        for name, run in cases.items():
            with self.subTest(name):
                response = run(self.fake)
                chunks = response.chunks()
                self.assertEqual(response.data()[-1], "[DONE]")
                self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "stop")
                self.assertNotIn("usage", chunks[-2])
                self.assertEqual(chunks[-1]["choices"], [])
                self.assertEqual(chunks[-1]["usage"]["completion_tokens"], len(response.content_chunks()))
                self.fake.style = "gloo"

    def test_tokens_are_words_with_their_leading_space(self):
        pieces = [c["choices"][0]["delta"]["content"] for c in chat(self.fake, "[[echo]] Hello, dear world.")
                  .content_chunks()]
        self.assertEqual(pieces, ["Hello", ",", " dear", " world", "."])

    def test_max_tokens_cuts_with_length(self):
        response = chat(self.fake, RESURRECTION, max_tokens=5)
        self.assertEqual(len(response.content_chunks()), 5)
        self.assertEqual(response.chunks()[-1]["choices"][0]["finish_reason"], "length")


class AnswerTests(FakeTestCase):
    def test_canned_answers_for_the_demo_prompts(self):
        for prompt, words in ((RESURRECTION, ("resurrection", "empty tomb", "hope")),
                              (DISCIPLESHIP, ("disciple", "follow", "grace"))):
            with self.subTest(prompt=prompt):
                text = chat(self.fake, prompt).text()
                self.assertTrue(80 <= len(text.split()) <= 150, len(text.split()))
                self.assertIn("\n\n", text)
                for word in words:
                    self.assertIn(word, text.lower())

    def test_generic_answer_mentions_the_question(self):
        text = chat(self.fake, "How should I read the Psalms?").text()
        self.assertIn("How should I read the Psalms?", text)

    def test_echo_answers_with_the_prompt_minus_markers(self):
        self.assertEqual(chat(self.fake, "[[echo]] Grâce — 🙏 here [[heartbeat]]").text(), "Grâce — 🙏 here")

    def test_routing_picks_the_model(self):
        cases = [({"model_family": "anthropic"}, "gloo-anthropic-claude-sonnet-4.5", "anthropic"),
                 ({"model_family": "google"}, "gloo-google-gemini-2.5-flash", "google"),
                 ({"model_family": "open source"}, "gloo-meta-llama-3.3-70b-instruct", "meta"),
                 ({"model": "gloo-openai-gpt-5-mini"}, "gloo-openai-gpt-5-mini", "openai")]
        for fields, model, provider in cases:
            with self.subTest(fields=fields):
                chunk = chat(self.fake, **fields).chunks()[0]
                self.assertEqual((chunk["model"], chunk["provider"]), (model, provider))

    def test_auto_routing_picks_a_known_model(self):
        models = {chat(self.fake, f"question {i}").chunks()[0]["model"] for i in range(8)}
        self.assertTrue(models <= set(fake_gloo._FAMILY_MODELS.values()), models)

    def test_non_streaming_answer(self):
        response = chat(self.fake, DISCIPLESHIP, stream=False)
        self.assertEqual(response.headers["Content-Type"], "application/json")
        answer = response.json()
        self.assertEqual(answer["object"], "chat.completion")
        self.assertEqual(answer["choices"][0]["message"]["role"], "assistant")
        self.assertIn("disciple", answer["choices"][0]["message"]["content"])
        self.assertEqual(answer["choices"][0]["finish_reason"], "stop")
        self.assertEqual(set(answer["usage"]), {"prompt_tokens", "completion_tokens", "total_tokens"})

    def test_non_streaming_tool_calls(self):
        answer = chat(self.fake, "Hi [[tools]]", stream=False).json()
        message = answer["choices"][0]["message"]
        self.assertIsNone(message["content"])
        self.assertEqual([call["function"]["name"] for call in message["tool_calls"]],
                         ["lookup_verse", "search_commentary"])
        self.assertEqual(answer["choices"][0]["finish_reason"], "tool_calls")

    def test_tokens_join_back_to_the_text(self):
        for text in (fake_gloo._MARKDOWN, fake_gloo._HOSTILE, fake_gloo._UTF8_ANSWER, "  a\r\nb  \n"):
            with self.subTest(text=text[:20]):
                self.assertEqual("".join(fake_gloo._tokenize(text)), text)


class PacingTests(FakeTestCase):
    def test_seconds_per_token(self):
        def attribute(fake: FakeGloo) -> None:
            fake.delay = 0.05

        cases = {"delay attribute": (attribute, "[[long:3]]"), "[[slow:S]]": (None, "[[slow:0.05]] [[long:3]]")}
        for name, (setup, prompt) in cases.items():
            with self.subTest(name):
                if setup:
                    setup(self.fake)
                started = time.monotonic()
                response = chat(self.fake, prompt)
                self.assertGreaterEqual(time.monotonic() - started, 0.15)
                self.assertEqual(len(response.content_chunks()), 3)
                self.fake.delay = 0.0

    def test_constructor_scenario_applies_to_every_request(self):
        with FakeGloo(scenario="[[long:4]] [[openai]]") as fake:
            for prompt in ("Hi", RESURRECTION):
                response = chat(fake, prompt)
                self.assertEqual(len(response.content_chunks()), 4)
                self.assertEqual(response.data()[-1], "[DONE]")

    def test_prompt_markers_override_the_constructor_scenario(self):
        with FakeGloo(scenario="[[long:4]]") as fake:
            self.assertEqual(len(chat(fake, "[[long:2]]").content_chunks()), 2)

    def test_ttft_reflects_the_delay(self):
        self.fake.delay = 0.05
        self.assertGreaterEqual(chat(self.fake, "[[long:1]]").content_chunks()[0]["ttft_ms"], 50)


# ---------------------------------------------------------------------------
# Scenario markers
# ---------------------------------------------------------------------------

class StatusMarkerTests(FakeTestCase):
    def test_status_with_json_error(self):
        for status in (400, 401, 403, 404, 408, 422, 429, 500, 502, 503, 504):
            with self.subTest(status=status):
                response = chat(self.fake, f"Hi [[status:{status}]]")
                self.assertEqual(response.status, status)
                if status == 422:
                    self.assertEqual(response.json()["detail"][0]["loc"], ["body"])
                else:
                    self.assertEqual(sorted(response.json()), ["code", "error"])
                expected = "1" if status in (429, 503) else None
                self.assertEqual(response.headers["Retry-After"], expected)
                self.assertEqual(response.headers["X-RateLimit-Reset"] is not None, status == 429)

    def test_401_message(self):
        self.assertEqual(chat(self.fake, "[[status:401]]").json(),
                         {"error": "Invalid or expired token", "code": "unauthorized_invalid_token"})

    def test_rate_limit_retry_value_and_reset_time(self):
        before = int(time.time())
        response = chat(self.fake, "Hi [[status:429:retry=7]]")
        self.assertEqual(response.headers["Retry-After"], "7")
        self.assertTrue(before + 7 <= int(response.headers["X-RateLimit-Reset"]) <= int(time.time()) + 8)

    def test_fail_then_succeed_per_prompt(self):
        statuses = [chat(self.fake, "Hi [[fail:503:2]]").status for _ in range(4)]
        self.assertEqual(statuses, [503, 503, 200, 200])
        self.assertEqual(chat(self.fake, "Other [[fail:503:2]]").status, 503)

    def test_fail_says_retry_after_zero(self):
        response = chat(self.fake, "Hi [[fail:429:1]]")
        self.assertEqual((response.status, response.headers["Retry-After"]), (429, "0"))


class MidStreamMarkerTests(FakeTestCase):
    def test_drop_ends_without_finish_chunk(self):
        for marker, count in (("[[drop]]", 3), ("[[drop:5]]", 5), ("[[drop:0]]", 0)):
            with self.subTest(marker):
                chunks = chat(self.fake, f"{RESURRECTION} {marker}").chunks()
                self.assertEqual(len(chunks), 1 + count)
                self.assertTrue(all(c["choices"][0]["finish_reason"] is None for c in chunks))

    def test_error_chunk(self):
        chunks = chat(self.fake, "Hi [[error]]").chunks()
        self.assertEqual(len(chunks), 1 + 3 + 1)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "error")
        self.assertEqual(chunks[-1]["error"], {"code": 2001, "name": "PROVIDER_TIMEOUT",
                                               "message": "The model provider timed out"})

    def test_content_filter(self):
        response = chat(self.fake, "Hi [[content_filter]]")
        self.assertEqual(len(response.content_chunks()), 3)
        self.assertEqual(response.chunks()[-1]["choices"][0]["finish_reason"], "content_filter")

    def test_tool_call_deltas(self):
        chunks = chat(self.fake, "Look it up [[tools]]").chunks()
        deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
        self.assertEqual(deltas[0]["tool_calls"][0]["function"], {"name": "lookup_verse", "arguments": ""})
        self.assertRegex(deltas[0]["tool_calls"][0]["id"], r"^call_")
        self.assertEqual(deltas[0]["tool_calls"][0]["type"], "function")
        calls: dict[int, dict] = {}
        for delta in deltas:
            for piece in delta["tool_calls"]:
                call = calls.setdefault(piece["index"], {"name": None, "arguments": ""})
                call["name"] = piece["function"].get("name") or call["name"]
                call["arguments"] += piece["function"]["arguments"]
        self.assertEqual(sorted(calls), [0, 1])
        self.assertEqual(json.loads(calls[0]["arguments"]), {"reference": "John 11:25-26", "translation": "ESV"})
        self.assertEqual(calls[1]["name"], "search_commentary")
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "tool_calls")

    def test_long(self):
        for marker, count in (("[[long]]", 2000), ("[[long:37]]", 37)):
            with self.subTest(marker):
                self.assertEqual(len(chat(self.fake, marker).content_chunks()), count)

    def test_markdown(self):
        text = chat(self.fake, "[[markdown]]").text()
        for piece in ("# ", "**", "*grace*", "`plan.md`", "```python\n", "1. ", "- ", "](https://"):
            self.assertIn(piece, text)

    def test_hostile(self):
        text = chat(self.fake, "[[hostile]]").text()
        for piece in ("<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=1">',
                      "[click](javascript:window.__pwned=1)", '<a href="javascript:alert(1)">x</a>', "onclick="):
            self.assertIn(piece, text)

    def test_stamp(self):
        before = time.time_ns()
        stamps = [c["sent_ns"] for c in chat(self.fake, "Hi [[stamp]]").chunks()]
        self.assertEqual(stamps, sorted(stamps))
        self.assertTrue(before <= stamps[0] <= stamps[-1] <= time.time_ns())

    def test_stall_with_seconds_then_continues(self):
        started = time.monotonic()
        response = chat(self.fake, "Hi [[stall:0.2]]")
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        self.assertEqual(response.chunks()[-1]["choices"][0]["finish_reason"], "stop")


class WireMarkerTests(FakeTestCase):
    PROMPT = "[[echo]] Grâce — ἀγάπη 🙏 and more words"

    def test_line_endings(self):
        plain = chat(self.fake, self.PROMPT)
        for marker, eol in (("[[crlf]]", b"\r\n"), ("[[cr]]", b"\r")):
            with self.subTest(marker):
                response = chat(self.fake, self.PROMPT + marker)
                self.assertEqual(response.body.count(eol + eol), len(response.data()))
                self.assertNotIn(b"\n", response.body.replace(b"\r\n", b"") if eol == b"\r\n" else response.body)
                self.assertEqual(response.text(), plain.text())

    def test_split_utf8_answer(self):
        text = chat(self.fake, "[[split_utf8]]").text()
        for piece in ("Grâce", "ἀγάπη", "🙏"):
            self.assertIn(piece, text)

    def test_split_utf8_cuts_every_multibyte_character(self):
        pieces = fake_gloo._split_mid_character("aé🙏b".encode())
        self.assertEqual(pieces, [b"a\xc3", b"\xa9\xf0", b"\x9f\x99\x8f" + b"b"])
        for piece in pieces[:-1]:
            with self.assertRaises(UnicodeDecodeError):
                piece.decode("utf-8")

    def test_heartbeat_comments_between_events(self):
        response = chat(self.fake, "[[echo]] a b [[heartbeat]]")
        blocks = response.body.split(b"\n\n")[:-1]
        self.assertEqual(blocks[1::2], [b": keep-alive"] * (len(blocks) // 2))
        self.assertTrue(all(b.startswith(b"data: ") for b in blocks[0::2]))

    def test_trickle_gives_the_same_bytes_shape(self):
        plain, trickled = chat(self.fake, "[[echo]] Grâce 🙏"), chat(self.fake, "[[echo]] Grâce 🙏 [[trickle:0]]")
        self.assertEqual(trickled.text(), plain.text())
        self.assertEqual(len(trickled.chunks()), len(plain.chunks()))

    def test_html(self):
        response = chat(self.fake, "Hi [[html]]")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["Content-Type"], "text/html; charset=utf-8")
        self.assertTrue(response.body.startswith(b"<!DOCTYPE html>"))

    def test_garbage(self):
        response = chat(self.fake, "Hi [[garbage]]")
        self.assertEqual((response.status, response.headers["Content-Type"]), (200, "text/event-stream"))
        self.assertEqual(len(response.body), 4096)
        self.assertEqual(response.data(), [])

    def test_reset_after_headers(self):
        response = chat(self.fake, "Hi [[reset]]")
        self.assertEqual((response.status, response.body), (200, b""))

    def test_huge_event_line_is_exactly_n_bytes(self):
        response = chat(self.fake, "[[huge_event:300000]]")
        lines = response.body.split(b"\n")
        self.assertEqual(len(lines[2]), 300000)
        self.assertTrue(lines[2].startswith(b"data: {"))
        self.assertEqual(response.chunks()[-1]["choices"][0]["finish_reason"], "stop")

    def test_open_huge_event_never_ends(self):
        sock, received = open_stream(self.fake, "[[huge_event:200000:open]]")
        self.addCleanup(sock.close)
        received = read_until(sock, received, b"\n\n")  # the role chunk
        head_length = received.index(b"\n\n") + 2
        while len(received) < head_length + 200000:
            received += sock.recv(65536)
        self.assertEqual(len(received), head_length + 200000)
        self.assertNotIn(b"\n", received[head_length:])
        self.assertEqual(self.fake.active_streams, 1)
        sock.close()
        self.assertTrue(self.fake.wait_for_disconnect(2))


# ---------------------------------------------------------------------------
# Disconnects, scripted responses, life cycle
# ---------------------------------------------------------------------------

class DisconnectTests(FakeTestCase):
    def test_closing_a_stalled_stream_is_noticed(self):
        sock, _ = open_stream(self.fake, "Hi [[stall]]")
        sock.close()
        self.assertTrue(self.fake.wait_for_disconnect(2))
        self.assertEqual(self.fake.disconnects, 1)

    def test_active_streams_counts_a_stream_in_progress(self):
        sock, received = open_stream(self.fake, "Hi [[stall]]")
        read_until(sock, received, b'"ttft_ms"')
        self.assertEqual(self.fake.active_streams, 1)
        sock.close()
        self.assertTrue(self.fake.wait_for_disconnect(2))
        self.assertEqual(self.fake.active_streams, 0)

    def test_closing_during_slow_tokens_is_noticed(self):
        self.fake.delay = 0.05
        sock, received = open_stream(self.fake, "[[long:100]]")
        read_until(sock, received, b'"ttft_ms"')
        sock.close()
        self.assertTrue(self.fake.wait_for_disconnect(2))

    def test_finished_streams_are_not_disconnects(self):
        chat(self.fake, "Hi")
        chat(self.fake, "Hi [[drop:1]]")
        self.assertFalse(self.fake.wait_for_disconnect(0.05))
        self.assertEqual(self.fake.disconnects, 0)

    def test_wait_for_a_count(self):
        for _ in range(2):
            open_stream(self.fake, "Hi [[stall]]")[0].close()
        self.assertTrue(self.fake.wait_for_disconnect(2, count=2))

    def test_stop_ends_a_stalled_stream_promptly(self):
        sock, received = open_stream(self.fake, "Hi [[stall]]")
        self.addCleanup(sock.close)
        read_until(sock, received, b'"ttft_ms"')
        self.fake.stop()
        sock.settimeout(2)  # the stream's end must come at once: a stalled one would hold for 60 s
        while sock.recv(65536):
            pass  # reaches EOF: the server closed its end
        self.assertEqual(self.fake.active_streams, 0)


class ScriptTests(FakeTestCase):
    def test_scripted_response_is_sent_exactly(self):
        self.fake.enqueue(201, {"Content-Type": "text/event-stream", "X-Test": "1"},
                          [b"data: a\n\n", b"data: b", b"\n\n"])
        response = chat(self.fake, token="anything")
        self.assertEqual(response.status, 201)
        self.assertEqual((response.headers["X-Test"], response.headers["Connection"]), ("1", "close"))
        self.assertEqual(response.body, b"data: a\n\ndata: b\n\n")
        self.assertEqual(self.fake.requests[-1]["body"]["messages"][0]["content"], "Hi")

    def test_scripts_are_served_in_order_then_normal_answers(self):
        self.fake.enqueue(500, writes=[b"first"])
        self.fake.enqueue(200, writes=[b"second"])
        token = get_token(self.fake)
        responses = [chat(self.fake, token=token) for _ in range(3)]
        self.assertEqual([(r.status, r.body) for r in responses[:2]], [(500, b"first"), (200, b"second")])
        self.assertEqual(responses[2].chunks()[-1]["choices"][0]["finish_reason"], "stop")

    def test_writes_are_spaced_by_delay(self):
        self.fake.enqueue(200, writes=[b"a", b"b", b"c"], delay=0.1)
        started = time.monotonic()
        self.assertEqual(chat(self.fake).body, b"abc")
        self.assertGreaterEqual(time.monotonic() - started, 0.2)

    def test_writes_must_be_bytes(self):
        with self.assertRaises(TypeError):
            self.fake.enqueue(200, writes=["text"])


class LifeCycleTests(unittest.TestCase):
    def test_urls_before_start_raise(self):
        with self.assertRaises(RuntimeError):
            _ = FakeGloo().base_url

    def test_context_manager_serves_then_closes(self):
        with FakeGloo() as fake:
            port = fake.port
            self.assertEqual(fake.base_url, f"http://127.0.0.1:{port}")
            self.assertEqual(fake.token_url, f"http://127.0.0.1:{port}/oauth2/token")
            self.assertEqual(fake.api_url, f"http://127.0.0.1:{port}/ai/v2/chat/completions")
            get_token(fake)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

    def test_stop_is_idempotent(self):
        fake = FakeGloo().start()
        port = fake.port
        fake.stop()
        fake.stop()
        with self.assertRaises(RuntimeError):
            fake.base_url  # noqa: B018 - stopped: no address any more
        with socket.socket() as probe:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", port)), 0)  # the port is closed


class CLITests(unittest.TestCase):
    COMMAND = [sys.executable, os.path.join(ROOT, "fake_gloo.py")]

    def test_help(self):
        proc = subprocess.run(self.COMMAND + ["--help"], capture_output=True, text=True, timeout=20)
        self.assertEqual(proc.returncode, 0)
        for option in ("--host", "--port", "--delay", "--style", "--expires-in"):
            self.assertIn(option, proc.stdout)

    def test_serves_until_ctrl_c(self):
        proc = subprocess.Popen(self.COMMAND + ["--port", "0", "--delay", "0"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            exports = {}
            while len(exports) < 4:
                line = proc.stdout.readline()
                self.assertTrue(line, proc.stderr.read() if proc.poll() is not None else "no output")
                if line.startswith("export "):
                    name, _, value = line[7:].strip().partition("=")
                    exports[name] = value
            self.assertEqual(exports["GLOO_CLIENT_ID"], "fake-client-id")
            port = int(exports["GLOO_TOKEN_URL"].split(":")[2].split("/")[0])
            self.assertEqual(exports["GLOO_TOKEN_URL"], f"http://127.0.0.1:{port}/oauth2/token")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("POST", "/oauth2/token", form(grant_type="client_credentials",
                               client_id="fake-client-id", client_secret="fake-client-secret"), {"Content-Type": FORM})
            self.assertEqual(connection.getresponse().status, 200)
            connection.close()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        self.assertEqual(proc.returncode, 0)
        self.assertNotIn("Traceback", err)


if __name__ == "__main__":
    unittest.main()

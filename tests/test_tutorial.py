"""The tutorial's functions: same names, same behaviour, configured from the environment."""

from __future__ import annotations

import io
import os
import re
import unittest

import gloo_stream
from fake_gloo import FakeGloo
from gloo_stream import (
    APIStatusError,
    AuthenticationError,
    GlooError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ensure_valid_token,
    handle_stream_error,
    make_streaming_request,
    parse_sse_line,
    render_stream_to_terminal,
    stream_completion,
)
from tests.support import IsolatedTestCase


class HandleStreamErrorTests(unittest.TestCase):
    CASES = [
        (401, "", AuthenticationError, "Authentication failed (401): Invalid or expired token"),
        (403, "", PermissionDeniedError, "Authorization failed (403): Insufficient permissions"),
        (429, "", RateLimitError, "Rate limit exceeded (429): Too many requests"),
        (500, "upstream exploded", ServerError, "API error (500): upstream exploded"),
        (400, "x" * 300, APIStatusError, "API error (400): " + "x" * 200),
        (422, '{"detail": "bad"}', APIStatusError, 'API error (422): {"detail": "bad"}'),
    ]

    def test_messages_exactly(self):
        for status, body, cls, message in self.CASES:
            with self.subTest(status=status):
                with self.assertRaises(cls) as caught:
                    handle_stream_error(status, body)
                self.assertEqual(str(caught.exception), message)
                self.assertEqual(caught.exception.status, status)
                self.assertIsInstance(caught.exception, GlooError)

    def test_body_is_optional(self):
        with self.assertRaises(APIStatusError) as caught:
            handle_stream_error(502)
        self.assertEqual(str(caught.exception), "API error (502): ")

    def test_200_is_not_an_error(self):
        self.assertIsNone(handle_stream_error(200))


class TutorialFunctionTests(IsolatedTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeGloo()
        self.fake.start()
        self.addCleanup(self.fake.stop)
        os.environ.update(self.fake.env)

    def test_ensure_valid_token_is_cached(self):
        first = ensure_valid_token()
        self.assertEqual(ensure_valid_token(), first)
        self.assertEqual(self.fake.token_requests, 1)
        self.assertIn(first, self.fake.issued_tokens)

    def test_make_streaming_request_returns_the_open_stream(self):
        response = make_streaming_request("Hello there", ensure_valid_token())
        try:
            self.assertEqual(response.status, 200)
            self.assertTrue(response.headers["Content-Type"].startswith("text/event-stream"))
            body = response.read().decode()
        finally:
            response.close()
        chunks = [parse_sse_line(line) for line in body.split("\n")]
        chunks = [c for c in chunks if isinstance(c, dict)]
        self.assertGreater(len(chunks), 2)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")

    def test_make_streaming_request_raises_before_reading(self):
        with self.assertRaises(gloo_stream.BadRequestError):
            make_streaming_request("Hi [[status:400]]", ensure_valid_token())

    def test_stream_completion_result(self):
        result = stream_completion("What is the significance of the resurrection?")
        for key in ("text", "token_count", "duration_ms", "finish_reason", "ttft_ms", "model", "usage",
                    "tool_calls", "error"):
            self.assertIn(key, result)
        self.assertEqual(result["finish_reason"], "stop")
        self.assertIsInstance(result["duration_ms"], int)
        self.assertIsNone(result["error"])
        self.assertGreater(result["token_count"], 10)

    def test_stream_completion_accepts_a_token(self):
        token = ensure_valid_token()
        result = stream_completion("Hi", token)
        self.assertEqual(result["finish_reason"], "stop")
        self.assertEqual(self.fake.requests[-1]["headers"]["Authorization"], "Bearer " + token)

    def test_stream_completion_keeps_partial_text_on_drop(self):
        result = stream_completion("[[echo]] one two three four five [[drop:4]]")
        self.assertEqual((result["text"], result["token_count"]), ("one two three four", 4))
        self.assertNotEqual(result["finish_reason"], "stop")
        self.assertIn("ended before", result["error"])

    def test_render_stream_to_terminal_format(self):
        out = io.StringIO()
        result = render_stream_to_terminal("Tell me about Christian discipleship.", file=out)
        expected = (f"Prompt: Tell me about Christian discipleship.\nResponse: {result['text']}\n"
                    f"[{result['token_count']} tokens, finish_reason=stop]\n")
        self.assertEqual(out.getvalue(), expected)

    def test_render_stream_to_terminal_writes_tokens_as_they_arrive(self):
        writes = []

        class Recorder(io.StringIO):
            def write(self, text):
                writes.append(text)
                return super().write(text)

        result = render_stream_to_terminal("Hi", file=Recorder())
        tokens = writes[writes.index("Response: ") + 1 :]
        self.assertGreaterEqual(len([w for w in tokens if w]), result["token_count"])
        self.assertEqual("".join(tokens).split("\n[")[0].rstrip("\n"), result["text"].rstrip("\n"))

    def test_render_reports_a_stream_error(self):
        out = io.StringIO()
        render_stream_to_terminal("Hi [[error]]", file=out)
        self.assertRegex(out.getvalue(), re.compile(r"\[error: .*PROVIDER_TIMEOUT.*\]\n\[\d+ tokens, "
                                                    r"finish_reason=error\]\n$"))


if __name__ == "__main__":
    unittest.main()
